"""ggml tensor types — one tensor's storage, as llama.cpp names and sizes them (the quant types of
quant_types.py are whole-model mixes of these): names to ids and back, and a tensor's bytes.

Sizes come from gguf-py's GGML_QUANT_SIZES (ggml's type traits: elements and bytes per block). Kept apart
from quant_types so that reading a recipe or starting `mm` does not load gguf and numpy.
"""

from __future__ import annotations

import gguf

from pipeline.base.errors import UsageError

Q2_0_ID = 42  # ggml's Q2_0 (group 64, fp16 scale): not in gguf-py's tables yet
Q2_0_SIZE = (64, 18)


def ggml_type_id(name: str) -> int:
    """A ggml tensor type by name (`q8_0`, `Q4_K`, `f16`), case-insensitive as llama-quantize's parse."""
    key = name.strip().upper()
    if key == "Q2_0":
        return Q2_0_ID
    try:
        return int(gguf.GGMLQuantizationType[key])
    except KeyError:
        valid = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType)
        raise UsageError(f"unknown tensor type {name!r}; valid tensor types: {valid}") from None


def block_size(type_name: str) -> tuple[int, int]:
    """(elements, bytes) of one block of a ggml type (`Q4_K`, `q8_0`, `F32`): ggml's type traits."""
    key = type_name.upper()
    return Q2_0_SIZE if key == "Q2_0" else gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[key]]


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of this ggml type and shape: rows x row size, as ggml_row_size."""
    block, size = block_size(type_name)
    rows = 1
    for dim in shape[1:]:
        rows *= dim
    return rows * (shape[0] // block) * size


def gguf_type_name(type_id: int) -> str:
    return "q2_0" if type_id == Q2_0_ID else gguf.GGMLQuantizationType(type_id).name.lower()
