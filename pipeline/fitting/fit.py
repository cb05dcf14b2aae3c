"""Fitting a model to hardware: the layer solver, the decode-speed model, the verdict and what would fit.

The per-device buffers come from pipeline/fitting/memory.py (which mirrors llama.cpp) and where each tensor goes
from pipeline/fitting/placement.py; this module picks the placement for the settings, decides whether the rest
fits in RAM, how fast decode will be, and what to change. It reads headers only and runs no llama.cpp;
comparing quant types (which asks llama.cpp's quantize dry run for exact sizes) is pipeline/fitting/recommend.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from pipeline.base.errors import UsageError
from pipeline.base.units import format_size
from pipeline.fitting import gpu_speed
from pipeline.fitting.cpu_speed import roofline_devices
from pipeline.fitting.gpu_speed import decode_tokens_per_second
from pipeline.fitting.memory import Context, DeviceBuffers, context
from pipeline.fitting.model_shape import ModelShape, model_shape
from pipeline.fitting.multi import DeviceFit, DevicesPlan
from pipeline.fitting.placement import (
    Placement,
    describe_placement,
    fastest,
    fewest_cpu_experts,
    llama_fit_order,
    most_layers,
    place,
)
from pipeline.fitting.speed import tokens_per_second_spread
from pipeline.gguf.header import read_model
from pipeline.spec.hardware import LOCAL_GPU_BANDWIDTH_GBPS, HardwareClass
from pipeline.spec.run_settings import RunSettings, beyond_training, check_for_model, expert_overrides

log = logging.getLogger(__name__)

# 2: mixture-of-experts placement (n_cpu_moe, tensor_overrides, bytes read per token); 3: settings are the one
# run-settings model (llama.cpp's names: n_ctx, n_batch, n_ubatch, n_threads, use_mmap), safety_margin beside them
SCHEMA_VERSION = 3
# Reserve this share of VRAM and RAM: the prediction is held to 5% of llama.cpp's own figures (the test
# matrix), and allocators fragment; 5% of a 12 GB card is 600 MiB, about one 7B layer at Q8_0.
DEFAULT_SAFETY_MARGIN = 0.05
# A MoE placement other than llama.cpp's own (common/fit.cpp's order, what `llama-server --fit` would choose) is
# taken only when predicted faster by more than this: below it the decode model cannot tell two placements apart
# (its held-back hybrid predictions spread by 10% and more, bench/gpu_public.py), and the usual one is the one
# users and llama.cpp's tools will compare against.
PLACEMENT_GAIN = 0.05
Verdict = Literal["full_offload", "partial_offload", "cpu_only", "does_not_fit"]


class DeviceBreakdown(BaseModel):
    weights_bytes: int
    kv_bytes: int
    output_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int


class PlacementOption(BaseModel):
    """One way to place the model, for the side-by-side comparison."""

    label: str
    n_gpu_layers: int
    n_cpu_moe: int
    vram_bytes: int
    tokens_per_second: float


class FitResult(BaseModel):
    schema_version: int
    model_path: str
    hardware: str
    settings: RunSettings
    safety_margin: float = DEFAULT_SAFETY_MARGIN  # this share of VRAM and RAM is kept free
    n_layers: int  # repeating layers; llama.cpp offloads up to n_layers + 1 (the output layer counts)
    n_gpu_layers: int
    n_cpu_moe: int = 0  # routed experts of layers 0..n_cpu_moe-1 stay in RAM (llama.cpp --n-cpu-moe)
    tensor_overrides: list[str] = Field(default_factory=list)  # the same as llama.cpp -ot strings
    n_expert: int = 0
    n_expert_used: int = 0
    n_params: int = 0
    active_params: int = 0  # parameters read per token (only the chosen experts)
    gpu_read_bytes: int = 0  # bytes one decoded token reads on the GPU ...
    cpu_read_bytes: int = 0  # ... and in RAM
    placement: str = ""  # where the experts are, in words
    alternatives: list[PlacementOption] = Field(default_factory=list)  # MoE: expert vs plain layer offload
    placement_reason: str = ""  # why this placement (MoE on a GPU)
    vram_bytes: int  # predicted GPU total (0 without a GPU)
    hardware_vram_bytes: int = 0  # the class's VRAM (0: no GPU), so "nothing on the GPU" is told from "no GPU"
    ram_bytes: int  # predicted CPU total
    gpu: DeviceBreakdown
    cpu: DeviceBreakdown
    fits_vram: bool
    fits_ram: bool
    tokens_per_second: float
    prompt_tokens_per_second: float | None = None  # pp512; None where not predicted (CPU only, no catalog GPU)
    speed_basis: str = ""  # what the decode figure rests on: measured class, calibrated catalog, datasheet only
    prompt_basis: str = ""
    tokens_per_second_spread: float = 0.0  # the ± carried from the measured rates' errors (0: none known)
    verdict: Verdict
    assumptions: list[str]
    suggestions: list[str]
    warnings: list[str] = []  # settings the model was not made for (a context beyond its training)
    # Several devices (--rpc, -ts; pipeline/fitting/multi.py): each device's share in llama.cpp's device order
    devices: list[DeviceFit] = []
    split: DevicesPlan | None = None  # how: the split used or proposed, why, the host's part, hand-overs


def _breakdown(split: DeviceBuffers, overhead: int) -> DeviceBreakdown:
    total = split.total + overhead
    return DeviceBreakdown(
        weights_bytes=split.weights,
        kv_bytes=split.kv,
        output_bytes=split.output,
        compute_bytes=split.compute,
        overhead_bytes=overhead,
        total_bytes=total,
    )


def fit_context(shape: ModelShape, settings: RunSettings) -> Context:
    return context(
        settings.n_ctx, settings.n_batch, settings.n_ubatch, settings.parallel, settings.kv_type,
        settings.flash_attn, settings.swa_full, shape, settings.kv_unified,
    )  # fmt: skip


def _budget(hardware: HardwareClass, margin: float) -> float:
    return hardware.vram_bytes * (1 - margin) - hardware.gpu_overhead_bytes


def _place(shape: ModelShape, hardware: HardwareClass, settings: RunSettings, margin: float) -> Placement:
    """The settings' placement: what was asked for, else the fastest that fits (most layers for a dense model)."""
    ctx = fit_context(shape, settings)
    asked_k = shape.n_layers if settings.cpu_moe else settings.n_cpu_moe
    if not hardware.has_gpu:
        return place(shape, ctx, 0)
    budget = _budget(hardware, margin)
    if settings.n_gpu_layers is not None:
        ngl = min(settings.n_gpu_layers, shape.n_layers + 1)
        if asked_k is None and shape.is_moe:
            return fewest_cpu_experts(shape, ctx, budget, ngl) or place(shape, ctx, ngl, shape.n_layers)
        return place(shape, ctx, ngl, asked_k or 0)
    if asked_k is not None or not shape.is_moe:
        return most_layers(shape, ctx, budget, asked_k or 0)

    def speed(placement: Placement) -> float:
        return decode_tokens_per_second(placement, shape, hardware, settings.n_threads)

    quickest, usual = fastest(shape, ctx, budget, speed), llama_fit_order(shape, ctx, budget)
    return quickest if speed(quickest) > speed(usual) * (1 + PLACEMENT_GAIN) else usual


def _alternatives(
    shape: ModelShape, hardware: HardwareClass, settings: RunSettings, margin: float
) -> list[PlacementOption]:
    """For a MoE model on a GPU: llama.cpp's own fit order and plain layer offload, for comparison."""
    if not (shape.is_moe and hardware.has_gpu):
        return []
    ctx, budget = fit_context(shape, settings), _budget(hardware, margin)
    options = [
        ("experts in RAM, llama.cpp's fit order (common/fit.cpp)", llama_fit_order(shape, ctx, budget)),
        ("whole layers only (-ngl, no --n-cpu-moe)", most_layers(shape, ctx, budget)),
    ]
    return [
        PlacementOption(
            label=label,
            n_gpu_layers=p.n_gpu_layers,
            n_cpu_moe=p.n_cpu_moe,
            vram_bytes=p.gpu_total + (hardware.gpu_overhead_bytes if p.n_gpu_layers else 0),
            tokens_per_second=decode_tokens_per_second(p, shape, hardware, settings.n_threads),
        )
        for label, p in options
    ]


def _placement_reason(result: FitResult, settings: RunSettings) -> str:
    """Why the chosen placement beats the alternatives shown beside it (a MoE on a GPU), or "" otherwise."""
    if not result.alternatives:
        return ""
    asked = settings.n_cpu_moe is not None or settings.cpu_moe or settings.n_gpu_layers is not None
    fit_order, layers_only = result.alternatives
    if asked:
        why = "the placement asked for"
    elif (fit_order.n_gpu_layers, fit_order.n_cpu_moe) == (result.n_gpu_layers, result.n_cpu_moe):
        why = f"llama.cpp's fit order: no placement that fits is predicted over {PLACEMENT_GAIN:.0%} faster"
    else:
        why = (f"the fastest predicted placement that fits, over {PLACEMENT_GAIN:.0%} faster than llama.cpp's fit "
               f"order ({fit_order.tokens_per_second:g})")  # fmt: skip
    return (
        f"{why}: a token reads {format_size(result.cpu_read_bytes)} from RAM; offloading whole layers instead "
        f"fits {layers_only.n_gpu_layers} layers at ~{layers_only.tokens_per_second:g} tokens/s: every token reads all "
        f"of a layer's attention, KV cache and shared weights but only {result.n_expert_used} of its "
        f"{result.n_expert} experts, so VRAM holding dense parts saves more RAM traffic than VRAM holding experts"
    )


def fit_shape(
    shape: ModelShape, model: Path, hardware: HardwareClass, settings: RunSettings, *, suggest: bool = True,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
) -> FitResult:  # fmt: skip
    """fit_model for an already-read shape (the quant recommendation re-fits one shape per candidate)."""
    margin = safety_margin
    check_for_model(settings, n_layers=shape.n_layers, n_ctx_train=shape.n_ctx_train, error=UsageError,
                    context_warns=True)  # fmt: skip
    chosen = _place(shape, hardware, settings, margin)
    ngl, gpu_split, cpu_split = chosen.n_gpu_layers, chosen.gpu, chosen.cpu
    overhead = hardware.gpu_overhead_bytes if ngl > 0 else 0
    gpu, cpu = _breakdown(gpu_split, overhead), _breakdown(cpu_split, 0)
    fits_vram = gpu.total_bytes <= hardware.vram_bytes * (1 - margin) or ngl == 0
    fits_ram = cpu.total_bytes <= hardware.ram_bytes * (1 - margin)
    verdict: Verdict
    if not (fits_ram and fits_vram):
        verdict = "does_not_fit"
    elif ngl == 0:
        verdict = "cpu_only"
    else:
        whole = ngl == shape.n_layers + 1 and chosen.n_cpu_moe == 0  # experts in RAM: only partly offloaded
        verdict = "full_offload" if whole else "partial_offload"
    result = FitResult(
        schema_version=SCHEMA_VERSION,
        model_path=str(model),
        hardware=hardware.name,
        hardware_vram_bytes=hardware.vram_bytes,
        settings=settings,
        safety_margin=margin,
        n_layers=shape.n_layers,
        n_gpu_layers=ngl,
        n_cpu_moe=chosen.n_cpu_moe,
        tensor_overrides=expert_overrides(chosen.n_cpu_moe, shape.n_layers),
        n_expert=shape.n_expert,
        n_expert_used=shape.n_expert_used,
        n_params=shape.n_params,
        active_params=shape.active_params,
        gpu_read_bytes=chosen.read.gpu,
        cpu_read_bytes=chosen.read.cpu,
        placement=describe_placement(shape, ngl, chosen.n_cpu_moe),
        alternatives=_alternatives(shape, hardware, settings, margin) if suggest else [],
        vram_bytes=gpu.total_bytes,
        ram_bytes=cpu.total_bytes,
        gpu=gpu,
        cpu=cpu,
        fits_vram=fits_vram,
        fits_ram=fits_ram,
        **_speeds(gpu_speed.predict(chosen, shape, hardware, settings.n_threads)),
        tokens_per_second_spread=_decode_spread(chosen, shape, hardware, settings.n_threads),
        verdict=verdict,
        assumptions=_assumptions(shape, hardware, settings, margin),
        suggestions=[],
        warnings=_warnings(shape, settings),
    )
    result.placement_reason = _placement_reason(result, settings)
    if suggest and verdict in ("does_not_fit", "partial_offload"):
        result.suggestions = _suggestions(shape, model, hardware, settings, result, margin)
    return result


def fit_model(
    model: Path,
    hardware: HardwareClass,
    settings: RunSettings | None = None,
    tensor_bytes: Mapping[str, int] | None = None,
) -> FitResult:
    """Predict memory per device and decode speed for `model` on `hardware` (reads the header only).

    `tensor_bytes` overrides tensor sizes by name: a quantize plan's sizes, to fit a quant not yet made.
    """
    shape = model_shape(read_model(model), tensor_bytes)
    return fit_shape(shape, model, hardware, settings or RunSettings())


def _decode_spread(chosen: Placement, shape: ModelShape, hardware: HardwareClass, threads: int | None) -> float:
    """The ± a measured CPU class's standard errors give its roofline prediction (0 for catalog GPU classes)."""
    if gpu_speed.uses_catalog(hardware):
        return 0.0
    return tokens_per_second_spread(*roofline_devices(chosen.read, hardware, threads, shape))


def _speeds(p: gpu_speed.SpeedPrediction) -> dict[str, Any]:
    """The FitResult fields of a speed prediction: decode, pp512, and what each rests on."""
    return {"tokens_per_second": p.decode_ts, "prompt_tokens_per_second": p.prompt_ts,
            "speed_basis": p.decode_basis, "prompt_basis": p.prompt_basis}  # fmt: skip


def _warnings(shape: ModelShape, settings: RunSettings) -> list[str]:
    why = beyond_training(settings, shape.n_ctx_train)
    return [f"{why} ({shape.arch}.context_length)"] if why else []


def _assumptions(shape: ModelShape, hardware: HardwareClass, settings: RunSettings, margin: float) -> list[str]:
    rates = hardware.rates_for(settings.n_threads)
    catalog = gpu_speed.uses_catalog(hardware)
    notes = [
        gpu_speed.describe(hardware)
        if catalog
        else "decode speed (as llama-bench's tg128) is a roofline per device: the larger of the bytes read per token "
        "(every weight but the embedding table, and the KV cells attended to) over the bandwidth "
        f"(GPU {hardware.gpu_bandwidth_gbps:g} GB/s, RAM {hardware.ram_bandwidth_gbps:g} GB/s) and the matrix work "
        + (
            f"over the CPU compute rates measured at {hardware.measured_threads(settings.n_threads)} thread(s) "
            f"(-t {settings.n_threads or hardware.threads or '-'}; {hardware.measured}), plus "
            "the measured per-token overhead"
            if rates
            else "(no compute rates for this class: the prediction is an upper bound; `mm hw --measure` calibrates "
            "the local machine)"
        ),
        f"a safety margin of {margin:.0%} of VRAM and RAM is kept free",
        "the output layer counts as one layer: full offload is n_layers + 1, as llama.cpp counts it",
    ]
    if hardware.has_gpu:
        notes.append(f"{format_size(hardware.gpu_overhead_bytes)} of VRAM for the CUDA context and runtime")
    if hardware.has_gpu and not hardware.gpus and hardware.gpu_bandwidth_gbps == LOCAL_GPU_BANDWIDTH_GBPS:
        notes.append(
            f"a GPU given by its size alone reads {LOCAL_GPU_BANDWIDTH_GBPS:g} GB/s, a mid-range card's bandwidth "
            "(spec/hardware.py); --hardware CLASS (`mm hw`) or a class with gpus = [ID] (`mm hw --gpus`) uses "
            "the card's"
        )
    if shape.is_moe:
        notes.append(
            f"a token reads only {shape.n_expert_used} of {shape.n_expert} routed experts per layer (and all "
            "dense and shared weights); uneven expert use is not modelled"
            + ("" if catalog else ", nor the GPU-CPU hand-over of activations per layer whose experts are in RAM")
        )
        if hardware.has_gpu:
            notes.append(
                "with experts in RAM, prompt batches copy an expert tensor at a time to the GPU: its compute "
                "buffer is counted one largest expert tensor larger (an estimate, not checked on a GPU)"
            )
    if shape.n_swa and settings.swa_full:
        notes.append("sliding-window layers get a full-size KV cache (llama.cpp's default swa_full)")
    if any(shape.is_recurrent):
        notes.append(
            "recurrent (Mamba/RWKV) layers hold a fixed-size state per sequence instead of a KV cache; "
            "it is counted as kv and does not grow with the context"
        )
    if settings.use_mmap:
        notes.append("with mmap the CPU weights are file pages the OS may evict; they are counted as RAM")
    return notes


def _suggestions(
    shape: ModelShape, model: Path, hardware: HardwareClass, settings: RunSettings, current: FitResult, margin: float
) -> list[str]:
    """Settings that would fit more of the model: a smaller context, a lighter KV cache, a smaller ubatch."""
    tries: list[tuple[str, RunSettings]] = []
    if settings.n_ctx > 2048:
        tries.append((f"--ctx {settings.n_ctx // 2}", settings.model_copy(update={"n_ctx": settings.n_ctx // 2})))
    for kv in ("q8_0", "q4_0"):
        if kv != settings.kv_type and (settings.kv_type, kv) != ("q4_0", "q8_0"):
            tries.append(
                (f"--kv-type {kv} --flash-attn", settings.model_copy(update={"kv_type": kv, "flash_attn": True}))
            )
    if not settings.flash_attn:
        tries.append(("--flash-attn", settings.model_copy(update={"flash_attn": True})))
    if settings.n_ubatch > 128:
        tries.append(("--ubatch 128", settings.model_copy(update={"n_ubatch": 128})))
    out = []
    for flag, changed in tries:
        other = fit_shape(shape, model, hardware, changed, suggest=False, safety_margin=margin)
        better = other.n_gpu_layers > current.n_gpu_layers or (
            current.verdict == "does_not_fit" and other.verdict != "does_not_fit"
        )
        if better:
            out.append(f"{flag}: {other.n_gpu_layers}/{shape.n_layers + 1} layers on GPU, {other.verdict}")
    if current.verdict == "does_not_fit" or current.n_gpu_layers < shape.n_layers + 1:
        out.append("a lower quant: `mm fit MODEL --quants all` compares them")
    return out
