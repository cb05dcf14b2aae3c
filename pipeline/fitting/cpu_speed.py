"""The CPU side of a class measured by `mm hw --measure`, as speed.py's terms: its rates for a thread count
and its per-token overheads, and the roofline's devices for a token's work.

A measured class keeps, per thread count, the RAM bandwidth llama.cpp's decode reads at, the share of its
in-cache rate a type keeps out of cache, and each rate's standard error (the ± of a prediction); a class
without measurements has the bandwidth alone.
"""

from __future__ import annotations

from pipeline.fitting.placement import ReadBytes
from pipeline.fitting.speed import DeviceRates, DeviceWork, Overhead
from pipeline.spec.hardware import HardwareClass


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
    return ram, Overhead(rates.token_overhead_ms, rates.layer_overhead_ms, rates.vocab_overhead_ns)


def roofline_devices(
    read: ReadBytes, hardware: HardwareClass, threads: int | None, n_layers: int, n_vocab: int
) -> tuple[list[tuple[DeviceWork, DeviceRates]], float]:
    """Each device's work and rates for speed.py's roofline, and the per-token overhead in seconds."""
    ram, overhead = cpu_rates(hardware, threads) or (DeviceRates(hardware.ram_bandwidth_gbps), Overhead())
    devices = [(DeviceWork(read.cpu, read.cpu_elements), ram)]
    if read.gpu and hardware.gpu_bandwidth_gbps > 0:
        devices.append((DeviceWork(read.gpu, read.gpu_elements), DeviceRates(hardware.gpu_bandwidth_gbps)))
    return devices, overhead.seconds(n_layers, n_vocab)
