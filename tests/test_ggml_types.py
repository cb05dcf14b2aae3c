"""ggml tensor types and GGUF value types: mm's own tables, checked against gguf-py and llama.cpp's ggml.h."""

from __future__ import annotations

import re
import struct

import gguf
import pytest

from pipeline.base.errors import UsageError
from pipeline.gguf.format import DEFAULT_ALIGNMENT, GGUF_MAGIC, ValueType
from pipeline.gguf.ggml_types import GGML_TYPES, block_size, ggml_type_id, gguf_type_name, tensor_bytes
from tests.conftest import _test_source


@pytest.mark.parametrize("name", ["F32", "F16", "Q8_0", "Q4_K", "Q6_K", "IQ2_XS", "BF16"])
def test_names_and_ids_round_trip_with_gguf_py(name: str) -> None:
    assert ggml_type_id(name.lower()) == int(gguf.GGMLQuantizationType[name])
    assert gguf_type_name(ggml_type_id(name)) == name.lower()


def test_kv_cache_type_ids_are_the_ones_llama_cpp_takes() -> None:
    # ggml/include/ggml.h: GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q8_0 = 8
    assert (ggml_type_id("f16"), ggml_type_id("q4_0"), ggml_type_id("q8_0")) == (1, 2, 8)


def test_sizes_follow_the_block_layout() -> None:
    assert block_size("q8_0") == (32, 34)  # ggml-common.h block_q8_0: fp16 scale + 32 int8
    assert block_size("Q4_K") == (256, 144)
    assert tensor_bytes("Q8_0", (4096, 11008)) == 11008 * 4096 // 32 * 34
    assert tensor_bytes("F32", (7,)) == 28


def test_an_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"valid tensor types: .*q8_0"):
        ggml_type_id("q9_9")


# Types llama.cpp's ggml defines that the gguf-py release in the venv does not know yet.
NEWER_THAN_GGUF_PY = {"Q2_0"}


def test_mm_s_type_table_matches_gguf_py() -> None:
    """mm's own table (so a header read loads no gguf-py/numpy) against gguf-py's ids and block sizes."""
    theirs = {t.name: (int(t), gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType}
    ours = {t.name: (t.id, (t.block_elements, t.block_bytes)) for t in GGML_TYPES}
    assert set(ours) - set(theirs) == NEWER_THAN_GGUF_PY
    assert {name: ours[name] for name in theirs} == theirs


def test_mm_s_gguf_value_types_match_gguf_py() -> None:
    assert {t.name: int(t) for t in ValueType} == {t.name: int(t) for t in gguf.GGUFValueType}
    assert DEFAULT_ALIGNMENT == gguf.GGUF_DEFAULT_ALIGNMENT
    assert struct.pack("<I", gguf.GGUF_MAGIC) == GGUF_MAGIC


def test_mm_s_type_ids_match_ggml_h() -> None:
    """Independently of gguf-py: ggml.h's enum ggml_type in the llama.cpp that llama-cpp-python vendors."""
    source = _test_source()
    if source is None:
        pytest.skip("MM_TEST_LLAMA_SOURCE (an unpacked llama-cpp-python sdist) is not set")
    header = (source / "vendor/llama.cpp/ggml/include/ggml.h").read_text()
    enum = {m[1]: int(m[2]) for m in re.finditer(r"^\s*GGML_TYPE_(\w+)\s*=\s*(\d+),", header, re.MULTILINE)}
    enum.pop("COUNT", None)
    assert enum == {t.name: t.id for t in GGML_TYPES}
