"""Decode speed: a roofline per device, with rates measured on the machine (`mm hw --measure`).

    seconds per token = sum over devices of max(bytes read / bandwidth, matrix work / compute rate)
                        + a per-token overhead (graph build, thread barriers, one per layer)

The caller says what each device does per token (`DeviceWork`: bytes read and weight elements multiplied,
by ggml type); this module turns that into seconds with the class's rates (`DeviceRates`). Which bytes a
token reads (every layer's weights; for a mixture of experts only the active ones) is the caller's business.

A class without measured compute rates (the built-in, datasheet classes) has only the bandwidth term:
such a prediction is an upper bound, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A matrix-vector product does one multiply and one add per weight (ggml_vec_dot_* per row).
FLOPS_PER_ELEMENT = 2
# Decode is predicted, and measured by `mm bench`, as llama-bench's tg128: 128 tokens from an empty cache,
# so attention reads the cells used so far, padded as llama.cpp pads n_kv (256, llama-kv-cache.cpp
# get_padding). Reading the whole cache of a long context would halve a small model's predicted speed.
DECODE_TOKENS = 128
KV_PAD = 256


@dataclass(frozen=True)
class DeviceWork:
    """What one device does for one decoded token."""

    bytes_read: int
    elements: Mapping[str, int] = field(default_factory=dict)  # ggml type (upper case) -> elements multiplied

    @property
    def flops(self) -> int:
        return FLOPS_PER_ELEMENT * sum(self.elements.values())


@dataclass(frozen=True)
class DeviceRates:
    """A device's measured (or datasheet) rates; an empty `gflops` means no compute term."""

    bandwidth_gbps: float
    gflops: Mapping[str, float] = field(default_factory=dict)  # ggml type -> GFLOP/s of matrix-vector work
    cache_bytes: int = 0  # last-level cache: what a token reads from it is not limited by RAM bandwidth

    def rate(self, kind: str) -> float | None:
        """GFLOP/s for a type; a type that was not measured gets the slowest measured rate (a safe guess)."""
        if not self.gflops:
            return None
        return self.gflops.get(kind.upper()) or min(self.gflops.values())


@dataclass(frozen=True)
class Overhead:
    """Per-token time outside the matrix work: a fixed part and a part per layer (graph nodes)."""

    token_ms: float = 0.0
    layer_ms: float = 0.0

    def seconds(self, n_layers: int) -> float:
        return (self.token_ms + self.layer_ms * n_layers) / 1e3


def memory_seconds(work: DeviceWork, rates: DeviceRates) -> float:
    """Bytes over bandwidth; nothing when they all fit the last-level cache (they stay there between tokens,
    and the measured compute rates already include reading from it)."""
    if rates.bandwidth_gbps <= 0 or not work.bytes_read or work.bytes_read <= rates.cache_bytes:
        return 0.0
    return work.bytes_read / (rates.bandwidth_gbps * 1e9)


def compute_seconds(work: DeviceWork, rates: DeviceRates) -> float:
    total = 0.0
    for kind, elements in work.elements.items():
        rate = rates.rate(kind)
        if rate:
            total += FLOPS_PER_ELEMENT * elements / (rate * 1e9)
    return total


def device_seconds(work: DeviceWork, rates: DeviceRates) -> float:
    """The roofline: a device is limited by its memory or its arithmetic, whichever is slower."""
    return max(memory_seconds(work, rates), compute_seconds(work, rates))


def token_seconds(devices: Sequence[tuple[DeviceWork, DeviceRates]], overhead: float = 0.0) -> float:
    """Devices run one after another in decode (layers are split, not replicated), so their times add."""
    return sum(device_seconds(work, rates) for work, rates in devices) + overhead


def tokens_per_second(devices: Sequence[tuple[DeviceWork, DeviceRates]], overhead: float = 0.0) -> float:
    seconds = token_seconds(devices, overhead)
    return round(1.0 / seconds, 2) if seconds > 0 else 0.0


def attention_cells(n_ctx: int, tokens: int = DECODE_TOKENS) -> int:
    """KV cells one decoded token attends to, averaged over `tokens` tokens from an empty cache."""
    used = min(n_ctx, max(1, tokens // 2))
    return min(n_ctx, -(-used // KV_PAD) * KV_PAD)


def merge(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Sum element counts by type."""
    out: dict[str, int] = {}
    for count in counts:
        for kind, elements in count.items():
            out[kind] = out.get(kind, 0) + elements
    return out


def scaled(counts: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Element counts times a fraction (the active share of a layer's routed experts)."""
    return {kind: round(elements * fraction) for kind, elements in counts.items()}
