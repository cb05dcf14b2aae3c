"""Which chat format `mm run` talks to a model in: the GGUF's own template, else its architecture's known one.

llama-cpp-python, given no template, silently falls back to Llama-2's `[INST]` format (llama.py,
"Using fallback chat format"), and a model trained on another format answers with `[INST]` lines or
nothing. mm chooses explicitly and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from pipeline.base.errors import UsageError

TEMPLATE_KEY = "tokenizer.chat_template"

# Architectures (general.architecture) whose instruct models share one prompt format, named as
# llama-cpp-python's llama_chat_format.py registers it (@register_chat_format).
ARCH_FORMATS = {
    "llama": "llama-2",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen": "qwen",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "chatglm": "chatglm3",
    "baichuan": "baichuan-2",
}
LLAMA3_PRE_TOKENIZER = "llama-bpe"  # tokenizer.ggml.pre of Llama 3 GGUFs (convert_hf_to_gguf.py)

# llama-cpp-python 0.3's registered formats (llama_chat_format.py), for --chat-format.
KNOWN_FORMATS = (
    "llama-2", "llama-3", "alpaca", "qwen", "vicuna", "oasst_llama", "baichuan-2", "baichuan", "openbuddy",
    "redpajama-incite", "snoozy", "phind", "intel", "open-orca", "mistrallite", "zephyr", "pygmalion", "chatml",
    "mistral-instruct", "chatglm3", "openchat", "saiga", "gemma",
)  # fmt: skip


class ChatFormat(NamedTuple):
    name: str | None  # a llama-cpp-python chat_format; None: the GGUF's own template
    notice: str | None  # one line for the user when mm chose for them


def _arch_format(metadata: Mapping[str, object]) -> str | None:
    arch = str(metadata.get("general.architecture", ""))
    if arch == "llama" and metadata.get("tokenizer.ggml.pre") == LLAMA3_PRE_TOKENIZER:
        return "llama-3"
    return ARCH_FORMATS.get(arch)


def choose_chat_format(metadata: Mapping[str, object], requested: str | None = None) -> ChatFormat:
    """The requested format, else the GGUF's template, else the architecture's format (with a notice)."""
    if requested is not None:
        if requested not in KNOWN_FORMATS:
            raise UsageError(f"unknown chat format {requested!r}", hint=f"one of: {', '.join(KNOWN_FORMATS)}")
        return ChatFormat(requested, None)
    if isinstance(metadata.get(TEMPLATE_KEY), str):
        return ChatFormat(None, None)
    arch = str(metadata.get("general.architecture", "?"))
    known = _arch_format(metadata)
    if known is None:
        raise UsageError(
            f"the model has no chat template ({TEMPLATE_KEY}) and mm knows no format for architecture {arch!r}",
            hint=f"choose a chat format ({', '.join(KNOWN_FORMATS)}), or plain completion",
            param="chat_format",
        )
    return ChatFormat(known, f"no chat template in the GGUF; using the {known} format for {arch}")


def describe_chat_template(metadata: Mapping[str, object]) -> str:
    """For `mm inspect`: whether the GGUF has a template, and what `mm run` would use without one."""
    template = metadata.get(TEMPLATE_KEY)
    if isinstance(template, str):
        return f"yes ({len(template)} characters)"
    known = _arch_format(metadata)
    return f"none (mm run uses {known})" if known else "none (mm run needs a chat format named, or raw completion)"
