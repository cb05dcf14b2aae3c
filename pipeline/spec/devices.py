"""Device layouts: which devices a run spreads a model over (llama.cpp's --rpc, -ts, -sm, -mg, --device).

A layout is part of the run settings a profile records, so `mm run` starts llama.cpp with the same devices
and split the plan was made for. An RPC host is one `[[class.rpc]]` entry of a hardware class: a worker's
endpoint, the memory of each device it lends, and the link to it (the speed model's hand-over cost).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.base.errors import UsageError
from pipeline.base.units import parse_size

SplitMode = Literal["layer", "row", "none"]
# A 1 Gbit/s Ethernet link, the common case between hosts: ~0.125 GB/s and ~0.2 ms a round trip.
DEFAULT_LINK_GBPS = 0.125
DEFAULT_LINK_LATENCY_MS = 0.2
# Two local GPUs hand activations over PCIe (4.0 x16: ~25 GB/s in practice); the time per crossing is
# fitting/gpu_speed.py's HANDOVER_MS.
PCIE_GBPS = 25.0


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a worker's HOST:PORT (it goes onto llama.cpp's command line), or None."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{endpoint!r} is not HOST:PORT"
    if any(c.isspace() or c in ",;'\"\\`$" for c in endpoint) or host.startswith("-"):
        return f"{endpoint!r}: unexpected characters"
    return None


def device_name_problem(name: str) -> str | None:
    """What is wrong with a device name given to llama.cpp's --device, or None."""
    if not name or name.startswith("-") or any(c.isspace() or c in ",;'\"\\`$" for c in name):
        return f"{name!r} is not a device name"
    return None


class DeviceLayout(BaseModel):
    """The devices of one run and how layers are split across them (llama.cpp's flags, as given)."""

    model_config = ConfigDict(extra="forbid")

    rpc: list[str] = Field(default_factory=list)  # HOST:PORT of each worker, in --rpc order
    tensor_split: list[float] | None = None  # None: proportional to each device's free memory
    split_mode: SplitMode = "layer"
    main_gpu: int = Field(default=0, ge=0)
    devices: list[str] | None = None  # --device: only these (None = all)

    @field_validator("rpc")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        problems = [p for p in map(endpoint_problem, value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        if len(set(value)) != len(value):
            raise ValueError("a worker is named twice")
        return value

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: list[str] | None) -> list[str] | None:
        problems = [p for p in map(device_name_problem, value or []) if p]
        if problems:
            raise ValueError(problems[0])
        return value

    @field_validator("tensor_split")
    @classmethod
    def _shares(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(s < 0 for s in value) or not any(value)):
            raise ValueError("expected non-negative shares, not all zero, e.g. [3, 1]")
        return value

    @property
    def is_default(self) -> bool:
        return self == DeviceLayout()

    def llama_args(self) -> list[str]:
        """The same layout as llama.cpp command-line flags (llama-server, llama-cli, llama-bench)."""
        args: list[str] = []
        if self.rpc:
            args += ["--rpc", ",".join(self.rpc)]
        if self.tensor_split is not None:
            args += ["--tensor-split", ",".join(f"{s:g}" for s in self.tensor_split)]
        if self.split_mode != "layer":
            args += ["--split-mode", self.split_mode]
        if self.main_gpu:
            args += ["--main-gpu", str(self.main_gpu)]
        if self.devices:
            args += ["--device", ",".join(self.devices)]
        return args


class RpcHost(BaseModel):
    """A `[[class.rpc]]` entry: a worker another host's run uses, its devices' memory and the link to it.

    [[class.rpc]]
    endpoint = "192.168.1.11:50052"
    devices = ["24G"]          # memory of each device the worker lends
    bandwidth_gbps = 1.25      # the link (10 GbE); latency_ms = 0.1
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str
    devices_bytes: list[int] = Field(min_length=1, validation_alias="devices")
    bandwidth_gbps: float = Field(default=DEFAULT_LINK_GBPS, gt=0)  # link to the host running the model
    latency_ms: float = Field(default=DEFAULT_LINK_LATENCY_MS, ge=0)
    device_bandwidth_gbps: float = Field(default=0.0, ge=0)  # memory bandwidth of its devices (0: unknown)

    @field_validator("devices_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> object:
        if isinstance(value, list):
            try:
                return [parse_size(v) if isinstance(v, str) else v for v in value]
            except UsageError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        problem = endpoint_problem(value)
        if problem:
            raise ValueError(problem)
        return value
