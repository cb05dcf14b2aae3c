"""Every type a model can store its weights in has a CPU rate: measured by `mm hw --measure`, or its sibling's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from typer.testing import Result

from pipeline.fitting.speed import (
    SIBLING,
    DeviceRates,
    DeviceWork,
    compute_seconds,
    measured_sibling,
    tokens_per_second_spread,
)
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.measure.machine import MEASURED_TYPES, quantize_pure

INTEGER_TYPES = {"I8", "I16", "I32", "I64"}  # indices and positions, never multiplied as weights


def test_every_weight_type_is_measured_or_derives_from_a_measured_sibling() -> None:
    weight_types = {t.name for t in gguf.GGMLQuantizationType} - INTEGER_TYPES | {"Q2_0"}
    unrated = [kind for kind in weight_types if measured_sibling(kind, dict.fromkeys(MEASURED_TYPES, 1.0)) is None]
    assert not unrated
    assert {"NVFP4", "Q8_1", "Q8_K", "Q2_0"} <= set(SIBLING) - set(MEASURED_TYPES)  # the types only derived


def test_a_derived_type_takes_its_measured_siblings_rate_and_an_unknown_one_the_slowest() -> None:
    rates = DeviceRates(bandwidth_gbps=10, gflops={"MXFP4": 30.0, "IQ4_NL": 40.0, "Q4_0": 50.0, "F32": 5.0})
    assert rates.rate("nvfp4") == 30.0  # NVFP4 -> MXFP4, measured
    assert rates.rate("IQ4_XS") == 40.0  # -> IQ4_NL
    assert rates.rate("Q4_1") == 50.0  # -> Q4_0
    assert rates.rate("Q6_K") == 5.0  # no sibling rule reaches a measured type: the slowest measured
    assert DeviceRates(bandwidth_gbps=10, gflops={"IQ4_NL": 40.0}).rate("NVFP4") == 40.0  # NVFP4 -> MXFP4 -> IQ4_NL


def test_the_spread_of_the_rates_becomes_the_spread_of_the_prediction() -> None:
    work = DeviceWork(bytes_read=10**6, elements={"Q8_0": 10**9})  # compute-bound: 0.1 s at 20 GFLOP/s
    exact = DeviceRates(bandwidth_gbps=10, gflops={"Q8_0": 20.0})
    assert tokens_per_second_spread([(work, exact)]) == 0
    noisy = DeviceRates(bandwidth_gbps=10, gflops={"Q8_0": 20.0}, spread={"Q8_0": 0.1}, bandwidth_spread=0.1)
    assert tokens_per_second_spread([(work, noisy)]) == pytest.approx(1.0)  # 10 tok/s, 9 to 11


@pytest.mark.slow
def test_each_measured_type_is_the_type_llama_cpp_writes_for_its_ftype(tmp_path: Path) -> None:
    """The calibration measures what it names: gguf-py reads every matrix of each pure quantization back
    as the type the table says (IQ1/IQ2 types too, which llama.cpp makes only with an importance matrix)."""
    source = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=1))
    for kind, ftype in MEASURED_TYPES.items():
        target = tmp_path / f"m-{kind}.gguf"
        assert quantize_pure(source, target, ftype), kind
        matrices = {t.tensor_type.name for t in gguf.GGUFReader(target).tensors if len(t.shape) >= 2}
        assert matrices == {kind}, (kind, matrices)
        target.unlink()


def test_fit_prints_the_measured_spread_with_its_prediction(mm: Callable[..., Result], tiny_model: Path) -> None:
    """A measured class carries its rates' standard errors into `mm fit` ("~N ± M tokens/s"); the datasheet one
    has none."""
    from pipeline.measure.machine import cache_measurement
    from pipeline.spec.hardware import CpuRates, HardwareClass

    before = mm("fit", str(tiny_model), "--json")
    assert json.loads(before.stdout)["tokens_per_second_spread"] == 0
    rates = CpuRates(gflops={"F32": 10.0}, spread={"F32": 0.3}, error={"F32": 0.1}, ram_bandwidth_gbps=10.0,
                     ram_bandwidth_error=0.1)  # fmt: skip
    local = {"name": "local", "ram": "16G", "ram_bandwidth_gbps": 10, "threads": 1, "cpu_rates": {1: rates}}
    cache_measurement(HardwareClass.model_validate(local))
    after = json.loads(mm("fit", str(tiny_model), "--json").stdout)
    assert after["tokens_per_second_spread"] == pytest.approx(0.1 * after["tokens_per_second"], rel=0.05)
    assert f"± {after['tokens_per_second_spread']:.2g} tokens/s" in mm("fit", str(tiny_model)).stdout


def test_weights_read_from_ram_compute_at_the_measured_out_of_cache_share() -> None:
    rates = DeviceRates(bandwidth_gbps=1000, gflops={"Q4_K": 20.0}, cache_bytes=32 << 20, ram_compute_share=0.5)
    in_cache = DeviceWork(bytes_read=16 << 20, elements={"Q4_K": 10**9})
    from_ram = DeviceWork(bytes_read=64 << 20, elements={"Q4_K": 10**9})
    assert compute_seconds(in_cache, rates) == pytest.approx(0.1)
    assert compute_seconds(from_ram, rates) == pytest.approx(0.2)
