"""ggml tensor types — one tensor's storage, as llama.cpp names and sizes them (the quant types of
quant_types.py are whole-model mixes of these): names to ids and back, and a tensor's bytes.

mm's own table, so reading a header or starting `mm` loads neither gguf-py nor numpy: ids from
ggml/include/ggml.h's `enum ggml_type`, (elements, bytes) per block from ggml.c's `type_traits` (blck_size,
type_size; the block structs of ggml-common.h), as vendored by llama-cpp-python 0.3.36.
tests/test_ggml_types.py checks every entry against gguf-py's GGMLQuantizationType and GGML_QUANT_SIZES.
"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.base.errors import UsageError


class GGMLType(NamedTuple):
    name: str  # as ggml spells it, upper case: "Q4_K"
    id: int  # enum ggml_type
    block_elements: int  # blck_size
    block_bytes: int  # type_size


QK_K = 256  # super-block of the k-quants, i-quants and ternary types (ggml-common.h)

GGML_TYPES: tuple[GGMLType, ...] = (
    GGMLType("F32", 0, 1, 4),
    GGMLType("F16", 1, 1, 2),
    GGMLType("Q4_0", 2, 32, 18),
    GGMLType("Q4_1", 3, 32, 20),
    GGMLType("Q5_0", 6, 32, 22),
    GGMLType("Q5_1", 7, 32, 24),
    GGMLType("Q8_0", 8, 32, 34),
    GGMLType("Q8_1", 9, 32, 40),
    GGMLType("Q2_K", 10, QK_K, 84),
    GGMLType("Q3_K", 11, QK_K, 110),
    GGMLType("Q4_K", 12, QK_K, 144),
    GGMLType("Q5_K", 13, QK_K, 176),
    GGMLType("Q6_K", 14, QK_K, 210),
    GGMLType("Q8_K", 15, QK_K, 292),
    GGMLType("IQ2_XXS", 16, QK_K, 66),
    GGMLType("IQ2_XS", 17, QK_K, 74),
    GGMLType("IQ3_XXS", 18, QK_K, 98),
    GGMLType("IQ1_S", 19, QK_K, 50),
    GGMLType("IQ4_NL", 20, 32, 18),
    GGMLType("IQ3_S", 21, QK_K, 110),
    GGMLType("IQ2_S", 22, QK_K, 82),
    GGMLType("IQ4_XS", 23, QK_K, 136),
    GGMLType("I8", 24, 1, 1),
    GGMLType("I16", 25, 1, 2),
    GGMLType("I32", 26, 1, 4),
    GGMLType("I64", 27, 1, 8),
    GGMLType("F64", 28, 1, 8),
    GGMLType("IQ1_M", 29, QK_K, 56),
    GGMLType("BF16", 30, 1, 2),
    GGMLType("TQ1_0", 34, QK_K, 54),
    GGMLType("TQ2_0", 35, QK_K, 66),
    GGMLType("MXFP4", 39, 32, 17),
    GGMLType("NVFP4", 40, 64, 36),
    GGMLType("Q1_0", 41, 128, 18),
    GGMLType("Q2_0", 42, 64, 18),  # group 64, fp16 scale: not in gguf-py 0.19's tables yet
)

_BY_NAME = {t.name: t for t in GGML_TYPES}
_BY_ID = {t.id: t for t in GGML_TYPES}


def ggml_type(name: str) -> GGMLType:
    """A ggml tensor type by name (`q8_0`, `Q4_K`, `f16`), case-insensitive as llama-quantize's parse."""
    found = _BY_NAME.get(name.strip().upper())
    if found is None:
        valid = ", ".join(t.name.lower() for t in GGML_TYPES)
        raise UsageError(f"unknown tensor type {name!r}; valid tensor types: {valid}")
    return found


def ggml_type_by_id(type_id: int) -> GGMLType | None:
    """The type a GGUF tensor info's id names, or None for an id ggml does not define."""
    return _BY_ID.get(type_id)


def ggml_type_id(name: str) -> int:
    return ggml_type(name).id


def block_size(type_name: str) -> tuple[int, int]:
    """(elements, bytes) of one block of a ggml type (`Q4_K`, `q8_0`, `F32`): ggml's type traits."""
    found = ggml_type(type_name)
    return found.block_elements, found.block_bytes


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of this ggml type and shape: rows x row size, as ggml_row_size."""
    block, size = block_size(type_name)
    rows = 1
    for dim in shape[1:]:
        rows *= dim
    return rows * (shape[0] // block) * size


def gguf_type_name(type_id: int) -> str:
    """The lower-case name of a ggml type id (`8` → `q8_0`), as llama.cpp's `--cache-type-k` spells it."""
    found = _BY_ID.get(type_id)
    if found is None:
        raise UsageError(f"unknown ggml type id {type_id}")
    return found.name.lower()
