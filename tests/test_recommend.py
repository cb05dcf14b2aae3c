"""The quant recommendation: candidate sizes from llama.cpp's quantize dry run, fitted, best quality chosen."""

from __future__ import annotations

from pathlib import Path

from pipeline.fitting.recommend import parse_candidates, recommend_quant
from pipeline.gguf.quant_types import parse_quant_type
from pipeline.gguf.tiny_model import write_header_only_model, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.test_fit import SEVENTY_B


def test_quant_recommendation_prefers_quality_that_fits(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "llama-f16.gguf", TinySpec(n_vocab=4096, dtype="f16"))
    hw = get_hardware("cpu-32g")
    report = recommend_quant(model, hw, parse_candidates("q2_k,q4_k_m,q8_0"), RunSettings())
    sizes = {c.type: c.file_bytes for c in report.candidates}
    assert sizes["q2_k"] < sizes["q4_k_m"] < sizes["q8_0"]
    assert report.recommended == "q8_0"
    fast = max(c.tokens_per_second for c in report.candidates)
    floor = recommend_quant(model, hw, parse_candidates("q2_k,q4_k_m,q8_0"), RunSettings(), fast)
    assert floor.recommended == "q2_k"


def test_recommendation_from_a_quantized_source_never_re_quantizes_upwards(tmp_path: Path) -> None:
    model = write_header_only_model(tmp_path / "70b.Q4_K_M.gguf", SEVENTY_B)
    roomy = get_hardware("rtx4090-24g").model_copy(update={"ram_bytes": 256 << 30})
    names = ["q2_k", "q4_k_m", "q6_k", "q8_0", "iq2_xs"]
    report = recommend_quant(model, roomy, [parse_quant_type(n) for n in names])
    by_type = {c.type: c for c in report.candidates}
    assert all(c.fits and c.exact_sizes for c in report.candidates)  # everything fits 256 GiB of RAM
    # q6_k and q8_0 would be "better" by llama.cpp's reference figures, but not from a q4_k_m source.
    assert not by_type["q6_k"].worth_it and not by_type["q8_0"].worth_it
    assert by_type["q2_k"].worth_it and by_type["q4_k_m"].worth_it
    assert report.recommended == "q4_k_m"
    assert by_type["iq2_xs"].needs_imatrix and not by_type["q2_k"].needs_imatrix
    assert by_type["q2_k"].file_bytes < by_type["q4_k_m"].file_bytes < by_type["q8_0"].file_bytes
