"""Which quant type to make: each candidate's exact size (llama.cpp's quantize dry run) fitted to the hardware.

Sits above fit (which runs no llama.cpp): a candidate's sizes come from `quant_plan.plan`, then
`fit.fit_shape` places them; the recommendation is the best reference quality that fits fast enough.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from pipeline.base.errors import FitError, MMError
from pipeline.base.provenance import QuantParams
from pipeline.fitting.fit import SCHEMA_VERSION, Verdict, fit_shape
from pipeline.fitting.model_shape import model_shape
from pipeline.gguf.header import GGUFHeader, read_model
from pipeline.gguf.quant_types import QUANT_TYPES, QuantType, by_ftype, parse_quant_type
from pipeline.llama.quant_plan import plan
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.results import EvalResult
from pipeline.spec.run_settings import RunSettings

log = logging.getLogger(__name__)


class QuantCandidate(BaseModel):
    type: str
    file_bytes: int
    exact_sizes: bool  # True: llama.cpp's quantize dry-run; False: bits-per-weight estimate
    tensor_types: dict[str, int]  # ggml type -> tensor count
    n_gpu_layers: int
    n_cpu_moe: int = 0  # a mixture of experts: layers whose experts stay in RAM (the MoE speed model)
    tokens_per_second: float
    prompt_tokens_per_second: float | None = None  # pp512, where predicted
    ppl_delta: float | None  # llama.cpp's reference perplexity increase (quantize.cpp; lower is better)
    fits: bool
    verdict: Verdict
    needs_imatrix: bool = False  # llama.cpp's quantize refuses this type without an importance matrix
    worth_it: bool = True  # False: not smaller than an already-quantized source, so no gain from it
    note: str | None = None
    # `mm eval` of this type against this very model, where one was stored in a profile (else None)
    measured_kld: float | None = None
    measured_ppl_delta: float | None = None
    measured_text: str | None = None


class QuantReport(BaseModel):
    schema_version: int
    model_path: str
    hardware: str
    settings: RunSettings
    min_tps: float
    candidates: list[QuantCandidate]
    recommended: str | None
    reason: str


# Types worth offering by default: the k-quants and q8_0 (no importance matrix needed).
DEFAULT_CANDIDATES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0")


def parse_candidates(text: str) -> list[QuantType]:
    """`all` (the k-quants and q8_0) or a comma-separated list of quant types."""
    names = DEFAULT_CANDIDATES if text.strip().lower() == "all" else [t for t in text.split(",") if t.strip()]
    types = [parse_quant_type(name) for name in names]
    return [t for t in types if not t.is_float or t.name in ("f16", "bf16")]


class _Planned(NamedTuple):
    sizes: dict[str, int]  # tensor name -> bytes
    kinds: dict[str, int]  # ggml type -> tensor count
    exact: bool  # True: llama.cpp's quantize dry-run; False: a bits-per-weight estimate
    needs_imatrix: bool
    file_bytes: int  # the whole file: header (a 262k-token vocabulary is megabytes of it) + aligned tensor data
    types: dict[str, str]  # tensor name -> ggml type (the speed model's compute rates are per type)


def _planned_sizes(headers: list[GGUFHeader], qtype: QuantType) -> _Planned:
    """Per-tensor sizes for a candidate: llama.cpp's quantize dry-run, else (if it fails) an estimate."""
    try:
        result = plan(headers[0].path, QuantParams(type=qtype.canonical, allow_requantize=True))
        sizes = {t.name: t.n_bytes for t in result.tensors}
        planned = {t.name: t.type for t in result.tensors}
        return _Planned(sizes, result.tensor_types, True, result.needs_imatrix, result.file_bytes, planned)
    except MMError as exc:
        log.warning("quantize dry-run failed for %s (%s); estimating sizes from bits per weight", qtype.name, exc)
    sizes = {}
    kinds: dict[str, int] = {}
    types: dict[str, str] = {}
    for header in headers:
        for tensor in header.tensors:
            if len(tensor.shape) < 2 or tensor.shape[0] % 32:  # llama.cpp leaves 1-D tensors in F32
                sizes[tensor.name], kind = tensor.n_bytes, tensor.type_name
            else:
                sizes[tensor.name], kind = int(tensor.n_elements * qtype.bits_per_weight / 8), qtype.canonical
            kinds[kind] = kinds.get(kind, 0) + 1
            types[tensor.name] = kind
    return _Planned(sizes, kinds, False, qtype.needs_imatrix, headers[0].data_offset + sum(sizes.values()), types)


def _requant_note(source: QuantType | None, qtype: QuantType) -> str | None:
    """Why a candidate gains nothing: re-quantizing cannot add back what the source's quantization lost."""
    if source is None or source.is_float or qtype.canonical == source.canonical:
        return None
    if qtype.bits_per_weight >= source.bits_per_weight:
        return f"not smaller than the source ({source.name}): quality cannot improve by re-quantizing"
    return None


def recommend_quant(
    model: Path, hardware: HardwareClass, candidates: list[QuantType], settings: RunSettings | None = None,
    min_tps: float = 0.0, measured: dict[str, EvalResult] | None = None,
) -> QuantReport:  # fmt: skip
    """Fit each candidate quant; recommend the best reference quality that fits at or above `min_tps`.

    `measured`: `mm eval` results against this model by quant type (registry.measurements.measured_quality)."""
    if not candidates:
        raise FitError("no candidate quant types given", hint="e.g. all, or q4_k_m,q5_k_m", param="quants")
    settings = settings or RunSettings()
    headers = read_model(model)
    source = by_ftype(headers[0].file_type) if headers[0].file_type is not None else None
    rows = []
    measured = measured or {}
    for qtype in candidates:
        planned = _planned_sizes(headers, qtype)
        shape = model_shape(headers, planned.sizes, planned.types)
        fit = fit_shape(shape, model, hardware, settings, suggest=False)
        note = _requant_note(source, qtype)
        rows.append(
            QuantCandidate(
                type=qtype.canonical, file_bytes=planned.file_bytes, exact_sizes=planned.exact,
                tensor_types=planned.kinds, n_gpu_layers=fit.n_gpu_layers, n_cpu_moe=fit.n_cpu_moe,
                tokens_per_second=fit.tokens_per_second, prompt_tokens_per_second=fit.prompt_tokens_per_second,
                ppl_delta=qtype.ppl_delta, fits=fit.verdict != "does_not_fit", verdict=fit.verdict,
                needs_imatrix=planned.needs_imatrix, worth_it=note is None, note=note,
                **_measured_fields(measured.get(qtype.canonical)),
            )
        )  # fmt: skip
    usable = [c for c in rows if c.fits and c.worth_it and c.tokens_per_second >= min_tps]
    order = {q.name: i for i, q in enumerate(QUANT_TYPES)}
    best = min(usable, key=lambda c: (c.ppl_delta if c.ppl_delta is not None else 99.0, -order[c.type]), default=None)
    if best is None:
        reason = f"no candidate fits {hardware.name} at {min_tps:g} tokens/s or more"
    else:
        reason = f"lowest reference perplexity increase that fits {hardware.name} at >= {min_tps:g} tokens/s"
    return QuantReport(
        schema_version=SCHEMA_VERSION, model_path=str(model), hardware=hardware.name, settings=settings,
        min_tps=min_tps, candidates=rows, recommended=best.type if best else None, reason=reason,
    )  # fmt: skip


def _measured_fields(result: EvalResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"measured_kld": result.kld_mean, "measured_ppl_delta": result.ppl_delta, "measured_text": result.text}
