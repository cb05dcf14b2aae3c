"""llama.cpp's log goes to $MM_HOME/logs, never the terminal: `mm bench` and `mm eval` run as a user runs them
(a subprocess, output in pipes), their stdout and stderr read for llama.cpp's lines. `mm hw --measure` is
checked the same way by test_measure's slow calibration test, which runs it anyway."""

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


def mm_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`mm ARGS` in its own process, stdout and stderr pipes: what reaches a terminal, C-level writes included."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def swa_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gemma3 model with sliding-window layers: llama.cpp warns "using full-size SWA cache" when it loads."""
    spec = TinySpec(arch="gemma3", sliding_window=16)
    return write_tiny_model(tmp_path_factory.mktemp("swa") / "swa-gemma3.gguf", spec)


def llama_logs() -> dict[str, str]:
    """The log files in $MM_HOME/logs, by name."""
    folder = Path(os.environ["MM_HOME"]) / "logs"
    return {p.name: p.read_text() for p in folder.glob("*.log")} if folder.is_dir() else {}


def test_bench_and_eval_keep_llama_cpp_off_the_terminal_and_in_the_log(swa_model: Path, tmp_path: Path) -> None:
    bench = mm_process("bench", str(swa_model), "-p", "8", "-n", "4", "-r", "1", "--no-store")
    assert bench.returncode == 0, bench.stderr
    text = tmp_path / "text.txt"
    text.write_text(" ".join(_WORDS[i % len(_WORDS)] for i in range(600)))
    model = str(swa_model)
    evaluated = mm_process("eval", model, "--ref", model, "--text", str(text), "-c", "64", "--chunks=1")
    assert evaluated.returncode == 0, evaluated.stderr
    for result in (bench, evaluated):
        assert not LLAMA_LINE.search(result.stdout + result.stderr), result.stdout + result.stderr
    logs = llama_logs()
    assert "using full-size SWA cache" in logs["bench-swa-gemma3.log"]
    assert "using full-size SWA cache" in logs["eval-swa-gemma3.log"]
    assert "llama_model_loader: loaded meta data" in logs["eval-swa-gemma3.log"]
