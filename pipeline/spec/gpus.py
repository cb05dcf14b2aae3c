"""The GPU catalog: each card's memory, bandwidth and compute by id, with where each figure comes from, and the
calibration of llama.cpp's speed per kind of card and of its CPU kernels per weight type (pipeline/spec/gpus.toml;
the speed model that uses them is pipeline/fitting/gpu_speed.py). Data only: nothing here probes a machine."""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.base.errors import HardwareError
from pipeline.base.units import parse_size

CATALOG_FILE = "gpus.toml"
Backend = Literal["cuda", "metal"]
# Of a Mac's unified memory, Metal lets one process keep about three quarters resident on the GPU
# (recommendedMaxWorkingSetSize; Apple tech talk 10580, as quoted by XiongjieDai/GPU-Benchmarks-on-LLM-Inference).
UNIFIED_GPU_SHARE = 0.75


class Calibration(BaseModel):
    """How close llama.cpp comes to a kind of card's datasheet figures, fit to public llama-bench runs.

    decode: seconds per token = bytes read / (bandwidth x efficiency of their type) + token_ms + layer_ms per
    layer on the device. prompt (pp512): seconds per token = matrix work / (fp16 TFLOPS x efficiency).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    decode_efficiency_quant: float = Field(gt=0, le=1.5)  # quantized weights (Q4_K, Q6_K, Q8_0 ...)
    decode_efficiency_float: float = Field(gt=0, le=1.5)  # F16/BF16/F32 weights
    token_ms: float = Field(ge=0)  # per token: graph launch and synchronisation
    layer_ms: float = Field(ge=0)  # per layer on the device per token: its kernels' launch and tail
    prompt_efficiency_quant: float = Field(gt=0, le=1.5)
    prompt_efficiency_float: float = Field(gt=0, le=1.5)
    # pp512 on a card held to its board power: matrix work per joule (TFLOP/s per watt) once its clocks drop under
    # sustained tensor load; the prompt rate is the lower of this times board_power_w and the efficiency above.
    prompt_tflops_per_watt_quant: float | None = Field(default=None, gt=0)
    prompt_tflops_per_watt_float: float | None = Field(default=None, gt=0)
    source: str


class Gpu(BaseModel):
    """One card of the catalog (figures per card; a class with two cards lists the id twice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    memory_bytes: int = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    fp16_tflops: float = Field(gt=0)
    pcie_gbps: float = Field(default=0.0, ge=0)  # host link, one direction (0: unified memory)
    board_power_w: float | None = Field(default=None, gt=0)  # total board / graphics power (TBP, TGP)
    unified: bool = False
    backend: Backend
    calibration: str  # the key of [calibrations] that applies (cards of one memory technology and backend)
    source: str  # the key of [sources] the figures come from

    @property
    def usable_bytes(self) -> int:
        """Memory llama.cpp can allocate on the device: all of a card's; a share of a Mac's unified memory."""
        return int(self.memory_bytes * UNIFIED_GPU_SHARE) if self.unified else self.memory_bytes


class CpuKernels(BaseModel):
    """How fast llama.cpp's CPU matrix-vector kernel runs on each weight type, relative to the reference type
    (the one a per-core rate was measured on): the CPU side of a class that was not measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str
    factors: dict[str, float]  # ggml type (upper case) -> its rate / the reference type's
    source: str

    @model_validator(mode="after")
    def _normalized(self) -> CpuKernels:
        if self.factors.get(self.reference) != 1.0:
            raise ValueError(f"cpu_kernels: the reference type {self.reference} must have the factor 1.0")
        if any(f <= 0 for f in self.factors.values()):
            raise ValueError("cpu_kernels: every factor must be positive")
        return self


class GpuCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, str]
    gpus: dict[str, Gpu]
    calibrations: dict[str, Calibration] = Field(default_factory=dict)
    cpu_kernels: CpuKernels | None = None

    @model_validator(mode="before")
    @classmethod
    def _ids(cls, data: object) -> object:
        """Each [gpus.ID] table gets its id, and its memory parsed from a size such as 24G."""
        if isinstance(data, dict) and isinstance(data.get("gpus"), dict):
            gpus = {}
            for gpu_id, table in data["gpus"].items():
                table = dict(table)
                if "memory" in table:
                    table["memory_bytes"] = parse_size(table.pop("memory"))
                gpus[gpu_id] = {"id": gpu_id, **table}
            data = {**data, "gpus": gpus}
        return data

    @model_validator(mode="after")
    def _sources_known(self) -> GpuCatalog:
        for gpu in self.gpus.values():
            if gpu.source not in self.sources:
                raise ValueError(f"gpus.{gpu.id}: source {gpu.source!r} is not in [sources]")
        for name, fitted in self.calibrations.items():
            if fitted.source not in self.sources:
                raise ValueError(f"calibrations.{name}: source {fitted.source!r} is not in [sources]")
        if self.cpu_kernels and self.cpu_kernels.source not in self.sources:
            raise ValueError(f"cpu_kernels: source {self.cpu_kernels.source!r} is not in [sources]")
        return self


@functools.cache
def gpu_catalog() -> GpuCatalog:
    """The built-in catalog (read once per process)."""
    text = resources.files("pipeline.spec").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return GpuCatalog.model_validate(tomllib.loads(text))


def get_gpu(gpu_id: str) -> Gpu:
    catalog = gpu_catalog().gpus
    if gpu_id not in catalog:
        raise HardwareError(
            f"unknown GPU {gpu_id!r}; known GPUs: {', '.join(sorted(catalog))}",
            hint="`mm hw --gpus` lists the catalog; or give vram and gpu_bandwidth_gbps instead of gpus",
        )
    return catalog[gpu_id]


def _name_key(name: str) -> str:
    """A device name without vendor words and memory size: "NVIDIA GeForce RTX 3090 24 GB" -> "rtx3090"."""
    text = re.sub(r"\b\d+\s*gi?b\b", "", name.lower())
    return "".join(w for w in text.split() if w not in {"nvidia", "geforce", "generation", "apple"})


def catalog_id_for(device_name: str, total_bytes: int) -> str | None:
    """The catalog card a probed device is ("NVIDIA GeForce RTX 3090", 24 GiB -> rtx3090): the same name
    and memory within 10% of the card's; None when no card matches."""
    key = _name_key(device_name)
    for gpu in gpu_catalog().gpus.values():
        if _name_key(gpu.name) == key and abs(gpu.memory_bytes - total_bytes) <= 0.1 * gpu.memory_bytes:
            return gpu.id
    return None


def calibration(gpu: Gpu) -> Calibration | None:
    """The card's calibrated parameters, if the catalog has them."""
    return gpu_catalog().calibrations.get(gpu.calibration)


def cpu_kernel_factors() -> dict[str, float]:
    """llama.cpp's CPU kernel rate per weight type relative to the catalog's reference type (empty: none known)."""
    kernels = gpu_catalog().cpu_kernels
    return dict(kernels.factors) if kernels else {}
