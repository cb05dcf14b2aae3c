"""The quant type table agrees with llama.cpp's own (quantize.cpp's QUANT_OPTIONS, llama.h's ftypes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.base.errors import UsageError
from pipeline.gguf.quant_types import QUANT_TYPES, QuantType, by_ftype, parse_quant_type

VENDORED = Path("/tmp/sd/llama_cpp_python-0.3.36/vendor/llama.cpp")


def test_parse_is_case_insensitive_and_aliases_resolve() -> None:
    assert parse_quant_type("Q4_K_M").name == "q4_k_m"
    assert parse_quant_type(" q4_k ").canonical == "q4_k_m"
    assert parse_quant_type("Q5_K").canonical == "q5_k_m"
    assert parse_quant_type("q3_k").ftype == parse_quant_type("q3_k_m").ftype


def test_unknown_type_lists_valid_types_with_bits_per_weight() -> None:
    with pytest.raises(UsageError) as caught:
        parse_quant_type("q4_k_xl")
    message = str(caught.value)
    assert "'q4_k_xl'" in message and "q2_k (3.17 bpw)" in message and "iq4_xs (4.25 bpw)" in message


def test_by_ftype_gives_canonical_names() -> None:
    assert by_ftype(15) is not None and by_ftype(15).name == "q4_k_m"  # type: ignore[union-attr]
    assert by_ftype(0) is not None and by_ftype(0).name == "f32"  # type: ignore[union-attr]
    assert by_ftype(999) is None


def test_bits_per_weight_orders_the_k_quants() -> None:
    order = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0", "f16"]
    bpw = [parse_quant_type(name).bits_per_weight for name in order]
    assert bpw == sorted(bpw)


@pytest.mark.skipif(not VENDORED.is_dir(), reason="llama-cpp-python's vendored source is not unpacked here")
def test_table_matches_quantize_cpp_and_llama_h() -> None:
    quantize_cpp = (VENDORED / "tools/quantize/quantize.cpp").read_text()
    llama_h = (VENDORED / "include/llama.h").read_text()
    ftypes = {m[1]: int(m[2]) for m in re.finditer(r"^\s*(LLAMA_FTYPE_\w+)\s*=\s*(\d+)", llama_h, re.M)}
    options = re.findall(r'\{\s*"(\w+)",\s*(LLAMA_FTYPE_\w+),\s*"([^"]*)"', quantize_cpp)
    assert len(options) >= 38
    assert [name.lower() for name, _, _ in options] == [q.name for q in QUANT_TYPES]
    for name, enum, desc in options:
        mine = parse_quant_type(name)
        assert mine.ftype == ftypes[enum], name
        assert " ".join(mine.reference.split()) == " ".join(desc.split()), name


@pytest.mark.parametrize(
    "qtype", [q for q in QUANT_TYPES if q.alias_of is None and q.name != "copy"], ids=lambda q: q.name
)
def test_imatrix_need_in_the_table_matches_llama_cpp_dry_run(tiny_model_f16: Path, qtype: QuantType) -> None:
    """quantize skips its dry run when the table says no imatrix can be needed, so the table must be right."""
    from pipeline.base.provenance import QuantParams
    from pipeline.llama.quant_plan import plan

    assert plan(tiny_model_f16, QuantParams(type=qtype.name)).needs_imatrix == qtype.needs_imatrix
