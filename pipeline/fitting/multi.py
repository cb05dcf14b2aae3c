"""Fitting a model across several devices: the split, each device's verdict, and decode speed with hand-overs.

The devices are local GPUs and RPC workers (asked for their free memory, as llama.cpp asks them); the buffers
per device come from pipeline/fitting/devices.py. Without `-ts` the split is llama.cpp's own default,
proportional to each device's free memory, so the plan shows what llama.cpp will do when run the same way.

Decode with a layer split runs the devices one after another: a token's time is the sum of each device's
time (the roofline of pipeline/fitting/speed.py over the bytes its layers read) plus a hand-over at every
device boundary, where n_embd float32 activations cross the link (PCIe between local GPUs; the network for
an RPC worker, with its latency, since each boundary is a round trip per token), and the logits
(n_vocab floats) come back to the host. Row split is not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from pipeline.base.errors import FitError
from pipeline.base.units import format_size
from pipeline.fitting.devices import DeviceSplit, check_split_mode, split_devices
from pipeline.fitting.gpu_speed import HANDOVER_MS, gpu_decode_seconds
from pipeline.fitting.memory import F32, Context, DeviceBuffers, kv_per_layer
from pipeline.fitting.model_shape import ModelShape
from pipeline.fitting.speed import DeviceRates, DeviceWork, attention_cells, token_seconds
from pipeline.spec.devices import PCIE_GBPS, DeviceLayout
from pipeline.spec.gpus import Calibration, Gpu, calibration


@dataclass(frozen=True)
class Device:
    """One device a run can use: its name as llama.cpp reports buffers, free memory, and the link to the host."""

    name: str
    free_bytes: int
    bandwidth_gbps: float  # its memory bandwidth (0: unknown, no time counted)
    link_gbps: float = PCIE_GBPS
    link_latency_ms: float = HANDOVER_MS  # between local GPUs: gpu_speed's hand-over
    aliases: tuple[str, ...] = ()  # other names --device accepts (llama.cpp's own: RPC0, CUDA0)
    remote: bool = False  # an RPC worker: every token crosses the network to it and back
    gpu: Gpu | None = None  # a catalog card: its calibrated decode (fitting/gpu_speed.py) instead of the roofline
    calibration: Calibration | None = None  # the class's own measured calibration, if any


class DeviceFit(BaseModel):
    """One device's share of the model, in llama.cpp's device order."""

    name: str
    layers: int  # repeating layers it holds
    output_layer: bool  # the output head is here
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int
    free_bytes: int
    fits: bool


class HostFit(BaseModel):
    """What stays on the host running llama.cpp: the input layer, layers not offloaded, logits, inputs."""

    weights_bytes: int
    kv_bytes: int
    output_bytes: int
    compute_bytes: int
    total_bytes: int


class DevicesPlan(BaseModel):
    """How the model is split across the devices (their shares are DeviceFit, listed beside this)."""

    host: HostFit
    n_gpu_layers: int
    tensor_split: list[float]  # the proportions used (given, or proposed)
    split_reason: str
    layout: DeviceLayout  # the flags that reproduce this plan in llama.cpp (with the proposed split)
    tokens_per_second: float
    handover_ms: float  # per token, all boundaries together
    fits: bool


def select_devices(available: Sequence[Device], layout: DeviceLayout) -> list[Device]:
    """--device and -sm none/-mg, as llama.cpp applies them to its device list."""
    check_split_mode(layout.split_mode)
    chosen = list(available)
    if layout.devices:
        names = {n: d for d in available for n in (d.name, *d.aliases)}
        unknown = [n for n in layout.devices if n not in names]
        if unknown:
            raise FitError(
                f"no device named {', '.join(unknown)}; known: {', '.join(d.name for d in available)}",
                param="device",
            )
        chosen = [names[n] for n in layout.devices]
    if layout.split_mode == "none":
        if layout.main_gpu >= len(chosen):
            raise FitError(
                f"main GPU {layout.main_gpu}: there are only {len(chosen)} devices (counted from 0)", param="main_gpu"
            )
        chosen = [chosen[layout.main_gpu]]
    if not chosen:
        raise FitError(
            "no devices to split the model over",
            hint="name RPC workers (HOST:PORT) or plan for a hardware class with a GPU",
        )
    return chosen


def plan_devices(
    shape: ModelShape, ctx: Context, available: Sequence[Device], layout: DeviceLayout, *,
    n_gpu_layers: int | None = None, n_cpu_moe: int = 0, safety_margin: float = 0.05,
    ram_bandwidth_gbps: float = 0.0,
) -> tuple[list[DeviceFit], DevicesPlan]:  # fmt: skip
    """Each device's buffers for `layout`'s split (or llama.cpp's default), whether each fits, and the split."""
    devices = select_devices(available, layout)
    if layout.tensor_split is not None:
        if len(layout.tensor_split) > len(devices):
            raise FitError(
                f"-ts has {len(layout.tensor_split)} shares for {len(devices)} devices "
                f"({', '.join(d.name for d in devices)})",
                param="tensor_split",
            )
        shares = [*layout.tensor_split, *[0.0] * (len(devices) - len(layout.tensor_split))]
        reason = "the split given (-ts)"
    else:
        shares = [float(d.free_bytes) for d in devices]
        reason = (
            "no -ts: proportional to each device's free memory, as llama.cpp splits by default ("
            + ", ".join(f"{d.name} {format_size(d.free_bytes)}" for d in devices)
            + ")"
        )
    # llama.cpp pipelines the devices (several copies of each split's inputs) when every layer is offloaded,
    # the split is by layer and no tensor is overridden (llama-context.cpp)
    copies = 4 if len(devices) > 1 and n_cpu_moe == 0 else 1
    total_layers = shape.n_layers + 1
    candidates = [min(n_gpu_layers, total_layers)] if n_gpu_layers is not None else range(total_layers, -1, -1)
    split = None
    for ngl in candidates:
        # a layout across devices runs in llama-server (registry/run_server.py): one row of logits per sequence
        copies_now = copies if ngl == total_layers else 1
        split = split_devices(shape, ctx, ngl, shares, n_cpu_moe, copies_now, n_outputs=ctx.n_seq)
        if all(b.total <= d.free_bytes * (1 - safety_margin) for b, d in zip(split.devices, devices, strict=True)):
            break
    assert split is not None
    ngl = sum(1 for d in split.layers if d is not None)
    if n_gpu_layers is None and ngl < total_layers:
        reason += f"; only {ngl} of {total_layers} layers fit, the rest stay on the host"
    fits = [b.total <= d.free_bytes * (1 - safety_margin) for b, d in zip(split.devices, devices, strict=True)]
    seconds, handover = decode_seconds(shape, ctx, split, devices, n_cpu_moe, ram_bandwidth_gbps)
    counts = split.layer_counts()
    fitted = [
        _device_fit(d, b, counts[i], split.layers[-1] == i, fits[i])
        for i, (b, d) in enumerate(zip(split.devices, devices, strict=True))
    ]
    return fitted, DevicesPlan(
        host=HostFit(
            weights_bytes=split.host.weights,
            kv_bytes=split.host.kv,
            output_bytes=split.host.output,
            compute_bytes=split.host.compute,
            total_bytes=split.host.total,
        ),
        n_gpu_layers=ngl,
        tensor_split=[round(s, 6) for s in shares],
        split_reason=reason,
        # every offloaded layer, the output one included, counted per device: -ts with these counts makes
        # llama.cpp's rule give each device exactly these layers
        layout=layout.model_copy(
            update={"tensor_split": [float(sum(1 for d in split.layers if d == i)) for i in range(len(devices))]}
        ),
        tokens_per_second=round(1 / seconds, 2) if seconds > 0 else 0.0,
        handover_ms=round(handover * 1e3, 3),
        fits=all(fits),
    )


def _trip(device: Device, n_floats: int) -> float:
    """Seconds to move `n_floats` float32 activations over the device's link."""
    return device.link_latency_ms / 1e3 + n_floats * F32 / (device.link_gbps * 1e9)


def _device_fit(device: Device, buffers: DeviceBuffers, layers: int, output: bool, fits: bool) -> DeviceFit:
    return DeviceFit(
        name=device.name,
        layers=layers,
        output_layer=output,
        weights_bytes=buffers.weights,
        kv_bytes=buffers.kv,
        compute_bytes=buffers.compute,
        total_bytes=buffers.total,
        free_bytes=device.free_bytes,
        fits=fits,
    )


def decode_seconds(
    shape: ModelShape, ctx: Context, split: DeviceSplit, devices: Sequence[Device], n_cpu_moe: int,
    ram_bandwidth_gbps: float,
) -> tuple[float, float]:  # fmt: skip
    """(seconds per decoded token, of which hand-overs): devices in turn, plus a trip over the link at each
    device boundary (and to and from a worker)."""
    kv = kv_per_layer(shape, ctx)
    full, swa = ctx.stream_cells
    experts = shape.expert_bytes or (0,) * shape.n_layers
    read = [0.0] * (len(devices) + 1)  # the host last
    for il, dev in enumerate(split.layers[:-1]):
        cells = swa if shape.is_swa[il] else full
        kv_read = kv[il] * attention_cells(cells) // max(cells, 1) if not shape.is_recurrent[il] else kv[il]
        dense = shape.layer_bytes[il] - experts[il] + kv_read
        active = experts[il] * shape.active_fraction
        read[len(devices) if dev is None else dev] += dense + (0 if il < n_cpu_moe else active)
        read[len(devices)] += active if il < n_cpu_moe and dev is not None else 0
    out = split.layers[-1]
    read[len(devices) if out is None else out] += shape.output_bytes + shape.tied_bytes
    rates = [DeviceRates(d.bandwidth_gbps) for d in devices] + [DeviceRates(ram_bandwidth_gbps)]
    works = [DeviceWork(int(r)) for r in read]
    roofline = [(w, rate) for w, rate, d in zip(works, rates, [*devices, None], strict=True) if not (d and d.gpu)]
    compute = token_seconds(roofline)
    counts = split.layer_counts()
    token_ms = 0.0
    for i, device in enumerate(devices):
        if device.gpu is not None and (read[i] or counts[i]):
            # the card's calibrated time; its per-token overhead (graph launch) is paid once, below
            cal = device.calibration or calibration(device.gpu)
            card_ms = cal.token_ms if cal else 0.0
            compute += gpu_decode_seconds(int(read[i]), {}, counts[i], (device.gpu,), device.calibration)
            compute -= card_ms / 1e3
            token_ms = max(token_ms, card_ms)
    compute += token_ms / 1e3
    handover = 0.0
    previous: Device | None = None  # the host holds the input layer
    for index in [d for i, d in enumerate(split.layers) if d is not None and (i == 0 or split.layers[i - 1] != d)]:
        device = devices[index]
        # host -> local GPU and back is a one-GPU run's own cost; a worker, or a second device, adds a trip
        if previous is not None or device.remote:
            handover += _trip(device, shape.n_embd)
        if previous is not None and previous.remote:  # between two workers the activations pass the host
            handover += _trip(previous, shape.n_embd)
        previous = device
    if previous is not None and previous.remote:  # the logits come back to the host
        handover += _trip(previous, shape.n_vocab)
    return compute + handover, handover
