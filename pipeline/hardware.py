"""Hardware classes — the machine a build targets, built in or from hardware.toml — and this machine's own.

A class names a target, not necessarily the local machine; `local_machine` detects what this one has
(GPUs through NVML or nvidia-smi, RAM, CPU) and `local_class` describes it as a class.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from pipeline.errors import HardwareError, UsageError
from pipeline.units import format_size, parse_size
from pipeline.validation import describe_validation_error, read_toml

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
    and the per-token overhead (see pipeline/speed.py)."""

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


# --- this machine -----------------------------------------------------------------------------------


class LocalGPU(BaseModel):
    index: int
    name: str
    total_bytes: int
    free_bytes: int


class LocalMachine(BaseModel):
    schema_version: int = 1
    gpus: list[LocalGPU]
    gpu_source: str  # "nvml", "nvidia-smi" or "none"
    ram_bytes: int
    cpu: str
    cpu_count: int
    classes: list[HardwareClass]


def _gpus_nvml() -> list[LocalGPU] | None:
    try:
        import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py, optional
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: the library raises its own NVMLError types
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(LocalGPU(index=i, name=name, total_bytes=int(memory.total), free_bytes=int(memory.free)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _gpus_smi() -> list[LocalGPU] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-gpu=index,name,memory.total,memory.free"
    try:
        out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append(LocalGPU(index=int(parts[0]), name=parts[1], total_bytes=int(float(parts[2]) * MIB),
                                 free_bytes=int(float(parts[3]) * MIB)))  # fmt: skip
    return gpus


def total_ram_bytes() -> int:
    """This machine's physical RAM (0 if the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_name() -> str:
    """This machine's CPU model name (/proc/cpuinfo, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def local_gpus() -> tuple[list[LocalGPU], str]:
    """This machine's GPUs and how they were found: NVML, else nvidia-smi, else ([], "none")."""
    gpus = _gpus_nvml()
    if gpus is not None:
        return gpus, "nvml"
    gpus = _gpus_smi()
    if gpus is not None:
        return gpus, "nvidia-smi"
    return [], "none"


@functools.cache
def machine_identity() -> tuple[str, int, tuple[str, ...]]:
    """(CPU name, cores, GPU names): what a measurement on this machine depends on. Probed once per process
    (NVML, else nvidia-smi), so a build's stages can fingerprint it without probing per stage."""
    gpus, _ = local_gpus()
    return cpu_name(), os.cpu_count() or 1, tuple(g.name for g in gpus)


def local_machine(hardware_file: Path | None = None) -> LocalMachine:
    """This machine's GPUs, RAM and CPU, with the hardware classes mm knows (built-ins and the file's)."""
    gpus, source = local_gpus()
    classes = list(hardware_catalog(hardware_file).values())
    return LocalMachine(gpus=gpus, gpu_source=source, ram_bytes=total_ram_bytes(), cpu=cpu_name(),
                        cpu_count=os.cpu_count() or 1, classes=classes)  # fmt: skip


def measurement_path() -> Path:
    """Where `mm hw --measure` keeps this machine's measured class."""
    from pipeline.home import mm_home

    return mm_home().root / "hw" / "local.json"


def cached_measurement() -> HardwareClass | None:
    """The last `mm hw --measure` of this machine, if any (an unreadable cache is ignored with a warning)."""
    path = measurement_path()
    if not path.is_file():
        return None
    try:
        document = dict(json.loads(path.read_text()))
        for field, alias in (("vram_bytes", "vram"), ("ram_bytes", "ram"), ("gpu_overhead_bytes", "gpu_overhead")):
            if field in document:
                document[alias] = document.pop(field)
        return HardwareClass.model_validate(document)
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def local_class() -> HardwareClass:
    """This machine as a hardware class: measured by `mm hw --measure` when it was (CPU only, for now),
    else its largest GPU and its RAM with the assumed bandwidths."""
    gpus, _ = local_gpus()
    gpu = max(gpus, key=lambda g: g.total_bytes, default=None)
    measured = cached_measurement() if gpu is None else None
    if measured is not None:
        return measured
    return HardwareClass.model_validate({
        "name": "local", "description": "this machine", "vram": gpu.total_bytes if gpu else 0,
        "ram": total_ram_bytes() or 1, "gpu_bandwidth_gbps": LOCAL_GPU_BANDWIDTH_GBPS if gpu else 0.0,
        "ram_bandwidth_gbps": LOCAL_RAM_BANDWIDTH_GBPS, "gpu_overhead": DEFAULT_GPU_OVERHEAD_BYTES,
    })  # fmt: skip
