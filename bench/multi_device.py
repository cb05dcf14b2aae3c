"""Several devices: mm's per-device memory against what llama.cpp allocates on RPC workers (tiny models,
workers on 127.0.0.1), and predicted decode speed of real-size shapes on 1 and 2 GPUs against public
llama-bench figures (XiongjieDai/GPU-Benchmarks-on-LLM-Inference, LLaMA 3 table, tg512, May 2024).

Run: MM_TEST_LLAMA_HOME=... .venv/bin/python bench/multi_device.py   (from the repository root; ~2 min;
needs a `mm llama build` with RPC in MM_TEST_LLAMA_HOME)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.fitting.fit import fit_context
from pipeline.fitting.fit_devices import available_devices
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.multi import plan_devices
from pipeline.gguf.header import read_model
from pipeline.gguf.tiny_model import write_header_only_model, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.tools import built_tool_sets
from pipeline.spec.devices import DeviceLayout
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings
from tests.rpc_workers import MIB, workers
from tests.test_rpc import CASES, MODELS, run_case

LLAMA3_8B = TinySpec(n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256)
LLAMA3_70B = TinySpec(n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256)
# (catalog GPU, {model: {n_gpus: public tg512 tokens/s}})
PUBLIC = [
    ("rtx3090", {"8B": {1: 115.42, 2: 111.67}, "70B": {2: 16.57}}),
    ("rtx4090", {"8B": {1: 130.58, 2: 124.65}, "70B": {2: 19.22}}),
]


def memory_table(folder: Path) -> None:
    os.environ["MM_HOME"] = os.environ.get("MM_TEST_LLAMA_HOME", os.environ.get("MM_HOME", ""))
    tools = next(t for t in built_tool_sets() if "ggml-rpc-server" in t.tools)
    models = {name: write_tiny_model(folder / f"{name}.gguf", spec) for name, spec in MODELS.items()}
    print("model     ts     ctx   kv    n-cpu-moe  device  part     mm MiB   llama.cpp MiB  error")
    with workers(tools, 3, folder) as endpoints:
        for case in CASES:
            result, truth = run_case(tools, models, endpoints, case)
            model, _, split, ctx, kv_type, n_cpu_moe = case
            for i, device in enumerate(result.devices):
                for part, value in (("model", device.weights_bytes), ("KV", device.kv_bytes),
                                    ("compute", device.compute_bytes)):  # fmt: skip
                    want = truth[device.name].get(part, 0.0)
                    error = (value / MIB - want) / want if want else 0.0
                    print(f"{model:9} {split:6} {ctx:5} {kv_type:5} {n_cpu_moe:9}  RPC{i}    {part:7} "
                          f"{value / MIB:8.2f} {want:14.2f}  {error:+.2%}")  # fmt: skip


def speed_table(folder: Path) -> None:
    print("\nmodel       GPUs        predicted tg  public tg512  error")
    for label, spec in (("8B", LLAMA3_8B), ("70B", LLAMA3_70B)):
        path = write_header_only_model(folder / f"llama3-{label}.Q4_K_M.gguf", spec)
        shape = model_shape(read_model(path))
        ctx = fit_context(shape, RunSettings(n_ctx=4096))
        for gpu, public in PUBLIC:
            for n, want in sorted(public.get(label, {}).items()):
                parts = {"name": "bench", "gpus": [gpu] * n, "ram": "64G", "ram_bandwidth_gbps": 50}
                devices = available_devices(HardwareClass.model_validate(parts), None)
                _, plan = plan_devices(shape, ctx, devices, DeviceLayout(tensor_split=[1.0] * n), safety_margin=0)
                got = plan.tokens_per_second
                print(f"{label:5} Q4_K_M {n} x {gpu}  {got:12.1f}  {want:12.2f}  {(got - want) / want:+.1%}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        speed_table(Path(tmp))
        memory_table(Path(tmp))
