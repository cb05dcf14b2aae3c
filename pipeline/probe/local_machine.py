"""This machine: its GPUs (NVML, else nvidia-smi), RAM and CPU, probed; and this machine as a hardware
class (`mm hw --measure`'s cached figures, else its largest GPU with assumed bandwidths). The classes
themselves, built in or from hardware.toml, are data in hardware.py and probe nothing."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

from pipeline.spec.gpus import catalog_id_for
from pipeline.spec.hardware import (
    DEFAULT_GPU_OVERHEAD_BYTES,
    LOCAL_GPU_BANDWIDTH_GBPS,
    LOCAL_RAM_BANDWIDTH_GBPS,
    MIB,
    HardwareClass,
    hardware_catalog,
)
from pipeline.spec.results import Machine

log = logging.getLogger(__name__)


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


def default_threads() -> int:
    """The threads a run uses when it is not told: the physical cores, as llama.cpp's tools (llama-bench,
    llama-cli) default to them (common.cpp common_cpu_get_num_physical_cores: one per distinct thread_siblings
    set on Linux; elsewhere its fallback, every logical CPU up to 4 and half of them beyond)."""
    siblings: set[str] = set()
    cpu = 0
    while True:
        try:
            siblings.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings").read_text().strip())
        except OSError:
            break
        cpu += 1
    if siblings:
        return len(siblings)
    logical = os.cpu_count() or 4
    return logical if logical <= 4 else logical // 2


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


def this_machine() -> Machine:
    """This machine as a measurement names it (spec/results.Machine): no host or user name. Asks llama.cpp
    whether it can offload, so it is called where a measurement has loaded llama.cpp anyway."""
    import llama_cpp

    cpu, cores, gpus = machine_identity()
    backend = "gpu" if gpus and llama_cpp.llama_supports_gpu_offload() else "cpu"
    parts = {"cpu": cpu, "cores": cores, "gpus": list(gpus), "backend": backend}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return Machine.model_validate({**parts, "id": digest[:16]})


def local_machine(hardware_file: Path | None = None) -> LocalMachine:
    """This machine's GPUs, RAM and CPU, with the hardware classes mm knows (built-ins and the file's)."""
    gpus, source = local_gpus()
    classes = list(hardware_catalog(hardware_file).values())
    return LocalMachine(gpus=gpus, gpu_source=source, ram_bytes=total_ram_bytes(), cpu=cpu_name(),
                        cpu_count=os.cpu_count() or 1, classes=classes)  # fmt: skip


def measurement_path() -> Path:
    """Where `mm hw --measure` keeps this machine's measured class."""
    from pipeline.base.home import mm_home

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
    """This machine as a hardware class: measured by `mm hw --measure` when it was (its GPU too, when it has
    one), else its largest GPU (as its catalog card when it is one) and its RAM with the assumed bandwidths."""
    gpus, _ = local_gpus()
    gpu = max(gpus, key=lambda g: g.total_bytes, default=None)
    measured = cached_measurement()
    if measured is not None and (gpu is None or measured.gpu_calibration is not None):
        return measured
    card = catalog_id_for(gpu.name, gpu.total_bytes) if gpu else None
    if gpu is not None and card is not None:
        return HardwareClass.model_validate({
            "name": "local", "description": f"this machine ({gpu.name})", "gpus": [card], "vram": gpu.total_bytes,
            "ram": total_ram_bytes() or 1, "ram_bandwidth_gbps": LOCAL_RAM_BANDWIDTH_GBPS, "cpu_cores": os.cpu_count(),
        })  # fmt: skip
    return HardwareClass.model_validate({
        "name": "local", "description": "this machine", "vram": gpu.total_bytes if gpu else 0,
        "ram": total_ram_bytes() or 1, "gpu_bandwidth_gbps": LOCAL_GPU_BANDWIDTH_GBPS if gpu else 0.0,
        "ram_bandwidth_gbps": LOCAL_RAM_BANDWIDTH_GBPS, "gpu_overhead": DEFAULT_GPU_OVERHEAD_BYTES,
    })  # fmt: skip
