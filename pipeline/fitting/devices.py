"""The memory model across several devices: which layers each device holds and the buffers it allocates.

llama-model.cpp load_tensors splits the offloaded layers by the tensor-split proportions (`-ts`, or every
device's free memory when none is given): the cumulative shares, normalized in float32, are split points,
and offloaded layer k of n goes to the first device whose split point exceeds k / n (std::upper_bound).
The output layer counts as layer n_layer (so it lands on the last device that gets layers), the input
layer (token embeddings) stays on the host, and a tied output head is a copy of token_embd on the output
layer's device (TENSOR_DUPLICATED). Each layer's KV cache lives on its layer's device (offload_kqv).
`--n-cpu-moe K` keeps the routed experts of layers 0..K-1 in RAM whichever device holds the rest.

Devices are in llama.cpp's order: RPC workers first, in `--rpc` order (llama.cpp puts them at the front
of the list to minimize network transfers, src/llama.cpp), then local GPUs. Row split (`-sm row`) splits
each matrix across devices instead and is not modelled.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.base.errors import FitError
from pipeline.fitting.memory import (
    F32,
    Context,
    DeviceBuffers,
    compute_buffer_bytes,
    ffn_width,
    kv_per_layer,
    output_buffer_bytes,
)
from pipeline.fitting.model_shape import ModelShape


def _f32(x: float) -> float:
    """x rounded to a C float: llama.cpp computes the split points in float32."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def split_points(proportions: Sequence[float]) -> list[float]:
    """llama-model.cpp: the running sums of the proportions, each divided by the total (all in float32)."""
    if len(proportions) == 0 or any(p < 0 for p in proportions) or not any(proportions):
        raise FitError(
            f"tensor split {list(proportions)} gives no device any layers", hint="e.g. -ts 1,1", param="tensor_split"
        )
    sums, total = [], 0.0
    for p in proportions:
        total = _f32(total + _f32(p))
        sums.append(total)
    return [_f32(s / total) for s in sums]


def layer_devices(n_layers: int, n_gpu_layers: int, proportions: Sequence[float]) -> tuple[int | None, ...]:
    """The device index of layers 0..n_layers (the last is the output layer); None is the host (CPU)."""
    points = split_points(proportions)
    act = min(n_gpu_layers, n_layers + 1)
    start = max(n_layers + 1 - n_gpu_layers, 0)
    out: list[int | None] = []
    for il in range(n_layers + 1):
        if il < start or il - start >= act:
            out.append(None)
            continue
        # std::upper_bound(splits, float(il - i_gpu_start) / act_gpu_layers): first point > x
        out.append(min(bisect.bisect_right(points, _f32((il - start) / act)), len(points) - 1))
    return tuple(out)


@dataclass(frozen=True)
class DeviceSplit:
    """Buffers per device (llama.cpp's device order) and on the host, and which device holds each layer."""

    devices: tuple[DeviceBuffers, ...]
    host: DeviceBuffers
    layers: tuple[int | None, ...]  # per layer 0..n_layers (the output layer last); None = host

    def layer_counts(self) -> list[int]:
        """Repeating layers per device (the output layer apart)."""
        return [sum(1 for d in self.layers[:-1] if d == i) for i in range(len(self.devices))]


def split_devices(
    shape: ModelShape, ctx: Context, n_gpu_layers: int, proportions: Sequence[float], n_cpu_moe: int = 0,
    pipeline_copies: int = 1, n_outputs: int | None = None,
) -> DeviceSplit:  # fmt: skip
    """Per device the weights, KV cache and compute buffer llama.cpp allocates for this split."""
    n = shape.n_layers
    where = layer_devices(n, n_gpu_layers, proportions)
    n_dev = len(proportions)
    kv = kv_per_layer(shape, ctx)
    experts = shape.expert_bytes or (0,) * n
    weights, kvs = [0] * n_dev, [0] * n_dev
    host_w, host_kv = shape.input_bytes, 0
    for il in range(n):
        dev = where[il]
        held = experts[il] if il < n_cpu_moe else 0
        if dev is None:
            host_w += shape.layer_bytes[il]
            host_kv += kv[il]
        else:
            weights[dev] += shape.layer_bytes[il] - held
            host_w += held
            kvs[dev] += kv[il]
    out_dev = where[n]
    if out_dev is None:
        host_w += shape.output_bytes  # a tied head on the host is token_embd itself (no copy)
    else:
        weights[out_dev] += shape.output_bytes + shape.tied_bytes
    computes = device_compute_bytes(shape, ctx, where, n_dev, pipeline_copies, n_outputs)
    devices = tuple(DeviceBuffers(weights[i], kvs[i], 0, computes[i]) for i in range(n_dev))
    used = any(d is not None for d in where)
    host_compute = (2 * shape.n_embd + shape.n_vocab) * ctx.n_ubatch * F32 if used else compute_buffer_bytes(shape, ctx)
    host = DeviceBuffers(host_w, host_kv, output_buffer_bytes(shape, ctx), host_compute)
    return DeviceSplit(devices, host, where)


def device_compute_bytes(
    shape: ModelShape, ctx: Context, where: Sequence[int | None], n_dev: int, pipeline_copies: int = 1,
    n_outputs: int | None = None,
) -> list[int]:  # fmt: skip
    """Each device's compute buffer: the inputs handed to it and the largest phase it runs.

    A device receives the activations from the device (or host) before it and, if it holds layers, the
    attention masks; with pipeline parallelism ggml-backend.cpp keeps `pipeline_copies` (4) copies of each
    such input alive for the whole graph. On top of them: a layer's attention (the scores without flash
    attention) or FFN, and on the output layer's device the logits. The one-device phase widths are
    memory.compute_buffer_bytes'; the extra rows (an activation per layer boundary inside the device, the
    logits stacked above the last layer's leftovers) were measured on RPC workers (tests/test_rpc.py).

    `n_outputs` is how many rows of logits the graph is reserved for: llama-server asks for one per sequence
    (server-context.cpp sets n_outputs_max to n_parallel), a library caller for the whole ubatch (None).
    """
    u, row = ctx.n_ubatch, ctx.n_ubatch * F32
    outputs = min(u, n_outputs) if n_outputs is not None else u
    kinds = [ctx.stream_cells[1] if swa else ctx.stream_cells[0] for swa in sorted(set(shape.is_swa))]
    masks = sum(n_kv * u * (2 if ctx.flash_attn else F32) for n_kv in kinds)
    q_width = shape.n_head * shape.head_dim_k
    kv_width = max(shape.n_head_kv) * shape.head_dim_k
    pipelined = pipeline_copies > 1
    out: list[int] = []
    for dev in range(n_dev):
        n_layers = sum(1 for d in where[:-1] if d == dev)
        has_output = where[-1] == dev
        if not n_layers and not has_output:
            out.append(0)
            continue
        # the activations handed in: a whole ubatch, or to a device with only the output layer just the rows
        # whose logits are wanted (the last layer already picked them, llama-graph.cpp inp_out_ids)
        handed = shape.n_embd * (row if n_layers else outputs * F32)
        held = pipeline_copies * (handed + (masks if n_layers else 0)) if pipelined else 0
        phases = []
        if n_layers:
            if ctx.flash_attn:
                attention = (6 * shape.n_embd + 2 * q_width) * row
            else:
                widths = 3 * shape.n_embd + 2 * q_width + 2 * kv_width
                inner = 1 + (n_layers > 1) if pipelined else -1
                attention = max(kinds) * u * shape.n_head * F32 + (widths + inner * shape.n_embd) * row
            # the FFN's gate, up and product; one fewer activation beside them than on one device, whose
            # input copy is counted in `held`
            phases += [attention, (3 * ffn_width(shape) + (2 if pipelined else 4) * shape.n_embd) * row]
            held += 0 if pipelined else masks
        if has_output:
            # the logits find no hole among the last layer's leftovers and stack on them (measured)
            # (how many rows depends on where ggml-alloc's holes fall: calibrated per case, not derived)
            stacked = (
                1 if not n_layers else (5 if n_layers == 1 else 0) if not ctx.flash_attn else 1 + 3 * (n_layers > 1)
            )
            phases.append((shape.n_vocab + stacked * shape.n_embd) * outputs * F32)
        out.append(held + max(phases))
    return out


def check_split_mode(split_mode: str) -> None:
    if split_mode == "row":
        raise FitError(
            "-sm row splits every matrix across the devices; mm models layer split only",
            hint="use -sm layer (llama.cpp's default) to plan, or measure row split on the machine",
            param="split_mode",
        )
