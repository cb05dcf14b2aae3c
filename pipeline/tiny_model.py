"""Tiny-model factory (tests, benchmarks, `make demo`): small valid GGUF models that llama.cpp loads and runs.

Weights are seeded random numbers, so generation is gibberish, but every tensor, hyperparameter and
tokenizer field is what llama.cpp's loader expects for the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORDS = ("the", "a", "model", "runs", "on", "small", "card", "hello", "world", "fit", "layer", "quant")


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model. Widths are multiples of 256 by default so k-quants apply without fallback."""

    arch: str = "llama"
    n_layers: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 320
    context_length: int = 4096
    dtype: str = "f32"  # f32 | f16: type of the 2-D weights (norms stay f32)
    tie_embeddings: bool = False  # no output.weight: llama.cpp reuses token_embd
    seed: int = 0
    extra_kv: dict[str, object] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def with_(self, **changes: object) -> TinySpec:
        return replace(self, **changes)  # type: ignore[arg-type]


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM ('llama') vocabulary: specials, the 256 byte-fallback tokens, then plain pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = [f"▁{w}" for w in _WORDS] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    index = 0
    while len(tokens) < n_vocab:
        piece = pieces[index] if index < len(pieces) else f"▁w{index}"
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        index += 1
    if len(tokens) > n_vocab:
        raise ValueError(f"n_vocab must be at least {len(tokens)} (specials + 256 byte tokens)")
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, [int(t) for t in types]


def _matrix(rng: np.random.Generator, rows: int, cols: int, dtype: str) -> np.ndarray:
    """A weight whose GGUF shape is [cols, rows] (gguf reverses numpy's shape into ggml's ne)."""
    values = rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)
    return values.astype(np.float16) if dtype == "f16" else values


def write_tiny_model(path: Path, spec: TinySpec | None = None) -> Path:
    """Write a llama-architecture GGUF described by `spec` to `path` and return the path."""
    spec = spec or TinySpec()
    if spec.arch != "llama":
        raise ValueError(f"unsupported arch {spec.arch!r} for the tiny-model factory")
    rng = np.random.default_rng(spec.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name(f"tiny-{spec.arch}-{spec.n_layers}l-{spec.n_embd}d")
    writer.add_block_count(spec.n_layers)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(spec.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _vocab(spec.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, value in spec.extra_kv.items():
        _add_extra(writer, key, value)

    n_embd_kv = spec.n_head_kv * spec.head_dim
    norm = np.ones(spec.n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", _matrix(rng, spec.n_vocab, spec.n_embd, spec.dtype))
    for i in range(spec.n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        writer.add_tensor(f"blk.{i}.attn_q.weight", _matrix(rng, spec.n_embd, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _matrix(rng, n_embd_kv, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.attn_v.weight", _matrix(rng, n_embd_kv, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.attn_output.weight", _matrix(rng, spec.n_embd, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", _matrix(rng, spec.n_ff, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", _matrix(rng, spec.n_ff, spec.n_embd, spec.dtype))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", _matrix(rng, spec.n_embd, spec.n_ff, spec.dtype))
    writer.add_tensor("output_norm.weight", norm)
    if not spec.tie_embeddings:
        writer.add_tensor("output.weight", _matrix(rng, spec.n_vocab, spec.n_embd, spec.dtype))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_extra(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))  # type: ignore[call-overload]
