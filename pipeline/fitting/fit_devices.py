"""`mm fit --rpc/-ts`: the one-device fit result, re-planned across the devices of a run.

The devices are the RPC workers named by --rpc (asked for their free memory, as llama.cpp asks them), in
llama.cpp's order ahead of the hardware class's local GPU. The memory per device is
pipeline/fitting/multi.py's; everything the split does not change (model facts, settings) stays as
pipeline/fitting/fit.py found it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.fitting.fit import DEFAULT_SAFETY_MARGIN, DeviceBreakdown, FitResult, fit_context, fit_model, fit_shape
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.multi import Device, plan_devices
from pipeline.gguf.header import read_model
from pipeline.llama.rpc import Worker, query_workers
from pipeline.spec.devices import DEFAULT_LINK_GBPS, DEFAULT_LINK_LATENCY_MS, DeviceLayout
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings


def available_devices(hardware: HardwareClass, workers: Sequence[Worker] | None) -> list[Device]:
    """RPC devices first (as llama.cpp lists them): the running workers asked, else the class's
    `[[class.rpc]]` hosts (planning before the machines exist); then the class's GPU."""
    devices: list[Device] = []
    # Without a measured rate for a worker's device, it is assumed as fast as the class's own memory.
    remote_bandwidth = hardware.gpu_bandwidth_gbps or hardware.ram_bandwidth_gbps
    if workers is not None:
        remote = [(d.name, d.free_bytes, remote_bandwidth, DEFAULT_LINK_GBPS, DEFAULT_LINK_LATENCY_MS)
                  for w in workers for d in w.devices]  # fmt: skip
    else:
        remote = [(f"RPC{i}[{h.endpoint}]", size, h.device_bandwidth_gbps or remote_bandwidth, h.bandwidth_gbps,
                   h.latency_ms) for h in hardware.rpc for i, size in enumerate(h.devices_bytes)]  # fmt: skip
    for name, free, bandwidth, link, latency in remote:
        # llama.cpp's own device name counts over every worker: RPC0, RPC1, ...
        devices.append(Device(name, free, bandwidth, link, latency, aliases=(f"RPC{len(devices)}",), remote=True))
    cards = hardware.devices if hardware.has_gpu else ()
    for i, card in enumerate(cards):  # a class of catalog GPUs: each card, in llama.cpp's order
        free = card.usable_bytes - hardware.gpu_overhead_bytes
        devices.append(Device(f"GPU{i}", free, card.bandwidth_gbps, aliases=(f"CUDA{i}",), gpu=card,
                              calibration=hardware.gpu_calibration))  # fmt: skip
    if hardware.has_gpu and not cards:  # a class given by sizes: one GPU
        free = hardware.vram_bytes - hardware.gpu_overhead_bytes
        devices.append(Device("GPU0", free, hardware.gpu_bandwidth_gbps, aliases=("CUDA0",)))
    return devices


def fit_across(
    model: Path, hardware: HardwareClass, settings: RunSettings, layout: DeviceLayout,
    workers: Sequence[Worker] | None = None, safety_margin: float = DEFAULT_SAFETY_MARGIN,
) -> FitResult:  # fmt: skip
    """fit_model across the layout's devices: `devices` in the result, with the split and why."""
    shape = model_shape(read_model(model))
    base = fit_shape(shape, model, hardware, settings, suggest=False, safety_margin=safety_margin)
    if layout.rpc:
        found = list(workers) if workers is not None else query_workers(layout.rpc)
    else:  # the class's [[class.rpc]] hosts, if any, are the run's workers
        found = None
        layout = layout.model_copy(update={"rpc": [h.endpoint for h in hardware.rpc]})
    k = shape.n_layers if settings.cpu_moe else (settings.n_cpu_moe or 0)
    devices, plan = plan_devices(
        shape, fit_context(shape, settings), available_devices(hardware, found), layout,
        n_gpu_layers=settings.n_gpu_layers, n_cpu_moe=k, safety_margin=safety_margin,
        ram_bandwidth_gbps=hardware.ram_bandwidth_gbps,
    )  # fmt: skip
    gpu = DeviceBreakdown(
        weights_bytes=sum(d.weights_bytes for d in devices), kv_bytes=sum(d.kv_bytes for d in devices),
        output_bytes=0, compute_bytes=sum(d.compute_bytes for d in devices), overhead_bytes=0,
        total_bytes=sum(d.total_bytes for d in devices),
    )  # fmt: skip
    h = plan.host
    cpu = DeviceBreakdown(
        weights_bytes=h.weights_bytes, kv_bytes=h.kv_bytes, output_bytes=h.output_bytes,
        compute_bytes=h.compute_bytes, overhead_bytes=0, total_bytes=h.total_bytes,
    )  # fmt: skip
    fits_ram = h.total_bytes <= hardware.ram_bytes * (1 - safety_margin)
    full = plan.n_gpu_layers == shape.n_layers + 1 and k == 0
    verdict = (
        "does_not_fit" if not (plan.fits and fits_ram)
        else "cpu_only" if plan.n_gpu_layers == 0 else "full_offload" if full else "partial_offload"
    )  # fmt: skip
    notes = [
        f"split: {plan.split_reason}",
        "layer split decodes the devices in turn: each device's time (bytes read over its bandwidth; an RPC "
        "worker's device is assumed as fast as this class's memory) plus a hand-over per device boundary "
        f"(n_embd activations per token; {plan.handover_ms:g} ms per token here) and the logits back to the host",
        "row split (-sm row), RDMA links and uneven links between workers are not modelled",
    ]
    return base.model_copy(
        update={
            "devices": devices, "split": plan, "n_gpu_layers": plan.n_gpu_layers, "vram_bytes": gpu.total_bytes,
            "ram_bytes": h.total_bytes, "gpu": gpu, "cpu": cpu, "fits_vram": plan.fits, "fits_ram": fits_ram,
            "verdict": verdict, "tokens_per_second": plan.tokens_per_second, "alternatives": [],
            "placement_reason": "", "assumptions": notes + base.assumptions,
        }
    )  # fmt: skip


def fit_for(model: Path, hardware: HardwareClass, settings: RunSettings) -> FitResult:
    """fit_across the settings' device layout (the --rpc/-ts flags; a class's [[class.rpc]] hosts), else the
    one-GPU fit_model."""
    layout = settings.devices if settings.devices is not None else DeviceLayout() if hardware.rpc else None
    return fit_across(model, hardware, settings, layout) if layout is not None else fit_model(model, hardware, settings)
