"""The GGUF container's fixed numbers: magic, versions, metadata value types and the default alignment.

mm's own copy of ggml/include/gguf.h's `enum gguf_type` (gguf-py's GGUFValueType), so reading a header loads
neither gguf-py nor numpy; tests/test_ggml_types.py checks it against gguf-py.
"""

from __future__ import annotations

from enum import IntEnum

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: used when general.alignment is absent


class ValueType(IntEnum):
    """A metadata value's type tag (gguf.h `enum gguf_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# The fixed-width types, as little-endian struct formats (GGUF is little-endian as written by llama.cpp).
SCALAR_FORMATS: dict[ValueType, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}
