"""Hardware classes: the machine a build targets, built in or from hardware.toml, composed of parts (GPUs from
the catalog in gpus.py, RAM and its bandwidth, CPU cores). Data only: a class names a target, not the local
machine (local_machine.py probes this one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from pipeline.base.config_dir import config_dir
from pipeline.base.errors import HardwareError, UsageError
from pipeline.base.units import format_size, parse_size
from pipeline.base.validation import describe_validation_error, did_you_mean, read_toml
from pipeline.spec.devices import RpcHost
from pipeline.spec.gpus import Calibration, Gpu, gpu_catalog

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
    and the per-token overhead (see pipeline/fitting/speed.py), each rate with its measured spread."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gflops: dict[str, float] = Field(default_factory=dict)  # ggml type (Q8_0, Q4_K, F16...) -> GFLOP/s
    spread: dict[str, float] = Field(default_factory=dict)  # ggml type -> relative spread between rounds (0.03)
    error: dict[str, float] = Field(default_factory=dict)  # ggml type -> relative standard error of its rate
    # what llama.cpp's decode reads from RAM per second on this many threads (else the class's figure)
    ram_bandwidth_gbps: float | None = Field(default=None, gt=0)
    ram_bandwidth_spread: float = Field(default=0.0, ge=0)
    ram_bandwidth_error: float = Field(default=0.0, ge=0)
    # the share of its in-cache rate a type keeps when its weights come from RAM (measured on Q4_K)
    ram_compute_share: float = Field(default=1.0, gt=0, le=1)
    token_overhead_ms: float = Field(default=0.0, ge=0)
    op_overhead_us: float = Field(default=0.0, ge=0)  # per computed node of the decode graph (graph_ops.py)
    layer_overhead_ms: float = Field(default=0.0, ge=0)  # older measurements: per llama layer, not per node
    vocab_overhead_ns: float = Field(default=0.0, ge=0)  # per vocabulary entry: the logits of every token
    state_overhead_ns: float = Field(default=0.0, ge=0)  # per recurrent (SSM) state element a token scans
    cache_bytes: int = Field(default=0, ge=0)  # the last-level cache these rates were measured in


class HardwareClass(BaseModel):
    """A target machine: its GPUs (catalog ids in llama.cpp's device order, or just a VRAM size and bandwidth;
    vram 0 = CPU only), system RAM and CPU cores; optionally measured CPU compute rates per thread count
    (`mm hw --measure`), and how the figures were obtained.

    `gpus = ["rtx3090", "rtx3090"]` fills vram (their sum) and gpu_bandwidth_gbps (the first card's) unless the
    class gives them; the speed model then uses each card's catalog figures and calibration.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    gpus: tuple[str, ...] = ()  # catalog ids, in llama.cpp's device order (CUDA0, CUDA1, ...)
    cpu_cores: int | None = Field(default=None, ge=1)  # physical cores the CPU side may use
    vram_bytes: Size = Field(default=0, validation_alias="vram", ge=0)
    ram_bytes: Size = Field(validation_alias="ram", gt=0)
    gpu_bandwidth_gbps: float = Field(default=0.0, ge=0)
    ram_bandwidth_gbps: float = Field(gt=0)
    gpu_overhead_bytes: Size = Field(default=DEFAULT_GPU_OVERHEAD_BYTES, validation_alias="gpu_overhead", ge=0)
    cpu_rates: dict[int, CpuRates] = Field(default_factory=dict)  # thread count -> measured rates
    # The GPUs' own calibration, measured by `mm hw --measure` on a machine with one (else the catalog's)
    gpu_calibration: Calibration | None = None
    threads: int | None = Field(default=None, ge=1)  # threads a run uses when it does not say
    measured: str = "datasheet"  # how the figures were obtained
    rpc: list[RpcHost] = Field(default_factory=list)  # [[class.rpc]]: workers a run also uses (spec/devices.py)
    builtin: bool = Field(default=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _from_parts(cls, data: object) -> object:
        """VRAM and GPU bandwidth from the catalog's cards, where the class does not give them itself."""
        if not isinstance(data, dict) or not data.get("gpus"):
            return data
        ids = data["gpus"]
        if isinstance(ids, str) or not isinstance(ids, list | tuple):
            raise ValueError('gpus: expected a list of GPU ids, e.g. gpus = ["rtx3090"]')
        catalog = gpu_catalog().gpus
        unknown = [i for i in ids if i not in catalog]
        if unknown:
            raise ValueError(f"gpus: unknown GPU {unknown[0]!r} (`mm hw --gpus` lists the catalog)")
        cards = [catalog[i] for i in ids]
        filled = dict(data)
        if "vram" not in data and "vram_bytes" not in data:
            filled["vram"] = sum(card.usable_bytes for card in cards)
        filled.setdefault("gpu_bandwidth_gbps", cards[0].bandwidth_gbps)
        return filled

    @property
    def has_gpu(self) -> bool:
        return self.vram_bytes > 0

    @property
    def devices(self) -> tuple[Gpu, ...]:
        """The catalog entries of this class's GPUs, in device order (empty for a class given by sizes)."""
        catalog = gpu_catalog().gpus
        return tuple(catalog[i] for i in self.gpus)

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
        measured = self.measured_threads(threads)
        return self.cpu_rates[measured] if measured is not None else None

    def measured_threads(self, threads: int | None) -> int | None:
        """The measured thread count whose rates stand for `threads` (None: the class's default)."""
        if not self.cpu_rates:
            return None
        want = threads or self.threads or max(self.cpu_rates)
        below = [t for t in self.cpu_rates if t <= want]
        return max(below) if below else min(self.cpu_rates)


def _builtin(name: str, description: str, gpus: list[str], ram: str, ram_bw: float, cores: int) -> HardwareClass:
    parts = {"gpus": gpus} if gpus else {"vram": 0}
    return HardwareClass.model_validate(
        {"name": name, "description": description, **parts, "ram": ram, "ram_bandwidth_gbps": ram_bw,
         "cpu_cores": cores, "builtin": True}
    )  # fmt: skip


# GPU figures from the catalog (gpus.toml); RAM bandwidth a little under the peak of dual-channel DDR4-3200
# (51.2 GB/s) and DDR5-5200 (83.2 GB/s), as the classes always said.
BUILTIN_CLASSES: tuple[HardwareClass, ...] = (
    _builtin("rtx3060-12g", "RTX 3060 12 GB, 64 GB dual-channel DDR4", ["rtx3060"], "64G", 50, 8),
    _builtin("rtx3080-10g", "RTX 3080 10 GB, 32 GB dual-channel DDR4", ["rtx3080"], "32G", 50, 8),
    _builtin("rtx4060ti-16g", "RTX 4060 Ti 16 GB, 64 GB dual-channel DDR5", ["rtx4060ti-16g"], "64G", 80, 8),
    _builtin("rtx3090-24g", "RTX 3090 24 GB, 64 GB dual-channel DDR4", ["rtx3090"], "64G", 50, 8),
    _builtin("rtx4090-24g", "RTX 4090 24 GB, 64 GB dual-channel DDR5", ["rtx4090"], "64G", 80, 16),
    _builtin("cpu-64g", "CPU only, 64 GB dual-channel DDR4", [], "64G", 50, 8),
    _builtin("cpu-32g", "CPU only, 32 GB dual-channel DDR4", [], "32G", 50, 8),
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
    """Built-ins, then the user's config folder's classes, then the given file's (a recipes folder's): a later
    class overrides an earlier one of the same name."""
    catalog = {c.name: c for c in BUILTIN_CLASSES}
    for path in (user_hardware_file(), hardware_file):
        if path is not None and path.is_file():
            catalog.update({c.name: c for c in load_hardware_file(path)})
    return catalog


def user_hardware_file() -> Path:
    """The hardware classes every command reads wherever it runs (`mm hw --save NAME` writes there)."""
    return config_dir() / HARDWARE_FILE


def get_hardware(name: str, hardware_file: Path | None = None) -> HardwareClass:
    catalog = hardware_catalog(hardware_file)
    if name not in catalog:
        raise HardwareError(
            f"unknown hardware class {name!r}; known classes: {', '.join(sorted(catalog))}",
            hint=hardware_hint(name, catalog),
        )
    return catalog[name]


def hardware_hint(name: str, catalog: dict[str, HardwareClass]) -> str:
    """The class a mistyped name most likely meant (`rtx3060` → `rtx3060-12g`), else where to add one."""
    starting = sorted(c for c in catalog if c.startswith(name.lower()))
    close = starting[0] if len(starting) == 1 else did_you_mean(name, catalog)
    return f"did you mean {close}?" if close else "add your own with `mm hw --save NAME`, or to recipes/hardware.toml"
