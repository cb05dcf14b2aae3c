"""llama.cpp's log goes to $MM_HOME/logs, never the terminal: `mm bench`, `mm eval` and `mm hw --measure` run as
a user runs them (a subprocess, output in pipes), their stdout and stderr read for llama.cpp's lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.gguf.tiny_model import _WORDS, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec

# How llama.cpp's own log lines begin (llama_model_loader:, llama_kv_cache_iswa:, load_tensors:, ggml_..., print_info:)
LLAMA_LINE = re.compile(r"^\s*(llama_|ggml_|load_tensors|print_info|load:|gguf_|graph_|sched_|CPU_)", re.MULTILINE)


def _mm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def swa_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gemma3 model with sliding-window layers: llama.cpp warns "using full-size SWA cache" when it loads."""
    spec = TinySpec(arch="gemma3", sliding_window=16)
    return write_tiny_model(tmp_path_factory.mktemp("swa") / "swa-gemma3.gguf", spec)


def _logs() -> dict[str, str]:
    folder = Path(os.environ["MM_HOME"]) / "logs"
    return {p.name: p.read_text() for p in folder.glob("*.log")} if folder.is_dir() else {}


def test_bench_and_eval_keep_llama_cpp_off_the_terminal_and_in_the_log(swa_model: Path, tmp_path: Path) -> None:
    bench = _mm("bench", str(swa_model), "-p", "8", "-n", "4", "-r", "1", "--no-store")
    assert bench.returncode == 0, bench.stderr
    text = tmp_path / "text.txt"
    text.write_text(" ".join(_WORDS[i % len(_WORDS)] for i in range(600)))
    evaluated = _mm("eval", str(swa_model), "--ref", str(swa_model), "--text", str(text), "--ctx", "64", "--chunks=1")
    assert evaluated.returncode == 0, evaluated.stderr
    for result in (bench, evaluated):
        assert not LLAMA_LINE.search(result.stdout + result.stderr), result.stdout + result.stderr
    logs = _logs()
    assert "using full-size SWA cache" in logs["bench-swa-gemma3.log"]
    assert "using full-size SWA cache" in logs["eval-swa-gemma3.log"]
    assert "llama_model_loader: loaded meta data" in logs["eval-swa-gemma3.log"]


@pytest.mark.slow
def test_hw_measure_keeps_llama_cpp_off_the_terminal_and_in_the_log() -> None:
    measured = _mm("hw", "--measure", "--threads", "1", "--json")
    assert measured.returncode == 0, measured.stderr
    assert not LLAMA_LINE.search(measured.stdout + measured.stderr), measured.stdout + measured.stderr
    log = _logs()["hw-measure.log"]
    assert "llama_model_loader: loaded meta data" in log  # each calibration model's load
    assert "llama_model_quantize_impl" in log or "converting to" in log  # and its pure quantization
