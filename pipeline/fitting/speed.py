"""Decode speed: a roofline per device, with rates measured on the machine (`mm hw --measure`).

    seconds per token = sum over devices of max(bytes read / bandwidth, matrix work / compute rate)
                        + a per-token overhead (graph build, one dispatch and barrier per graph node)

The caller says what each device does per token (`DeviceWork`: bytes read and weight elements multiplied,
by ggml type); this module turns that into seconds with the class's rates (`DeviceRates`). Which bytes a
token reads (every layer's weights; for a mixture of experts only the active ones) is the caller's business.

Each measured rate carries its uncertainty (pipeline/measure/sampling.py); tokens_per_second_spread turns
them into the ± of a prediction. A class without measured compute rates (the built-in, datasheet classes) has
only the bandwidth term: such a prediction is an upper bound, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

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


# A type with no measured rate takes its sibling's: the type whose CPU kernel (ggml-cpu quants.c, the
# ggml_vec_dot_* of each type) does the same work per weight: the same codebook lookups, the same block
# layout with or without an offset, the same float conversion. Followed until a measured type is found;
# `mm hw --measure` measures every type llama.cpp can make, so a rule only serves types this llama.cpp
# cannot quantize to (NVFP4), types that are never stored weights (Q8_1, Q8_K), and classes measured before
# a type was added. Rules only point to a sibling of equal or greater cost, so a derived rate errs slow.
SIBLING = {
    "NVFP4": "MXFP4",  # E2M1 values with a block scale, the same table lookup (16- rather than 32-wide blocks)
    "MXFP4": "IQ4_NL",  # a 16-entry value table per 4-bit index, as IQ4_NL
    "IQ4_XS": "IQ4_NL", "Q4_1": "Q4_0", "Q5_1": "Q5_0", "Q8_1": "Q8_0", "Q8_K": "Q8_0", "BF16": "F16",
    "IQ1_M": "IQ1_S", "IQ1_S": "IQ2_XXS", "IQ2_S": "IQ2_XS", "IQ2_XS": "IQ2_XXS", "IQ2_XXS": "IQ3_XXS",
    "IQ3_S": "IQ3_XXS", "TQ1_0": "TQ2_0", "TQ2_0": "Q2_K", "Q1_0": "TQ1_0", "Q2_0": "Q4_0", "F64": "F32",
}  # fmt: skip


def measured_sibling(kind: str, measured: Mapping[str, float]) -> str | None:
    """The measured type whose rate `kind` takes: itself, else the first measured one along SIBLING."""
    seen, kind = set(), kind.upper()
    while kind not in measured and kind in SIBLING and kind not in seen:
        seen.add(kind)
        kind = SIBLING[kind]
    return kind if kind in measured else None


@dataclass(frozen=True)
class DeviceRates:
    """A device's measured (or datasheet) rates; an empty `gflops` means no compute term."""

    bandwidth_gbps: float
    gflops: Mapping[str, float] = field(default_factory=dict)  # ggml type -> GFLOP/s of matrix-vector work
    cache_bytes: int = 0  # last-level cache: what a token reads from it is not limited by RAM bandwidth
    spread: Mapping[str, float] = field(default_factory=dict)  # ggml type -> relative uncertainty of its rate
    bandwidth_spread: float = 0.0
    # The share of its measured (in-cache) rate a type keeps when the weights come from RAM: one CPU thread
    # waiting on memory does not compute meanwhile, so the arithmetic slows as well as the reading.
    ram_compute_share: float = 1.0

    def rate(self, kind: str) -> float | None:
        """GFLOP/s for a type: its own, its measured sibling's (SIBLING), else the slowest measured."""
        if not self.gflops:
            return None
        sibling = measured_sibling(kind, self.gflops)
        return self.gflops[sibling] if sibling else min(self.gflops.values())

    def shifted(self, sigmas: float) -> DeviceRates:
        """These rates moved by `sigmas` of their spreads (+1: each one spread faster)."""
        return replace(
            self,
            bandwidth_gbps=self.bandwidth_gbps * max(0.0, 1 + sigmas * self.bandwidth_spread),
            gflops={k: v * max(0.0, 1 + sigmas * self.spread.get(k, 0.0)) for k, v in self.gflops.items()},
        )


@dataclass(frozen=True)
class Overhead:
    """Per-token time outside the matrix work: a fixed part, a part per computed graph node (a dispatch and,
    with several threads, a barrier: fitting/graph_ops.py counts them) and a part per vocabulary entry (every
    token's logits are written out by llama.cpp and copied by llama-cpp-python) and a part per element of a
    recurrent layer's SSM state (the scan's scalar expf each)."""

    token_ms: float = 0.0
    op_us: float = 0.0
    vocab_ns: float = 0.0
    state_ns: float = 0.0  # per recurrent state element scanned (graph_ops.state_elements)

    def seconds(self, n_ops: int, n_vocab: int = 0, n_state: int = 0) -> float:
        return (self.token_ms / 1e3 + self.op_us * n_ops / 1e6 + self.vocab_ns * n_vocab / 1e9
                + self.state_ns * n_state / 1e9)  # fmt: skip


def memory_seconds(work: DeviceWork, rates: DeviceRates) -> float:
    """Bytes over bandwidth; nothing when they all fit the last-level cache (they stay there between tokens,
    and the measured compute rates already include reading from it)."""
    if rates.bandwidth_gbps <= 0 or not work.bytes_read or work.bytes_read <= rates.cache_bytes:
        return 0.0
    return work.bytes_read / (rates.bandwidth_gbps * 1e9)


def compute_seconds(work: DeviceWork, rates: DeviceRates) -> float:
    from_ram = rates.cache_bytes > 0 and work.bytes_read > rates.cache_bytes
    share = rates.ram_compute_share if from_ram else 1.0
    total = 0.0
    for kind, elements in work.elements.items():
        rate = rates.rate(kind)
        if rate:
            total += FLOPS_PER_ELEMENT * elements / (rate * share * 1e9)
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


def tokens_per_second_spread(devices: Sequence[tuple[DeviceWork, DeviceRates]], overhead: float = 0.0) -> float:
    """How far the prediction moves when every measured rate moves by its spread: half the distance between
    the predictions with all rates one spread faster and one spread slower (the "± 3" of "35 ± 3 tok/s")."""
    fast = tokens_per_second([(work, rates.shifted(+1)) for work, rates in devices], overhead)
    slow = tokens_per_second([(work, rates.shifted(-1)) for work, rates in devices], overhead)
    return round(abs(fast - slow) / 2, 2)


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
