"""Placement by tensor: which layers go to the GPU (-ngl), whose routed experts stay in RAM (--n-cpu-moe,
--cpu-moe, -ot), the bytes one decoded token reads on each device, and the solver that picks the pair.

A mixture-of-experts layer is run the way people run it on small cards: attention, norms, router and
shared experts on the GPU, the routed experts of the first K layers in RAM (llama.cpp's `--n-cpu-moe K`,
common/arg.cpp). Only `n_expert_used` of `n_expert` experts are read per token, so a token reads a small
share of each expert tensor: that is why such a placement decodes several times faster than moving whole
layers. The buffers themselves come from pipeline/fitting/memory.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipeline.fitting.memory import Context, DeviceBuffers, kv_per_layer, split_layers
from pipeline.fitting.model_shape import ModelShape
from pipeline.fitting.speed import attention_cells, merge, scaled


@dataclass(frozen=True)
class ReadBytes:
    """Bytes one decoded token reads on each device: weights (only the active share of routed experts),
    the output head, and the KV cache."""

    gpu: int
    cpu: int
    # Matrix work of the same token for the speed model's compute term: ggml type -> elements multiplied.
    gpu_elements: Mapping[str, int] = field(default_factory=dict)
    cpu_elements: Mapping[str, int] = field(default_factory=dict)


def bytes_read_per_token(shape: ModelShape, ctx: Context, n_gpu_layers: int, n_cpu_moe: int = 0) -> ReadBytes:
    """Per device, what a token reads: each layer's dense part and n_expert_used/n_expert of its routed
    experts where they live, the KV cells it attends to, and the output head; of the embedding table,
    one row (nothing). The matrix work is split the same way (pipeline/fitting/speed.py)."""
    n = shape.n_layers
    start = n + 1 - max(0, min(n_gpu_layers, n + 1))  # layers start.. are on the GPU
    held = max(start, min(n_cpu_moe, n))  # their experts up to `held` stay in RAM
    experts = shape.expert_bytes or (0,) * n
    work = _layer_work(shape, ctx)
    kv, layers, share = work.kv_read, shape.layer_bytes, shape.active_fraction
    gpu = sum(layers[start:]) - sum(experts[start:]) + sum(kv[start:]) + round(sum(experts[held:]) * share)
    cpu = sum(layers[:start]) - sum(experts[:start]) + sum(kv[:start]) + round(sum(experts[:held]) * share)
    gpu_work = [*work.dense[start:], *work.experts[held:]]
    cpu_work = [*work.dense[:start], *work.experts[:held]]
    head = shape.output_bytes + shape.tied_bytes  # a tied head is the embedding table, read whole
    (gpu_work if start <= n else cpu_work).append(shape.output_elements)
    gpu, cpu = (gpu + head, cpu) if start <= n else (gpu, cpu + head)
    return ReadBytes(gpu, cpu, merge(gpu_work), merge(cpu_work))


@dataclass(frozen=True)
class _LayerWork:
    kv_read: tuple[int, ...]  # KV bytes a decoded token reads per layer (the cells in use, not the cache)
    dense: tuple[Mapping[str, int], ...]  # per layer: weight elements by type, and attention over the cells
    experts: tuple[Mapping[str, int], ...]  # per layer: the active share of the routed experts' elements


@functools.lru_cache(maxsize=32)
def _layer_work(shape: ModelShape, ctx: Context) -> _LayerWork:
    """Per layer, what a token reads and multiplies (cached: the placement search sums it for many splits).

    llama.cpp attends to the used cells padded to 256 (n_kv), not the whole cache: decode is predicted as
    llama-bench's tg128 measures it, from an empty cache (speed.attention_cells)."""
    full, swa = ctx.stream_cells
    kv = kv_per_layer(shape, ctx)
    kv_read, dense, experts = [], [], []
    for il in range(shape.n_layers):
        attention: dict[str, int] = {}
        read = kv[il]
        if not shape.is_recurrent[il]:
            cells = swa if shape.is_swa[il] else full
            used = attention_cells(cells)
            read = read * used // max(cells, 1)
            attention[ctx.type_k.upper()] = shape.n_head * (shape.head_dim_k + shape.head_dim_v) * used
        kv_read.append(read)
        dense.append(merge([shape.layer_elements[il] if shape.layer_elements else {}, attention]))
        experts.append(scaled(shape.expert_elements[il] if shape.expert_elements else {}, shape.active_fraction))
    return _LayerWork(tuple(kv_read), tuple(dense), tuple(experts))


@dataclass(frozen=True)
class Placement:
    n_gpu_layers: int
    n_cpu_moe: int
    gpu: DeviceBuffers
    cpu: DeviceBuffers
    read: ReadBytes

    @property
    def gpu_total(self) -> int:
        return self.gpu.total


def place(shape: ModelShape, ctx: Context, n_gpu_layers: int, n_cpu_moe: int = 0) -> Placement:
    n_cpu_moe = min(max(n_cpu_moe, 0), shape.n_layers) if shape.is_moe else 0
    gpu, cpu = split_layers(shape, ctx, n_gpu_layers, n_cpu_moe)
    return Placement(n_gpu_layers, n_cpu_moe, gpu, cpu, bytes_read_per_token(shape, ctx, n_gpu_layers, n_cpu_moe))


Speed = Callable[[Placement], float]  # predicted decode tokens/s of a placement


def most_layers(shape: ModelShape, ctx: Context, budget: float, n_cpu_moe: int = 0) -> Placement:
    """Plain layer offload (llama.cpp's -ngl alone): the most layers whose GPU buffers fit `budget`."""
    for ngl in range(shape.n_layers + 1, 0, -1):
        if _gpu_total(shape, ctx, ngl, n_cpu_moe) <= budget:
            return place(shape, ctx, ngl, n_cpu_moe)
    return place(shape, ctx, 0)


def _gpu_total(shape: ModelShape, ctx: Context, n_gpu_layers: int, n_cpu_moe: int) -> int:
    return split_layers(shape, ctx, n_gpu_layers, n_cpu_moe)[0].total


def fewest_cpu_experts(shape: ModelShape, ctx: Context, budget: float, n_gpu_layers: int) -> Placement | None:
    """With `n_gpu_layers` on the GPU, the smallest --n-cpu-moe that fits `budget` (None if none does).

    GPU memory only falls as K grows, so a binary search over K finds it.
    """
    low, high = 0, shape.n_layers
    if _gpu_total(shape, ctx, n_gpu_layers, high) > budget:
        return None
    while low < high:
        mid = (low + high) // 2
        if _gpu_total(shape, ctx, n_gpu_layers, mid) <= budget:
            high = mid
        else:
            low = mid + 1
    return place(shape, ctx, n_gpu_layers, low)


def llama_fit_order(shape: ModelShape, ctx: Context, budget: float) -> Placement:
    """common/fit.cpp for one GPU: if the dense parts of every layer fit with all experts in RAM, offload
    every layer and bring experts back from the last layer down (the fewest --n-cpu-moe that fits);
    otherwise fill dense-only layers from the back (-ngl with --cpu-moe)."""
    best = fewest_cpu_experts(shape, ctx, budget, shape.n_layers + 1)
    return best or most_layers(shape, ctx, budget, n_cpu_moe=shape.n_layers)


def fastest(shape: ModelShape, ctx: Context, budget: float, speed: Speed) -> Placement:
    """The (n_gpu_layers, n_cpu_moe) pair inside `budget` with the best predicted decode speed.

    For each -ngl the fewest CPU experts that fit is the fastest (an expert on the GPU is read faster),
    so the search is over -ngl alone; ties keep more layers on the GPU.
    """
    best = most_layers(shape, ctx, budget)
    for ngl in range(shape.n_layers + 1, 0, -1):
        candidate = fewest_cpu_experts(shape, ctx, budget, ngl)
        if candidate is not None and speed(candidate) > speed(best):
            best = candidate
    return best


def describe_placement(shape: ModelShape, n_gpu_layers: int, n_cpu_moe: int) -> str:
    """Where the layers and the experts are, in words ("experts of layers 0-35 in RAM, ...")."""
    n = shape.n_layers
    start = n + 1 - max(0, min(n_gpu_layers, n + 1))
    if start > n:
        return "everything in RAM"
    if start == n:
        where = f"only the output layer on the GPU, layers 0-{n - 1} in RAM"
    elif start == 0:
        where = "every layer on the GPU"
        if shape.tied_bytes:  # llama-model.cpp: the input layer is the CPU's; a tied head is a copy (TENSOR_DUPLICATED)
            where += " (token embeddings in RAM, their copy as the tied output head on the GPU)"
    else:
        where = f"layers {start}-{n - 1} on the GPU, layers 0-{start - 1} in RAM"
    if not shape.is_moe or n_cpu_moe <= start:
        return where
    held = f"experts of layers {start}-{min(n_cpu_moe, n) - 1} in RAM"
    return f"{held}, everything else on the GPU" if start == 0 else f"{where}; {held}"
