"""mm: a model-management and quantization pipeline for GGUF language models."""

__version__ = "0.1.0"
