"""What `mm inspect`, `mm fit` and `mm hw` describe: a model's summary, the local machine, the MODEL argument.

Kept apart from the memory model: these are descriptions for people and the glue from a command-line
MODEL (path, pulled Hub file, recipe) and hardware flags to the fit library's inputs.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from pipeline.chat_format import describe_chat_template
from pipeline.gguf_header import read_model
from pipeline.hardware import DEFAULT_GPU_OVERHEAD_BYTES, HardwareClass, get_hardware, hardware_catalog
from pipeline.memory import model_shape
from pipeline.model_ref import local_model_file, parse_model_arg
from pipeline.quant_types import by_ftype
from pipeline.recipe import HARDWARE_FILE, Recipe, recipes_dir
from pipeline.units import format_size

# Used for the local machine, whose bandwidths mm cannot measure cheaply: a mid-range GPU and
# dual-channel DDR4 (see the built-in classes in hardware.py).
LOCAL_GPU_BANDWIDTH_GBPS = 360.0
LOCAL_RAM_BANDWIDTH_GBPS = 50.0


class ModelSummary(BaseModel):
    schema_version: int = 2  # 2: mixture-of-experts facts
    path: str
    shards: int
    architecture: str
    name: str | None
    n_params: int
    n_layers: int
    context_length: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    sliding_window: int
    swa_layers: int
    file_type: str | None
    tensor_types: dict[str, int]
    chat_template: str  # "yes (N characters)" or what `mm run` uses without one
    size_bytes: int
    weights_bytes: int
    bits_per_weight: float
    # Mixture of experts (0 for a dense model)
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    n_dense_layers: int = 0  # layers with a dense FFN (leading dense layers of glm4moe, deepseek2)
    active_params: int = 0  # parameters read per token


def summarize_model(path: Path) -> ModelSummary:
    """The header facts a person wants before downloading or running a model."""
    headers = read_model(path)
    shape = model_shape(headers)
    ftype = by_ftype(headers[0].file_type) if headers[0].file_type is not None else None
    counts = Counter(t.type_name for h in headers for t in h.tensors)
    name = headers[0].metadata.get("general.name")
    return ModelSummary(
        path=str(path),
        shards=len(headers),
        architecture=shape.arch,
        name=name if isinstance(name, str) else None,
        n_params=shape.n_params,
        n_layers=shape.n_layers,
        context_length=shape.n_ctx_train,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        n_head_kv=max(shape.n_head_kv),
        head_dim=shape.head_dim_k,
        n_ff=shape.n_ff,
        n_vocab=shape.n_vocab,
        sliding_window=shape.n_swa,
        swa_layers=sum(shape.is_swa),
        file_type=ftype.name if ftype else None,
        tensor_types=dict(counts.most_common()),
        chat_template=describe_chat_template(headers[0].metadata),
        size_bytes=sum(h.file_size for h in headers),
        weights_bytes=shape.weights_bytes,
        bits_per_weight=round(8 * shape.weights_bytes / max(shape.n_params, 1), 3),
        n_expert=shape.n_expert,
        n_expert_used=shape.n_expert_used,
        n_expert_shared=shape.n_expert_shared,
        n_ff_exp=shape.n_ff_exp,
        n_dense_layers=shape.n_dense_layers if shape.is_moe else 0,
        active_params=shape.active_params,
    )


class ResolvedModel(NamedTuple):
    path: Path  # the first shard; a sparse header stub when is_stub
    recipe: Recipe | None
    is_stub: bool


def resolve_model(
    text: str,
    recipes: Path | None = None,
    *,
    token: str | None = None,
    offline: bool = False,
    allow_header_stub: bool = False,
) -> ResolvedModel:
    """MODEL → a local GGUF path (and the recipe, when one was named). Never downloads weights.

    With allow_header_stub (commands that read only the header: inspect, fit), a Hub file that was not
    pulled is answered from its GGUF header, fetched with Range requests into a sparse stub.
    """
    arg = parse_model_arg(text, recipes)
    path, is_stub = local_model_file(arg, token=token, offline=offline, allow_header_stub=allow_header_stub)
    return ResolvedModel(path, arg.recipe, is_stub)


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
            mib = 1 << 20
            gpus.append(LocalGPU(index=int(parts[0]), name=parts[1], total_bytes=int(float(parts[2]) * mib),
                                 free_bytes=int(float(parts[3]) * mib)))  # fmt: skip
    return gpus


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def local_machine(recipes: Path | None = None) -> LocalMachine:
    """This machine's GPUs (NVML, else nvidia-smi), RAM and CPU, with the hardware classes mm knows."""
    gpus, source = _gpus_nvml(), "nvml"
    if gpus is None:
        gpus, source = _gpus_smi(), "nvidia-smi"
    if gpus is None:
        gpus, source = [], "none"
    catalog = hardware_catalog((recipes or recipes_dir()) / HARDWARE_FILE)
    return LocalMachine(gpus=gpus, gpu_source=source, ram_bytes=_ram_bytes(), cpu=_cpu_name(),
                        cpu_count=os.cpu_count() or 1, classes=list(catalog.values()))  # fmt: skip


def target_hardware(
    name: str | None, vram_bytes: int | None, ram_bytes: int | None, recipe: Recipe | None = None,
    recipes: Path | None = None,
) -> HardwareClass:  # fmt: skip
    """The class to plan for: --hardware, else the recipe's, else this machine; --vram/--ram override."""
    folder = recipe.path.parent if recipe and recipe.path else (recipes or recipes_dir())
    if name or recipe:
        base = get_hardware(name or (recipe.hardware if recipe else ""), folder / HARDWARE_FILE)
    else:
        machine = local_machine(recipes)
        gpu = max(machine.gpus, key=lambda g: g.total_bytes, default=None)
        base = HardwareClass.model_validate({
            "name": "local", "description": "this machine", "vram": gpu.total_bytes if gpu else 0,
            "ram": machine.ram_bytes or 1, "gpu_bandwidth_gbps": LOCAL_GPU_BANDWIDTH_GBPS if gpu else 0.0,
            "ram_bandwidth_gbps": LOCAL_RAM_BANDWIDTH_GBPS, "gpu_overhead": DEFAULT_GPU_OVERHEAD_BYTES,
        })  # fmt: skip
    changes: dict[str, object] = {}
    if vram_bytes is not None:
        changes["vram_bytes"] = vram_bytes
        if vram_bytes > 0 and base.gpu_bandwidth_gbps == 0:
            changes["gpu_bandwidth_gbps"] = LOCAL_GPU_BANDWIDTH_GBPS
    if ram_bytes is not None:
        changes["ram_bytes"] = ram_bytes
    if not changes:
        return base
    given = ", ".join(
        f"{format_size(n)} {what}" for n, what in ((vram_bytes, "VRAM"), (ram_bytes, "RAM")) if n is not None
    )
    changes["name"] = f"{given}" if base.name == "local" else f"{base.name} with {given}"
    return base.model_copy(update=changes)
