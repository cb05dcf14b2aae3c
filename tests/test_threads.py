"""Threads: `mm bench`, `mm fit` and `mm run` default to what llama.cpp's tools use (the physical cores, as
`llama-bench --help` says), `mm fit -t N` predicts for N threads, and `mm hw --measure` says when fewer
threads measured faster and whether that is beyond its noise."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.llama.tools import BuiltTools
from pipeline.spec.hardware import CpuRates, HardwareClass

Mm = Callable[..., Result]


@pytest.fixture(scope="module")
def llama_bench_threads(llama_tools: BuiltTools) -> int:
    """llama-bench's own default thread count, from its help (common_cpu_get_num_math)."""
    shown = subprocess.run([str(llama_tools.path("llama-bench")), "--help"], capture_output=True, text=True)
    found = re.search(r"-t, --threads <n>\s+\(default: (\d+)\)", shown.stdout + shown.stderr)
    assert found, shown.stdout
    return int(found[1])


def _measured(threads: int, rates: dict[int, CpuRates]) -> None:
    """A cached `mm hw --measure` of this machine, as `mm fit` and `mm hw` read it."""
    from pipeline.measure.machine import cache_measurement

    cache_measurement(HardwareClass.model_validate({
        "name": "local", "ram": "16G", "ram_bandwidth_gbps": 20.0, "threads": threads, "cpu_rates": rates,
        "measured": "by the test",
    }))  # fmt: skip


def test_bench_defaults_to_the_threads_llama_bench_uses(mm: Mm, tiny_model: Path, llama_bench_threads: int) -> None:
    result = mm("bench", str(tiny_model), "-p", "0", "-n", "4", "-r", "1", "--no-store", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threads"] == llama_bench_threads
    assert "default: physical cores, as llama-bench" in " ".join(mm("bench", "--help").stdout.split())


def test_fit_threads_choose_the_measured_rates_the_prediction_uses(
    mm: Mm, tiny_model: Path, llama_bench_threads: int
) -> None:
    slow = CpuRates(gflops={"F32": 2.0, "Q8_0": 2.0}, ram_bandwidth_gbps=4.0, token_overhead_ms=0.5)
    fast = CpuRates(gflops={"F32": 8.0, "Q8_0": 8.0}, ram_bandwidth_gbps=16.0, token_overhead_ms=0.1)
    _measured(llama_bench_threads, {1: slow, llama_bench_threads + 1: fast})

    def predicted(*flags: str) -> float:
        result = mm("fit", str(tiny_model), "--json", *flags)
        assert result.exit_code == 0, result.output
        return float(json.loads(result.stdout)["tokens_per_second"])

    one, more = predicted("-t", "1"), predicted("-t", str(llama_bench_threads + 1))
    assert more > 2 * one  # four times the rates: the prediction follows the thread count's measured rates
    assert predicted() == predicted("-t", str(llama_bench_threads))  # no -t: llama-bench's default
    shown = mm("fit", str(tiny_model), "-t", "1")
    said = " ".join((shown.stdout + shown.stderr).split())
    assert "rates measured at 1 thread(s) (-t 1;" in said


@pytest.mark.parametrize(("gain", "said"), [(0.03, "within the measurement's noise"), (0.5, "try -t 1")])
def test_hw_says_when_fewer_threads_measured_faster(mm: Mm, tmp_path: Path, gain: float, said: str) -> None:
    base = CpuRates(gflops={"Q4_K": 10.0, "Q8_0": 12.0}, spread={"Q4_K": 0.04, "Q8_0": 0.04})
    fewer = CpuRates(gflops={"Q4_K": 10.0 * (1 + gain), "Q8_0": 12.0 * (1 + gain)}, spread=base.spread)
    _measured(2, {1: fewer, 2: base})
    result = mm("hw", "--save", "box", "--hardware-file", str(tmp_path / "hardware.toml"))
    assert result.exit_code == 0, result.output
    assert "1 thread(s) measured" in result.stderr and said in result.stderr
    _measured(2, {1: base, 2: fewer})  # more threads faster: nothing to say
    assert "thread(s) measured" not in mm("hw", "--save", "box", "--hardware-file", str(tmp_path / "h.toml")).stderr
