"""llama.cpp's quantization types: names, ftype ids, bits per weight and reference quality.

The authority is the QUANT_OPTIONS table in llama.cpp's tools/quantize/quantize.cpp (vendored by
llama-cpp-python 0.3.36) and the llama_ftype enum in include/llama.h. Reference sizes and perplexity
deltas are the figures quantize.cpp prints (Llama-3-8B unless noted).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.base.errors import UsageError
from pipeline.base.validation import did_you_mean


@dataclass(frozen=True)
class QuantType:
    name: str  # lower-case, as mm spells it; llama.cpp compares case-insensitively
    ftype: int  # llama_ftype value
    bits_per_weight: float  # approximate, for the whole model mix
    reference: str  # quantize.cpp's description
    ref_size_gib: float | None = None  # reference size at Llama-3-8B (or 7B for f16/bf16/f32)
    ppl_delta: float | None = None  # +perplexity vs f16 at that model; lower is better
    needs_imatrix: bool = False  # llama.cpp refuses without an importance matrix (its dry run says so)
    alias_of: str | None = None

    @property
    def canonical(self) -> str:
        return self.alias_of or self.name

    @property
    def is_float(self) -> bool:
        return self.name in {"f32", "f16", "bf16", "copy"}


def _q(
    name: str,
    ftype: int,
    bpw: float,
    ref: str,
    size: float | None = None,
    ppl: float | None = None,
    *,
    imatrix: bool = False,
    alias: str | None = None,
) -> QuantType:
    return QuantType(name, ftype, bpw, ref, size, ppl, imatrix, alias)


# Order follows quantize.cpp. Bits per weight for the k-quant mixes: reference size x 2^33 / 8.03e9 params.
QUANT_TYPES: tuple[QuantType, ...] = (
    _q("q1_0", 40, 1.125, "1.125 bpw quantization"),
    _q("q2_0", 41, 2.25, "2.25 bpw quantization (group 64)"),
    _q("q4_0", 2, 4.54, "4.34G, +0.4685 ppl @ Llama-3-8B", 4.34, 0.4685),
    _q("q4_1", 3, 5.0, "4.78G, +0.4511 ppl @ Llama-3-8B", 4.78, 0.4511),
    _q("mxfp4_moe", 38, 4.25, "MXFP4 MoE"),
    _q("q5_0", 8, 5.5, "5.21G, +0.1316 ppl @ Llama-3-8B", 5.21, 0.1316),
    _q("q5_1", 9, 6.0, "5.65G, +0.1062 ppl @ Llama-3-8B", 5.65, 0.1062),
    _q("iq2_xxs", 19, 2.06, "2.06 bpw quantization", imatrix=True),
    _q("iq2_xs", 20, 2.31, "2.31 bpw quantization", imatrix=True),
    _q("iq2_s", 28, 2.5, "2.5 bpw quantization", imatrix=True),
    _q("iq2_m", 29, 2.7, "2.7 bpw quantization", imatrix=True),  # its IQ2_S tensors need one
    _q("iq1_s", 24, 1.56, "1.56 bpw quantization", imatrix=True),
    _q("iq1_m", 31, 1.75, "1.75 bpw quantization", imatrix=True),
    _q("tq1_0", 36, 1.69, "1.69 bpw ternarization"),
    _q("tq2_0", 37, 2.06, "2.06 bpw ternarization"),
    _q("q2_k", 10, 3.17, "2.96G, +3.5199 ppl @ Llama-3-8B", 2.96, 3.5199),
    _q("q2_k_s", 21, 3.17, "2.96G, +3.1836 ppl @ Llama-3-8B", 2.96, 3.1836, imatrix=True),
    _q("iq3_xxs", 23, 3.06, "3.06 bpw quantization", imatrix=True),
    _q("iq3_s", 26, 3.44, "3.44 bpw quantization"),
    _q("iq3_m", 27, 3.66, "3.66 bpw quantization mix"),
    _q("q3_k", 12, 4.0, "alias for Q3_K_M", 3.74, 0.6569, alias="q3_k_m"),
    _q("iq3_xs", 22, 3.3, "3.3 bpw quantization", imatrix=True),  # its IQ3_XXS tensors need one
    _q("q3_k_s", 11, 3.65, "3.41G, +1.6321 ppl @ Llama-3-8B", 3.41, 1.6321),
    _q("q3_k_m", 12, 4.0, "3.74G, +0.6569 ppl @ Llama-3-8B", 3.74, 0.6569),
    _q("q3_k_l", 13, 4.31, "4.03G, +0.5562 ppl @ Llama-3-8B", 4.03, 0.5562),
    _q("iq4_nl", 25, 4.5, "4.50 bpw non-linear quantization"),
    _q("iq4_xs", 30, 4.25, "4.25 bpw non-linear quantization"),
    _q("q4_k", 15, 4.9, "alias for Q4_K_M", 4.58, 0.1754, alias="q4_k_m"),
    _q("q4_k_s", 14, 4.67, "4.37G, +0.2689 ppl @ Llama-3-8B", 4.37, 0.2689),
    _q("q4_k_m", 15, 4.9, "4.58G, +0.1754 ppl @ Llama-3-8B", 4.58, 0.1754),
    _q("q5_k", 17, 5.7, "alias for Q5_K_M", 5.33, 0.0569, alias="q5_k_m"),
    _q("q5_k_s", 16, 5.57, "5.21G, +0.1049 ppl @ Llama-3-8B", 5.21, 0.1049),
    _q("q5_k_m", 17, 5.7, "5.33G, +0.0569 ppl @ Llama-3-8B", 5.33, 0.0569),
    _q("q6_k", 18, 6.57, "6.14G, +0.0217 ppl @ Llama-3-8B", 6.14, 0.0217),
    _q("q8_0", 7, 8.5, "7.96G, +0.0026 ppl @ Llama-3-8B", 7.96, 0.0026),
    _q("f16", 1, 16.0, "14.00G, +0.0020 ppl @ Mistral-7B", 14.0, 0.0020),
    _q("bf16", 32, 16.0, "14.00G, -0.0050 ppl @ Mistral-7B", 14.0, -0.0050),
    _q("f32", 0, 32.0, "26.00G @ 7B", 26.0),
    _q("copy", 0, 0.0, "only copy tensors, no quantizing"),
)

_BY_NAME = {q.name: q for q in QUANT_TYPES}
# general.file_type of an F32/F16/BF16 model: ALL_F32, MOSTLY_F16, MOSTLY_BF16 (llama_ftype, include/llama.h)
FLOAT_FILE_TYPES = frozenset(q.ftype for q in QUANT_TYPES if q.is_float)


def quant_type_names() -> list[str]:
    return [q.name for q in QUANT_TYPES]


def valid_types_help() -> str:
    """One line per type with its bits per weight, for error messages and --help."""
    return ", ".join(f"{q.name} ({q.bits_per_weight:g} bpw)" if q.bits_per_weight else q.name for q in QUANT_TYPES)


def parse_quant_type(text: str) -> QuantType:
    """Case-insensitive, as llama.cpp's quantize; raises UsageError listing what is valid."""
    found = _BY_NAME.get(text.strip().lower())
    if found is None:
        close = did_you_mean(text.strip(), _BY_NAME)
        raise UsageError(
            f"unknown quantization type {text!r}; valid types: {valid_types_help()}",
            hint=f"did you mean {close}?" if close else None,
        )
    return found


def parse_quant_types(texts: list[str]) -> list[QuantType]:
    """Every name in `texts`, or one UsageError naming each unknown one (not just the first)."""
    unknown = [t for t in texts if t.strip().lower() not in _BY_NAME]
    if not unknown:
        return [parse_quant_type(t) for t in texts]
    if len(unknown) == 1:
        parse_quant_type(unknown[0])
    guesses = [f"{t} -> {close}" for t in unknown if (close := did_you_mean(t.strip(), _BY_NAME))]
    raise UsageError(
        f"unknown quantization types {', '.join(repr(t) for t in unknown)}; valid types: {valid_types_help()}",
        hint=f"did you mean: {'; '.join(guesses)}?" if guesses else None,
    )


def by_ftype(ftype: int) -> QuantType | None:
    """The canonical type for a llama_ftype id (e.g. a GGUF's general.file_type), or None."""
    for q in QUANT_TYPES:
        if q.ftype == ftype and q.alias_of is None and q.name != "copy":
            return q
    return None
