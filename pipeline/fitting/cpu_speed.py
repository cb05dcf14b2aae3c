"""The CPU side of a class measured by `mm hw --measure`, as speed.py's terms: its rates for a thread count
and its per-token overheads, and the roofline's devices for a token's work.

A measured class keeps, per thread count, the RAM bandwidth llama.cpp's decode reads at, the share of its
in-cache rate a type keeps out of cache, and each rate's standard error (the ± of a prediction); a class
without measurements has the bandwidth alone.
"""

from __future__ import annotations

from pipeline.fitting.graph_ops import DEFAULT_LAYER_OPS, decode_ops, state_elements
from pipeline.fitting.model_shape import ModelShape
from pipeline.fitting.placement import ReadBytes
from pipeline.fitting.speed import DeviceRates, DeviceWork, Overhead
from pipeline.spec.hardware import CpuRates, HardwareClass


def cpu_rates(hardware: HardwareClass, threads: int | None) -> tuple[DeviceRates, Overhead] | None:
    """The measured CPU rates and overheads for `threads` (hardware.rates_for's choice), None if unmeasured."""
    rates = hardware.rates_for(threads)
    if rates is None:
        return None
    ram = DeviceRates(
        bandwidth_gbps=rates.ram_bandwidth_gbps or hardware.ram_bandwidth_gbps,
        gflops=rates.gflops,
        cache_bytes=rates.cache_bytes,
        spread=rates.error,
        bandwidth_spread=rates.ram_bandwidth_error,
        ram_compute_share=rates.ram_compute_share,
    )
    return ram, Overhead(rates.token_overhead_ms, overhead_per_op_us(rates), rates.vocab_overhead_ns,
                         rates.state_overhead_ns)  # fmt: skip


def overhead_per_op_us(rates: CpuRates) -> float:
    """Microseconds per computed graph node; a class measured per llama layer (before per-node costs) has that
    cost spread over a llama layer's nodes."""
    return rates.op_overhead_us or rates.layer_overhead_ms * 1e3 / DEFAULT_LAYER_OPS


def roofline_devices(
    read: ReadBytes, hardware: HardwareClass, threads: int | None, shape: ModelShape
) -> tuple[list[tuple[DeviceWork, DeviceRates]], float]:
    """Each device's work and rates for speed.py's roofline, and the per-token overhead in seconds (the graph's
    nodes and recurrent state, graph_ops.py, and the logits of the vocabulary)."""
    ram, overhead = cpu_rates(hardware, threads) or (DeviceRates(hardware.ram_bandwidth_gbps), Overhead())
    devices = [(DeviceWork(read.cpu, read.cpu_elements), ram)]
    if read.gpu and hardware.gpu_bandwidth_gbps > 0:
        devices.append((DeviceWork(read.gpu, read.gpu_elements), DeviceRates(hardware.gpu_bandwidth_gbps)))
    return devices, overhead.seconds(decode_ops(shape), shape.n_vocab, state_elements(shape))
