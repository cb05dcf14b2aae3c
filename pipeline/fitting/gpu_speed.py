"""Decode and prompt speed of a placement on a hardware class: the calibrated model per catalog GPU, else
speed.py's roofline (CPU-only classes, and classes given by VRAM size and bandwidth alone).

Decode, per token (llama-bench's tg):

    GPU  bytes read / (datasheet bandwidth x the backend's efficiency for their type)
         + token_ms + layer_ms per repeating layer on the GPU               (calibrated, gpus.toml [calibrations])
    CPU  max(bytes read / (RAM bandwidth x CPU_RAM_EFFICIENCY), matrix work / (cores x CPU_CORE_GFLOPS x the
         kernel factor of its weight type, gpus.toml [cpu_kernels]))
         + the GPU's layer_ms per layer on the CPU (or the class's measured CPU rates, `mm hw --measure`)
    plus HANDOVER_MS each time a token's activations cross between the CPU and a GPU (once for a dense model
    split by layers; twice per layer whose routed experts are in RAM) and between two GPUs.
    CPU_RAM_EFFICIENCY (0.60) and HANDOVER_MS (0.105 ms) are fitted to public hybrid runs; their sources are stated
    where they are defined, and bench/gpu_public.py prints the fit and a held-back split.

Prompt (llama-bench's pp512): matrix work per token / (fp16 TFLOPS x the backend's prompt efficiency, or the
card's board power x the backend's TFLOP/s per watt where that is lower: prompt_tflops), on the
GPU even for weights kept in RAM: llama.cpp copies them to the GPU for a large batch (ggml-backend.cpp,
ggml_backend_sched's offload of ops with batch >= 32), which costs their bytes over the host link per ubatch.

What each figure rests on is returned with it (`basis`): a measured class, the calibrated catalog, or the
datasheet alone (a class given as `vram` and `gpu_bandwidth_gbps` without catalog ids: an upper bound).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.fitting.cpu_speed import cpu_rates, roofline_devices
from pipeline.fitting.graph_ops import decode_ops, state_elements
from pipeline.fitting.model_shape import ModelShape
from pipeline.fitting.placement import Placement
from pipeline.fitting.speed import (
    FLOPS_PER_ELEMENT,
    DeviceRates,
    DeviceWork,
    compute_seconds,
    device_seconds,
    tokens_per_second,
)
from pipeline.gguf.ggml_types import block_size
from pipeline.spec.gpus import Calibration, Gpu, calibration, cpu_kernel_factors
from pipeline.spec.hardware import HardwareClass

# CPU side of a hybrid run on a class that was not measured: the share of the class's stated RAM bandwidth that
# llama.cpp's CPU layers reach while a GPU holds the rest. Fitted together with HANDOVER_MS (bench/gpu_public.py
# --fit) to the calibration split's public hybrid runs on two machines: Qwen2.5-Coder-14B Q4_K_M at -ngl 16 and 32
# on an RTX 5060 Ti with dual-channel DDR4-2400 (inventivehq.com/blog/vram-offload-cliff-gpu-layers-benchmark), and
# Qwen3-14B at -ngl 32 and Qwen3-30B-A3B with --n-cpu-moe 36 on an RTX 2080 with quad-channel DDR4-3200 (llmfit
# pulls 774, 755), each on the decode basis (bench/gpu_public.py's REQUEST_AVERAGE_SHARE for llmfit's request
# averages).
CPU_RAM_EFFICIENCY = 0.60
# Matrix-vector work per core on Q5_K: Llama-3.1-8B Q5_K decode at 2 threads on a Zen 3 (AVX2) Ryzen 5975WX,
# 4.04 tokens/s x 15 GFLOP per token / 2 cores (ikawrakow/ik_llama.cpp pull #132, the Q5_K_R4 pull: its TG table's
# header says Q6_K, but its rows are not pull #130's Q6_K rows (4.75 at 2 threads) and the pull repacks Q5_K; the
# column is ik_llama.cpp's own Q5_K kernel, not mainline's). Other types run at this times their factor in gpus.toml
# [cpu_kernels] (the same rate ratios `mm hw --measure` finds on one CPU).
CPU_CORE_GFLOPS = 30.0
CPU_CORE_TYPE = "Q5_K"  # the type CPU_CORE_GFLOPS was measured on: gpus.toml [cpu_kernels] reference
# One crossing of a token's activations between the CPU and a GPU, or between two GPUs: a copy of n_embd floats, a
# stream synchronisation and the CPU thread pool's wake-up (ggml_backend_sched splits). Fitted with
# CPU_RAM_EFFICIENCY above; only a run with experts in RAM identifies it (72 crossings per token for Qwen3-30B-A3B
# with --n-cpu-moe 36, where a dense model split by layers crosses once).
HANDOVER_MS = 0.105
# Prompt batches: llama.cpp's default ubatch, over which weights copied from RAM are reused.
PROMPT_UBATCH = 512
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})

MEASURED, CALIBRATED, DATASHEET = "measured class", "calibrated catalog", "datasheet only"


@dataclass(frozen=True)
class SpeedPrediction:
    decode_ts: float
    prompt_ts: float | None  # None: not predicted (no GPU compute figure for this class)
    decode_basis: str
    prompt_basis: str


def uses_catalog(hardware: HardwareClass) -> bool:
    """Whether the calibrated model applies: a class with GPUs from the catalog, even with its VRAM set to 0
    (`--vram 0`: its CPU side is then costed the same way, so the two placements compare fairly); else
    speed.py's roofline."""
    return bool(hardware.gpus)


def float_share(elements: Mapping[str, int]) -> float:
    """The share of a token's weight bytes that are float (F16/BF16/F32) rather than quantized."""
    by_type = {kind: count * block_size(kind)[1] / block_size(kind)[0] for kind, count in elements.items()}
    total = sum(by_type.values())
    return sum(v for k, v in by_type.items() if k.upper() in FLOAT_TYPES) / total if total else 0.0


def _calibration(gpu: Gpu, measured: Calibration | None = None) -> Calibration:
    """The card's measured calibration, else the catalog's, else datasheet figures with no overheads."""
    return measured or calibration(gpu) or Calibration(
        decode_efficiency_quant=1, decode_efficiency_float=1, token_ms=0, layer_ms=0,
        prompt_efficiency_quant=1, prompt_efficiency_float=1, source="datasheet",
    )  # fmt: skip


def _shares(devices: tuple[Gpu, ...]) -> list[float]:
    """How llama.cpp splits layers between GPUs by default: in proportion to their memory (--tensor-split)."""
    total = sum(d.usable_bytes for d in devices)
    return [d.usable_bytes / total for d in devices]


def gpu_layers(shape: ModelShape, n_gpu_layers: int) -> int:
    """Repeating layers on the GPU(s): -ngl counts the output layer first (llama.cpp's layer n_layer)."""
    return max(0, min(n_gpu_layers, shape.n_layers + 1) - 1)


def gpu_decode_seconds(
    bytes_read: int, elements: Mapping[str, int], layers: int, devices: tuple[Gpu, ...], measured: Calibration | None
) -> float:
    """A token's time on the GPUs: each card reads its share of the bytes at its calibrated bandwidth and
    pays its per-layer overhead; the per-token overhead once, and a hand-over between consecutive cards."""
    if not devices or (not bytes_read and not layers):
        return 0.0
    fraction = float_share(elements)
    seconds = max(_calibration(d, measured).token_ms for d in devices) / 1e3 + HANDOVER_MS * (len(devices) - 1) / 1e3
    for gpu, share in zip(devices, _shares(devices), strict=True):
        cal = _calibration(gpu, measured)
        per_byte = (1 - fraction) / cal.decode_efficiency_quant + fraction / cal.decode_efficiency_float
        seconds += bytes_read * share * per_byte / (gpu.bandwidth_gbps * 1e9) + cal.layer_ms * layers * share / 1e3
    return seconds


def cpu_decode_seconds(placement: Placement, shape: ModelShape, hardware: HardwareClass, threads: int | None) -> float:
    """A token's time on the CPU side: measured rates where the class has them, else its parts."""
    read = placement.read
    if not read.cpu:
        return 0.0
    work = DeviceWork(read.cpu, read.cpu_elements)
    measured = cpu_rates(hardware, threads)
    if measured is not None:
        ram, overhead = measured
        cpu_layers = shape.n_layers - gpu_layers(shape, placement.n_gpu_layers)
        head_on_cpu = placement.n_gpu_layers == 0  # the logits are written out where the output layer runs
        n_vocab = shape.n_vocab if head_on_cpu else 0
        n_state = state_elements(shape, cpu_layers)
        return device_seconds(work, ram) + overhead.seconds(decode_ops(shape, cpu_layers), n_vocab, n_state)
    memory = read.cpu / (hardware.ram_bandwidth_gbps * CPU_RAM_EFFICIENCY * 1e9)
    compute = compute_seconds(work, cpu_kernel_rates(threads or hardware.cpu_cores or 0))
    # A layer on the CPU runs the same graph nodes, each ending in a thread barrier: it is given the GPU's
    # per-layer cost (an assumption; a measured class has its own).
    layers = shape.n_layers - gpu_layers(shape, placement.n_gpu_layers)
    per_layer = _calibration(hardware.devices[0], hardware.gpu_calibration).layer_ms if hardware.devices else 0.0
    return max(memory, compute) + per_layer * layers / 1e3


def cpu_kernel_rates(cores: int) -> DeviceRates:
    """An unmeasured CPU's matrix-vector rates per type: CPU_CORE_GFLOPS per core on the reference type, times
    each type's kernel factor (a type without one takes its sibling's, speed.py's SIBLING; none: no compute term)."""
    if not cores:
        return DeviceRates(0.0)
    return DeviceRates(0.0, gflops={kind: cores * CPU_CORE_GFLOPS * f for kind, f in cpu_kernel_factors().items()})


def handovers(shape: ModelShape, placement: Placement) -> int:
    """Crossings between the CPU and the GPU per token: into the first GPU layer after CPU layers, and out to
    and back from the CPU for each GPU layer whose routed experts stay in RAM."""
    n = shape.n_layers
    start = n + 1 - max(0, min(placement.n_gpu_layers, n + 1))
    if start > n:
        return 0
    held = max(0, min(placement.n_cpu_moe, n) - start) if shape.is_moe else 0
    return (1 if start > 0 else 0) + 2 * held


def decode_tokens_per_second(
    placement: Placement, shape: ModelShape, hardware: HardwareClass, threads: int | None = None
) -> float:
    """llama-bench's tg128 for a placement: the calibrated model on a class of catalog GPUs, else speed.py's
    roofline over what a token reads and multiplies on each device (only the active experts)."""
    if not uses_catalog(hardware):
        return tokens_per_second(*roofline_devices(placement.read, hardware, threads, shape))
    read, devices = placement.read, hardware.devices
    layers = gpu_layers(shape, placement.n_gpu_layers)
    seconds = gpu_decode_seconds(read.gpu, read.gpu_elements, layers, devices, hardware.gpu_calibration)
    seconds += cpu_decode_seconds(placement, shape, hardware, threads)
    seconds += HANDOVER_MS * handovers(shape, placement) / 1e3
    return round(1.0 / seconds, 2) if seconds > 0 else 0.0


def prompt_tokens_per_second(placement: Placement, shape: ModelShape, hardware: HardwareClass) -> float | None:
    """llama-bench's pp512: every matrix product on the GPUs (weights in RAM copied over per ubatch)."""
    devices = hardware.devices
    if not devices or placement.n_gpu_layers == 0:
        return None
    elements: dict[str, int] = dict(placement.read.gpu_elements)
    for kind, count in placement.read.cpu_elements.items():
        elements[kind] = elements.get(kind, 0) + count
    flops, fraction = FLOPS_PER_ELEMENT * sum(elements.values()), float_share(elements)
    seconds = 0.0
    for gpu, share in zip(devices, _shares(devices), strict=True):
        cal = _calibration(gpu, hardware.gpu_calibration)
        quant, floats = prompt_tflops(gpu, cal)
        seconds += flops * share * ((1 - fraction) / quant + fraction / floats) / 1e12
    copied = max(0, placement.cpu.weights - shape.input_bytes)  # the token embeddings stay on the CPU
    link = devices[0].pcie_gbps
    if copied and link and not devices[0].unified:
        seconds += copied / (link * 1e9) / PROMPT_UBATCH
    return round(1.0 / seconds, 1) if seconds > 0 else None


def prompt_tflops(gpu: Gpu, cal: Calibration) -> tuple[float, float]:
    """Matrix throughput a card sustains in pp512 on quantized and on float weights: its datasheet figure times
    llama.cpp's share, unless its board power holds it lower (cards with many SMs and a low power limit, such as
    the RTX 6000 Ada at 300 W, clock down under sustained tensor load)."""
    quant, floats = gpu.fp16_tflops * cal.prompt_efficiency_quant, gpu.fp16_tflops * cal.prompt_efficiency_float
    if gpu.board_power_w and cal.prompt_tflops_per_watt_quant:
        quant = min(quant, gpu.board_power_w * cal.prompt_tflops_per_watt_quant)
    if gpu.board_power_w and cal.prompt_tflops_per_watt_float:
        floats = min(floats, gpu.board_power_w * cal.prompt_tflops_per_watt_float)
    return quant, floats


def describe(hardware: HardwareClass) -> str:
    """The decode and prompt model in words, with this class's figures (fit's first assumption)."""
    cards = ", ".join(f"{d.id} ({d.bandwidth_gbps:g} GB/s, {d.fp16_tflops:g} FP16 TFLOPS, {d.calibration})"
                      for d in hardware.devices)  # fmt: skip
    source = "this machine's `mm hw --measure`" if hardware.gpu_calibration else "public llama-bench runs"
    cpu = f"{hardware.cpu_cores} cores" if hardware.cpu_cores else "cores unknown: RAM bandwidth only"
    return (
        f"decode (tg128) and prompt (pp512) speed on {cards}: datasheet bandwidth and FP16 throughput times the "
        "share llama.cpp reaches on that kind of card (prompt: at most what its board power sustains), plus a "
        f"per-layer cost, calibrated on {source} "
        f"(bench/gpu_public.py); the CPU side at {hardware.ram_bandwidth_gbps:g} GB/s x {CPU_RAM_EFFICIENCY:g} and "
        f"{CPU_CORE_GFLOPS:g} GFLOP/s per core on Q5_K, other types at llama.cpp's kernel ratios ({cpu}), plus "
        f"{HANDOVER_MS:g} ms per hand-over between devices "
        "(fitted to public hybrid runs)"
    )


def predict(
    placement: Placement, shape: ModelShape, hardware: HardwareClass, threads: int | None = None
) -> SpeedPrediction:
    """Decode and prompt speed with what each rests on."""
    decode = decode_tokens_per_second(placement, shape, hardware, threads)
    if not uses_catalog(hardware):
        measured = hardware.rates_for(threads) is not None and not hardware.has_gpu
        return SpeedPrediction(decode, None, MEASURED if measured else DATASHEET, "")
    calibrated = all(calibration(d) for d in hardware.devices)
    basis = MEASURED if hardware.gpu_calibration else CALIBRATED if calibrated else DATASHEET
    if placement.read.cpu and hardware.rates_for(threads) is not None:
        basis = f"{basis}; CPU side: {MEASURED}"
    return SpeedPrediction(
        decode_ts=decode,
        prompt_ts=prompt_tokens_per_second(placement, shape, hardware),
        decode_basis=basis,
        prompt_basis=MEASURED if hardware.gpu_calibration else CALIBRATED if calibrated else DATASHEET,
    )
