"""ggml tensor types: names and ids as gguf-py numbers them, block sizes from ggml's type traits."""

from __future__ import annotations

import gguf
import pytest

from pipeline.base.errors import UsageError
from pipeline.gguf.ggml_types import block_size, ggml_type_id, gguf_type_name, tensor_bytes


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
