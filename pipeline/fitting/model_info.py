"""A model's summary for people (`mm inspect`): architecture, shape, size and tensor types, from the header."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.fitting.model_shape import model_shape
from pipeline.gguf.chat_format import describe_chat_template
from pipeline.gguf.header import read_model
from pipeline.gguf.quant_types import by_ftype


# A dataclass, not a pydantic model: mm writes this record and never parses one, and building a model class
# costs `mm inspect` more start-up time than the whole header read.
@dataclass(frozen=True, kw_only=True)
class ModelSummary:
    """The header facts `mm inspect` shows and prints as JSON."""

    schema_version: int = 2  # 2: mixture-of-experts facts
    path: str
    shards: int
    architecture: str
    name: str | None
    n_params: int
    n_layers: int
    context_length: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    sliding_window: int
    swa_layers: int
    file_type: str | None
    tensor_types: dict[str, int]
    chat_template: str  # "yes (N characters)" or what `mm run` uses without one
    size_bytes: int
    weights_bytes: int
    bits_per_weight: float
    # Mixture of experts (0 for a dense model)
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    n_dense_layers: int = 0  # layers with a dense FFN (leading dense layers of glm4moe, deepseek2)
    active_params: int = 0  # parameters read per token


def summarize_model(path: Path) -> ModelSummary:
    """The header facts a person wants before downloading or running a model."""
    headers = read_model(path)
    shape = model_shape(headers)
    ftype = by_ftype(headers[0].file_type) if headers[0].file_type is not None else None
    counts = Counter(t.type_name for h in headers for t in h.tensors)
    name = headers[0].metadata.get("general.name")
    return ModelSummary(
        path=str(path),
        shards=len(headers),
        architecture=shape.arch,
        name=name if isinstance(name, str) else None,
        n_params=shape.n_params,
        n_layers=shape.n_layers,
        context_length=shape.n_ctx_train,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        n_head_kv=max(shape.n_head_kv),
        head_dim=shape.head_dim_k,
        n_ff=shape.n_ff,
        n_vocab=shape.n_vocab,
        sliding_window=shape.n_swa,
        swa_layers=sum(shape.is_swa),
        file_type=ftype.name if ftype else None,
        tensor_types=dict(counts.most_common()),
        chat_template=describe_chat_template(headers[0].metadata),
        size_bytes=sum(h.file_size for h in headers),
        weights_bytes=shape.weights_bytes,
        bits_per_weight=round(8 * shape.weights_bytes / max(shape.n_params, 1), 3),
        n_expert=shape.n_expert,
        n_expert_used=shape.n_expert_used,
        n_expert_shared=shape.n_expert_shared,
        n_ff_exp=shape.n_ff_exp,
        n_dense_layers=shape.n_dense_layers if shape.is_moe else 0,
        active_params=shape.active_params,
    )
