"""Planning across devices without running them: a hardware class's RPC hosts, llama.cpp's device order and
its default split by free memory (src/llama.cpp, src/llama-model.cpp load_tensors), worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.base.errors import FitError, HardwareError, UsageError
from pipeline.fitting.fit_devices import fit_for
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.rpc import parse_endpoints
from pipeline.spec.devices import DeviceLayout
from pipeline.spec.hardware import load_hardware_file
from pipeline.spec.run_settings import RunSettings

TOML = """
[two-hosts]
ram = "64G"
ram_bandwidth_gbps = 50
vram = "12G"
gpu_bandwidth_gbps = 360

[[two-hosts.rpc]]
endpoint = "10.0.0.2:50052"
devices = ["24G"]
bandwidth_gbps = 1.25

[[two-hosts.rpc]]
endpoint = "10.0.0.3:50052"
devices = ["8G"]
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "six.gguf", TinySpec(n_layers=6, n_vocab=1024, dtype="f16"))


def test_rpc_hosts_come_before_the_local_gpu_and_share_by_free_memory(tmp_path: Path, model: Path) -> None:
    (tmp_path / "hardware.toml").write_text(TOML)
    (hardware,) = load_hardware_file(tmp_path / "hardware.toml")
    result = fit_for(model, hardware, RunSettings(n_ctx=512))
    names = [d.name for d in result.devices]
    assert names == ["RPC0[10.0.0.2:50052]", "RPC0[10.0.0.3:50052]", "GPU0"]  # RPC servers first (src/llama.cpp)
    # free memory 24G : 8G : 11.5G (12G less the 512 MiB runtime) over 7 offloaded layers (6 + output):
    # split points 0.5517, 0.7356, 1.0; layer k goes to the first device whose point exceeds k/7
    # (0, .14, .29, .43 | .57, .71 | .86): layers 0-3, layers 4-5, and the output layer alone.
    assert [(d.layers, d.output_layer) for d in result.devices] == [(4, False), (2, False), (0, True)]
    assert result.split is not None and "free memory" in result.split.split_reason
    assert result.split.layout.rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]


def test_split_mode_none_keeps_only_the_main_device(tmp_path: Path, model: Path) -> None:
    (tmp_path / "hardware.toml").write_text(TOML)
    (hardware,) = load_hardware_file(tmp_path / "hardware.toml")
    result = fit_for(model, hardware, RunSettings(n_ctx=512, devices=DeviceLayout(split_mode="none", main_gpu=2)))
    assert [(d.name, d.layers, d.output_layer) for d in result.devices] == [("GPU0", 6, True)]
    with pytest.raises(FitError, match="row"):
        fit_for(model, hardware, RunSettings(n_ctx=512, devices=DeviceLayout(split_mode="row")))


@pytest.mark.parametrize("text", ["host", "host:0", "host:99999", "-x:1", "a:1,a:1", "a b:1"])
def test_bad_worker_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_endpoints(text)


def test_a_class_rpc_host_needs_an_endpoint_and_sizes(tmp_path: Path) -> None:
    (tmp_path / "hardware.toml").write_text('[x]\nram = "8G"\nram_bandwidth_gbps = 9\n[[x.rpc]]\nendpoint = "h"\n')
    with pytest.raises(HardwareError, match="rpc"):
        load_hardware_file(tmp_path / "hardware.toml")
