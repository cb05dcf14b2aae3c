"""Hardware classes: the machine a build targets, built in or from hardware.toml. Data only: a class names a
target, not the local machine (local_machine.py probes this one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from pipeline.base.errors import HardwareError, UsageError
from pipeline.base.units import format_size, parse_size
from pipeline.base.validation import describe_validation_error, read_toml

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
HARDWARE_FILE = "hardware.toml"  # the catalog of user classes, kept beside the recipes


def _size(value: object) -> int:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return parse_size(value)
        except UsageError as exc:
            raise ValueError(exc.message) from None
    raise ValueError("expected a size such as 12G or a number of bytes")


Size = Annotated[int, BeforeValidator(_size)]

# Used for the local machine, whose bandwidths mm cannot measure cheaply: a mid-range GPU and
# dual-channel DDR4 (see the built-in classes below).
LOCAL_GPU_BANDWIDTH_GBPS = 360.0
LOCAL_RAM_BANDWIDTH_GBPS = 50.0

# A CUDA context plus cuBLAS workspaces and llama.cpp's own pools take memory that no buffer
# report shows; 512 MiB is a middle estimate for one consumer GPU (overridable per class).
DEFAULT_GPU_OVERHEAD_BYTES = 512 * MIB


class CpuRates(BaseModel):
    """What `mm hw --measure` found for one thread count: llama.cpp's matrix-vector rate per weight type
    and the per-token overhead (see pipeline/fitting/speed.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gflops: dict[str, float] = Field(default_factory=dict)  # ggml type (Q8_0, Q4_K, F16...) -> GFLOP/s
    token_overhead_ms: float = Field(default=0.0, ge=0)
    layer_overhead_ms: float = Field(default=0.0, ge=0)
    cache_bytes: int = Field(default=0, ge=0)  # the last-level cache these rates were measured in


class HardwareClass(BaseModel):
    """A target machine: one GPU's memory and bandwidth (vram 0 = CPU only) and system RAM; optionally
    measured CPU compute rates per thread count (`mm hw --measure`), and how the figures were obtained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    vram_bytes: Size = Field(default=0, validation_alias="vram", ge=0)
    ram_bytes: Size = Field(validation_alias="ram", gt=0)
    gpu_bandwidth_gbps: float = Field(default=0.0, ge=0)
    ram_bandwidth_gbps: float = Field(gt=0)
    gpu_overhead_bytes: Size = Field(default=DEFAULT_GPU_OVERHEAD_BYTES, validation_alias="gpu_overhead", ge=0)
    cpu_rates: dict[int, CpuRates] = Field(default_factory=dict)  # thread count -> measured rates
    threads: int | None = Field(default=None, ge=1)  # threads a run uses when it does not say
    measured: str = "datasheet"  # how the figures were obtained
    builtin: bool = Field(default=False, exclude=True)

    @property
    def has_gpu(self) -> bool:
        return self.vram_bytes > 0

    def with_sizes(self, vram_bytes: int | None, ram_bytes: int | None) -> HardwareClass:
        """This class with its VRAM and/or RAM replaced (None = keep), named for what was given; a GPU added
        to a CPU class gets the local GPU bandwidth assumption."""
        changes: dict[str, object] = {}
        if vram_bytes is not None:
            changes["vram_bytes"] = vram_bytes
            if vram_bytes > 0 and self.gpu_bandwidth_gbps == 0:
                changes["gpu_bandwidth_gbps"] = LOCAL_GPU_BANDWIDTH_GBPS
        if ram_bytes is not None:
            changes["ram_bytes"] = ram_bytes
        if not changes:
            return self
        given = ", ".join(
            f"{format_size(n)} {what}" for n, what in ((vram_bytes, "VRAM"), (ram_bytes, "RAM")) if n is not None
        )
        changes["name"] = given if self.name == "local" else f"{self.name} with {given}"
        return self.model_copy(update=changes)

    def rates_for(self, threads: int | None) -> CpuRates | None:
        """The measured CPU rates for this thread count (else the nearest measured below it, else above)."""
        if not self.cpu_rates:
            return None
        want = threads or self.threads or max(self.cpu_rates)
        below = [t for t in self.cpu_rates if t <= want]
        return self.cpu_rates[max(below) if below else min(self.cpu_rates)]


def _builtin(name: str, description: str, vram: str, ram: str, gpu_bw: float, ram_bw: float) -> HardwareClass:
    return HardwareClass.model_validate(
        {
            "name": name,
            "description": description,
            "vram": vram,
            "ram": ram,
            "gpu_bandwidth_gbps": gpu_bw,
            "ram_bandwidth_gbps": ram_bw,
            "builtin": True,
        }
    )


# Bandwidths are the vendors' spec figures; dual-channel DDR4-3200 is 51.2 GB/s peak, DDR5-5200 ~83.
BUILTIN_CLASSES: tuple[HardwareClass, ...] = (
    _builtin("rtx3060-12g", "RTX 3060 12 GB, 64 GB dual-channel DDR4", "12G", "64G", 360, 50),
    _builtin("rtx3080-10g", "RTX 3080 10 GB, 32 GB dual-channel DDR4", "10G", "32G", 760, 50),
    _builtin("rtx4060ti-16g", "RTX 4060 Ti 16 GB, 64 GB dual-channel DDR5", "16G", "64G", 288, 80),
    _builtin("rtx3090-24g", "RTX 3090 24 GB, 64 GB dual-channel DDR4", "24G", "64G", 936, 50),
    _builtin("rtx4090-24g", "RTX 4090 24 GB, 64 GB dual-channel DDR5", "24G", "64G", 1008, 80),
    _builtin("cpu-64g", "CPU only, 64 GB dual-channel DDR4", "0", "64G", 0, 50),
    _builtin("cpu-32g", "CPU only, 32 GB dual-channel DDR4", "0", "32G", 0, 50),
)


def load_hardware_file(path: Path) -> list[HardwareClass]:
    """Classes from a hardware.toml: one table per class, keyed by its name."""
    try:
        document = read_toml(path)
    except ValueError as exc:
        raise HardwareError(str(exc)) from None
    classes = []
    for name, table in document.items():
        if not isinstance(table, dict):
            raise HardwareError(f"{path}: {name}: expected a table [{name}] describing a hardware class")
        try:
            classes.append(HardwareClass.model_validate({"name": name, **table}))
        except ValidationError as exc:
            raise HardwareError(describe_validation_error(f"{path}: [{name}]", exc)) from None
    return classes


def hardware_catalog(hardware_file: Path | None = None) -> dict[str, HardwareClass]:
    """Built-ins, then the file's classes (which may override a built-in of the same name)."""
    catalog = {c.name: c for c in BUILTIN_CLASSES}
    if hardware_file is not None and hardware_file.is_file():
        catalog.update({c.name: c for c in load_hardware_file(hardware_file)})
    return catalog


def get_hardware(name: str, hardware_file: Path | None = None) -> HardwareClass:
    catalog = hardware_catalog(hardware_file)
    if name not in catalog:
        raise HardwareError(
            f"unknown hardware class {name!r}; known classes: {', '.join(sorted(catalog))}",
            hint="add your own to recipes/hardware.toml",
        )
    return catalog[name]
