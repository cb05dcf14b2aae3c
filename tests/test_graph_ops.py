"""The decode graph's computed nodes (fitting/graph_ops.py) against the graph llama.cpp itself schedules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.fitting.cpu_speed import roofline_devices
from pipeline.fitting.graph_ops import decode_ops, state_elements
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.placement import ReadBytes
from pipeline.gguf.header import read_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.hardware import CpuRates, HardwareClass

# One process loads each model and decodes one token after a marker line; with GGML_SCHED_DEBUG=2 the
# scheduler lists that token's graph node by node, leaving out the view ops (ggml-backend.cpp
# ggml_backend_sched_print_assignments), which the CPU backend skips too (ggml_op_is_empty).
_DECODE_ONE = """
import sys, llama_cpp
for path in sys.argv[1:]:
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=1, verbose=True)
    print("@@decode " + path, file=sys.stderr, flush=True)
    llm.eval([1])
    print("@@done", file=sys.stderr, flush=True)
    llm.close()
"""

SPECS = {
    "llama": TinySpec(n_layers=3),
    "llama-tied": TinySpec(n_layers=2, tie_embeddings=True),
    "qwen3": TinySpec(arch="qwen3", n_layers=3),
    "gemma3": TinySpec(arch="gemma3", n_layers=4, swa_pattern=2),
    "qwen3moe-4-of-8": TinySpec(arch="qwen3moe", n_layers=2, n_expert=8, n_expert_used=4),
    "mixtral-1-of-4": TinySpec(n_layers=2, n_expert=4, n_expert_used=1),
    "gpt-oss": TinySpec(arch="gpt-oss", n_layers=2, n_expert=4, n_expert_used=2),
    "glm4moe": TinySpec(arch="glm4moe", n_layers=2, n_expert=4, n_expert_used=2, n_expert_shared=1),
    "mamba": TinySpec(arch="mamba", n_layers=3),
}


def _scheduled_ops(paths: list[Path]) -> dict[str, int]:
    """Per model, the computed nodes llama.cpp's scheduler lists for its first decoded token."""
    env = {**os.environ, "GGML_SCHED_DEBUG": "2"}
    run = subprocess.run([sys.executable, "-c", _DECODE_ONE, *map(str, paths)], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    found = {}
    for path, body in re.findall(r"@@decode (\S+)\n(.*?)@@done", run.stderr, flags=re.S):
        found[path] = len(re.findall(r"^node #\s*\d+ \(", body, flags=re.M))
    return found


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    folder = tmp_path_factory.mktemp("graph-ops")
    paths = {name: write_tiny_model(folder / f"{name}.gguf", spec) for name, spec in SPECS.items()}
    counted = _scheduled_ops(list(paths.values()))
    return {name: (counted[str(path)], decode_ops(model_shape(read_model(path)))) for name, path in paths.items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_decode_ops_are_the_nodes_llama_cpp_schedules_for_a_token(
    name: str, scheduled: dict[str, tuple[int, int]]
) -> None:
    llama_cpp_count, ours = scheduled[name]
    assert llama_cpp_count > 0 and ours == llama_cpp_count


def test_a_partial_count_takes_the_fixed_nodes_and_the_first_layers(tmp_path: Path) -> None:
    shape = model_shape(read_model(write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=4))))
    every, none, two = decode_ops(shape), decode_ops(shape, 0), decode_ops(shape, 2)
    assert none < two < every and two - none == (every - none) // 2 and decode_ops(shape, 9) == every


def test_a_class_measured_per_layer_spends_that_time_over_a_llama_layers_nodes(tmp_path: Path) -> None:
    """A class cached before per-node costs (layer_overhead_ms) still predicts a llama model as it did: its
    per-layer time for each layer, and the same per-node cost for the few nodes outside the layers."""
    shape = model_shape(read_model(write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=4))))
    rates = {1: {"gflops": {"F32": 10.0}, "layer_overhead_ms": 0.22}}
    old = HardwareClass.model_validate(
        {"name": "old", "vram": 0, "ram": "8G", "ram_bandwidth_gbps": 10, "cpu_rates": rates}
    )
    new = old.model_copy(update={"cpu_rates": {1: CpuRates(gflops={"F32": 10.0}, op_overhead_us=7.0)}})
    read = ReadBytes(gpu=0, cpu=1)
    _, old_seconds = roofline_devices(read, old, 1, shape)
    _, new_seconds = roofline_devices(read, new, 1, shape)
    layer_ops = (decode_ops(shape) - decode_ops(shape, 0)) / shape.n_layers
    assert old_seconds == pytest.approx(0.22e-3 * decode_ops(shape) / layer_ops)
    assert new_seconds == pytest.approx(7e-6 * decode_ops(shape))


@pytest.mark.parametrize("d_state", [16, 64])
def test_state_elements_are_the_ssm_a_tensors_a_token_scans(tmp_path: Path, d_state: int) -> None:
    """Per token the scan updates d_inner x d_state state elements per layer: the shape of each layer's ssm_a
    (A, one decay per state element), read with the gguf package."""
    from gguf import GGUFReader

    path = write_tiny_model(tmp_path / "m.gguf", TinySpec(arch="mamba", n_layers=3, ssm_state_size=d_state))
    ssm_a = [int(t.n_elements) for t in GGUFReader(path).tensors if t.name.endswith(".ssm_a")]
    shape = model_shape(read_model(path))
    assert len(ssm_a) == 3 and state_elements(shape) == sum(ssm_a) and state_elements(shape, 1) == ssm_a[0]
    dense = model_shape(read_model(write_tiny_model(tmp_path / "d.gguf", TinySpec())))
    assert state_elements(dense) == 0
