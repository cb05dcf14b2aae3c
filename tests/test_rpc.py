"""Several devices through llama.cpp's RPC workers on 127.0.0.1: what the workers offer, and mm's memory
per device held to the buffers llama.cpp allocates on each worker (its own log, per device)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.base.errors import LlamaError
from pipeline.fitting.fit import FitResult
from pipeline.fitting.fit_devices import fit_across
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.rpc import query_worker
from pipeline.llama.tools import BuiltTools
from pipeline.spec.devices import DeviceLayout
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings
from tests.rpc_workers import MIB, free_port, reported_buffers, workers
from tests.test_fit import ARCHS

pytestmark = pytest.mark.slow

MODELS = {
    "llama": TinySpec(n_layers=6, n_vocab=4096, dtype="f16"),
    "tied": TinySpec(n_layers=6, n_vocab=4096, dtype="f16", tie_embeddings=True),
    "qwen3moe": dataclasses.replace(ARCHS["qwen3moe"], n_layers=6),  # test_fit's, with layers to split
}
HOST = HardwareClass.model_validate({"name": "rpc-host", "ram": "64G", "ram_bandwidth_gbps": 50})
KV_TYPE_FLAGS = {"f16": ["-fa", "off"], "q8_0": ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rpc-models")
    return {name: write_tiny_model(folder / f"{name}.gguf", spec) for name, spec in MODELS.items()}


@pytest.fixture(scope="module")
def endpoints(llama_tools: BuiltTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three workers, each lending its CPU as one device (a GPU or another host stands in)."""
    with workers(llama_tools, 3, tmp_path_factory.mktemp("rpc-logs")) as found:
        yield found


def test_ls_shows_each_workers_device_named_by_its_endpoint(endpoints: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "rpc", "ls", ",".join(endpoints[:2]), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [w["endpoint"] for w in listed] == endpoints[:2]
    for worker in listed:
        (device,) = worker["devices"]
        assert device["name"] == f"RPC0[{worker['endpoint']}]"
        assert 0 < device["free_bytes"] <= device["total_bytes"]
        assert worker["version"].startswith("7.")


def test_a_worker_that_is_down_is_one_clear_error_naming_it() -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(LlamaError, match=re.escape(endpoint)):
        query_worker(endpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "rpc", "ls", endpoint], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 7 and endpoint in proc.stderr and "Traceback" not in proc.stderr


# (model, workers, -ts, ctx, kv type, --n-cpu-moe): splits 1,1 / 1,2 / 3,1 and three ways, contexts, KV
# types, tied embeddings (the output head is a copy of token_embd on the last device), and a MoE with its
# experts on the workers or, for the first layers, in the host's RAM.
CASES = [
    ("llama", 2, "1,1", 512, "f16", 0),
    ("llama", 2, "1,2", 4096, "q8_0", 0),
    ("llama", 2, "3,1", 2048, "f16", 0),
    ("llama", 3, "1,1,1", 1024, "f16", 0),
    ("tied", 2, "1,1", 1024, "f16", 0),
    ("qwen3moe", 2, "1,1", 1024, "f16", 0),
    ("qwen3moe", 2, "1,2", 2048, "f16", 3),
]


def run_case(
    tools: BuiltTools, models: dict[str, Path], endpoints: list[str], case: tuple[str, int, str, int, str, int]
) -> tuple[FitResult, dict[str, dict[str, float]]]:
    """mm's plan for one case of CASES, and the buffers llama.cpp reports loading it on the workers."""
    model, n_workers, split, ctx, kv_type, n_cpu_moe = case
    used = endpoints[:n_workers]
    args = ["--rpc", ",".join(used), "-ts", split, "-c", str(ctx), "-ngl", "999", *KV_TYPE_FLAGS[kv_type]]
    args += ["--n-cpu-moe", str(n_cpu_moe)] if n_cpu_moe else []
    truth = reported_buffers(tools, models[model], args)
    settings = RunSettings(n_ctx=ctx, kv_type=kv_type, flash_attn=kv_type != "f16", n_cpu_moe=n_cpu_moe)  # type: ignore[arg-type]
    layout = DeviceLayout(rpc=used, tensor_split=[float(s) for s in split.split(",")])
    return fit_across(models[model], HOST, settings, layout), truth


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)) for case in CASES])
def test_each_workers_buffers_match_llama_cpp(
    llama_tools: BuiltTools, models: dict[str, Path], endpoints: list[str], case: tuple[str, int, str, int, str, int]
) -> None:
    result, truth = run_case(llama_tools, models, endpoints, case)
    assert [d.name for d in result.devices] == [f"RPC0[{e}]" for e in endpoints[: case[1]]]
    for device in result.devices:
        reported = truth[device.name]
        predicted = {"model": device.weights_bytes, "KV": device.kv_bytes, "compute": device.compute_bytes}
        for kind, value in predicted.items():
            assert value / MIB == pytest.approx(reported.get(kind, 0.0), rel=0.02, abs=0.011), (
                device.name, kind, predicted, reported,
            )  # fmt: skip


def _publish(mm_args: list[str], model: Path, name: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pipeline.cli", "publish", str(model), "-H", "cpu-64g", "--name", name, "-c", "512"]
    return subprocess.run([*argv, *mm_args], capture_output=True, text=True, check=False)


def _run(name: str, prompt: str, n: int) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pipeline.cli", "run", name, "--raw", prompt, "-n", str(n), "--temp", "0", "--json"]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_a_profile_across_workers_runs_the_same_greedy_tokens_as_one_device(
    llama_tools: BuiltTools, models: dict[str, Path], endpoints: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    monkeypatch.setenv("MM_LLAMA_TOOLS", str(llama_tools.bin_dir))
    published = _publish(["--rpc", ",".join(endpoints[:2]), "-ts", "1,1", "--json"], models["llama"], "spread")
    assert published.returncode == 0, published.stderr
    profile = json.loads(published.stdout)
    assert profile["run"]["devices"]["rpc"] == endpoints[:2]
    # 7 offloaded layers (6 + output) at 1:1: layer k goes to device 0 while k/7 < 0.5, so k = 0..3
    assert profile["run"]["devices"]["tensor_split"] == [4.0, 3.0]
    ran = _run("spread", "Once upon a time", 12)
    assert ran.returncode == 0, ran.stderr
    one_device = llama_cpp.Llama(model_path=str(models["llama"]), n_ctx=512, verbose=False)
    want = one_device.create_completion("Once upon a time", max_tokens=12, temperature=0.0)
    expected = want["choices"][0]["text"]  # type: ignore[index]
    assert expected and json.loads(ran.stdout)["text"] == expected


def test_a_stopped_worker_is_one_clear_error_before_loading(
    llama_tools: BuiltTools, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_LLAMA_TOOLS", str(llama_tools.bin_dir))
    with workers(llama_tools, 1, tmp_path) as (endpoint,):
        assert _publish(["--rpc", endpoint], models["llama"], "gone").returncode == 0
    ran = _run("gone", "Hello", 4)
    assert ran.returncode == 7, ran.stderr
    assert f"RPC worker {endpoint} is not reachable" in ran.stderr and "Traceback" not in ran.stderr


def test_one_gpu_full_offload_of_a_tied_model_has_token_embd_on_both_sides(
    llama_tools: BuiltTools, models: dict[str, Path], endpoints: list[str]
) -> None:
    """Issue 22: `mm fit` showed CPU weights 0 B for a fully offloaded tied model. llama.cpp keeps the input's
    token_embd in the CPU buffer and loads its copy as the output head on the GPU (a worker stands in for it)."""
    truth = reported_buffers(llama_tools, models["tied"], ["--rpc", endpoints[0], "-ngl", "999", "-c", "1024"])
    argv = [sys.executable, "-m", "pipeline.cli", "fit", str(models["tied"]), "-H", "rtx3060-12g", "-c", "1024"]
    proc = subprocess.run([*argv, "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"] == "full_offload"
    gpu, cpu = truth[f"RPC0[{endpoints[0]}]"]["model"], truth["CPU_Mapped"]["model"]
    assert result["gpu"]["weights_bytes"] / MIB == pytest.approx(gpu, rel=0.02, abs=0.011)
    assert result["cpu"]["weights_bytes"] / MIB == pytest.approx(cpu, rel=0.02, abs=0.011) and cpu > 0
    assert "token embeddings in RAM, their copy as the tied output head on the GPU" in result["placement"]
