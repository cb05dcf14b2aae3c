"""`mm quantize --budget`: the per-tensor type mix with the least measured KL-divergence under a size budget.

What is measured, and why the search has this shape:
- Sizes are exact: one `--pure` dry run per ladder type gives every tensor's bytes (llama/mix.py), so any
  mix's size is a sum, and the final mix is dry-run again before it is written.
- Sensitivity is measured, not assumed: starting from every group at Q8_0 (near lossless), each group alone is
  lowered to each cheaper type and the model's mean KL-divergence from the source is measured on a few chunks
  of the calibration text, as `llama-perplexity --kl-divergence` computes it (measure/evaluate.py). That is
  groups x (types - 1) small quantize+score runs, bounded by `max_evals` (fewer types are tried past it).
- Layer bands (`bands`, e.g. 3: first, middle and last thirds of the layers, as hand-tuned quants raise the
  first and last layers) cost one more run each: a band alone at the cheapest type says what share of its
  group's measured cost is its own, so a band may get a type its group as a whole would not, at few runs.
- The mix minimises the sum of the groups' KLD increases over the Q8_0 baseline (errors of separate groups
  add, to first order) subject to the exact size: an exact knapsack over a Pareto front of (bytes, KLD), which
  is small because there are few groups and few types.
- The result is judged on a different text (or the calibration text's second half, tokens never used to
  choose), beside llama.cpp's uniform presets nearest in size, measured the same way.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.digest import forget_sha256
from pipeline.base.errors import FitError, QuantizeError
from pipeline.base.home import mm_home
from pipeline.base.mix_record import JudgedQuant, MixRecord
from pipeline.base.provenance import QuantParams, read_record, write_record
from pipeline.base.units import format_size
from pipeline.fitting.fit import FitResult, fit_model, fit_shape
from pipeline.fitting.model_shape import model_shape
from pipeline.gguf.header import read_header, read_model
from pipeline.gguf.quant_types import FLOAT_FILE_TYPES
from pipeline.llama.mix import LADDER, OTHER, GroupSizes, Rung, TypeMix, group_sizes, uniform, whole_group
from pipeline.llama.quant_plan import file_bits_per_weight, plan
from pipeline.llama.quantize import QuantizeRequest, default_output_path, quantize
from pipeline.measure.evaluate import Reference
from pipeline.measure.mix_search import Front, Sensitivity, best_mix, costs_over_baseline, mix_front, step_down
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_PRESETS = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0")
BudgetProgress = Callable[[str, int, int], None]  # (what, done, of)


class Text(BaseModel):
    path: Path
    label: str  # where it came from (path, or repo:file@commit)
    sha256: str


class FitTarget(BaseModel):
    """`--budget fit`: the hardware and run settings the quant must fit, as `mm fit` places it."""

    hardware: HardwareClass
    settings: RunSettings


class BudgetRequest(BaseModel):
    source: Path  # a float (F32/F16/BF16) GGUF: the reference every KLD is measured against
    budget_bytes: int | None = None  # None: the largest mix that fits `fit_target`
    fit_target: FitTarget | None = None
    calibration: Text
    evaluation: Text | None = None  # None: the calibration text's second half, never used to choose
    imatrix: Path | None = None
    imatrix_sha256: str | None = None
    n_ctx: int = 128  # tokens per scored chunk: a few short chunks tell groups apart
    calibration_chunks: int = 4
    evaluation_chunks: int | None = 8
    max_evals: int = 48
    bands: int = 1  # layer bands per layered group (3: first, middle and last thirds of the layers)
    threads: int | None = None
    output: Path | None = None


class BudgetResult(MixRecord):
    """The record that travels with the file (mix and figures), and what only this run needs."""

    schema_version: int = SCHEMA_VERSION
    source: str
    output: Path
    params: QuantParams
    sensitivities: list[Sensitivity]

    def record(self) -> MixRecord:
        return MixRecord.model_validate(self.model_dump(include=set(MixRecord.model_fields)))


def _rungs_within(max_evals: int, n_groups: int) -> list[Rung]:
    """The ladder types to try, cheapest and dearest kept, evenly thinned to fit `max_evals` runs."""
    lower = list(LADDER[:-1])
    allowed = max(1, (max_evals - 1) // max(n_groups, 1))
    if allowed >= len(lower):
        return [*lower, LADDER[-1]]
    step = (len(lower) - 1) / max(allowed - 1, 1)
    picked = sorted({round(i * step) for i in range(allowed)})
    return [*(lower[i] for i in picked), LADDER[-1]]


def _remove_output(path: Path) -> None:
    """A quantize output mm made and will not keep: the file, its record and its cached digest."""
    forget_sha256(mm_home(), path)
    for leftover in (path, path.with_name(path.name + ".mm.json")):
        leftover.unlink(missing_ok=True)


class _Scratch:
    """Throwaway quantizes for measuring: written under $MM_HOME/tmp and removed with their records."""

    def __init__(self, request: BudgetRequest) -> None:
        self.request = request
        root = mm_home().ensure(mm_home().root / "tmp")
        self._dir = tempfile.TemporaryDirectory(prefix="budget-", dir=root)
        self.evals = 0

    def quantize(self, mix: TypeMix) -> Path:
        path = Path(self._dir.name) / f"trial-{mix.key()}.gguf"
        params = mix.params(self.request.imatrix, self.request.imatrix_sha256)
        quantize(QuantizeRequest(source=self.request.source, params=params, output=path, threads=self.request.threads))
        return path

    def discard(self, path: Path) -> None:
        _remove_output(path)
        (mm_home().logs / f"quantize-{path.name}.log").unlink(missing_ok=True)

    def kld(self, reference: Reference, mix: TypeMix) -> float:
        path = self.quantize(mix)
        try:
            sums = reference.compare(path)
        finally:
            self.discard(path)
        self.evals += 1
        return sums["kld"] / (reference.n_chunk * (reference.n_ctx - 1 - reference.n_ctx // 2))

    def split(self, text: Text) -> tuple[Text, Text]:
        """The text's first half (to choose by) and second half (to judge by), cut at whitespace."""
        data = text.path.read_bytes()
        middle = len(data) // 2
        cut = next((i + 1 for i in range(middle, len(data)) if data[i : i + 1].isspace()), middle)
        halves = []
        for index, (part, piece) in enumerate((("first", data[:cut]), ("second", data[cut:]))):
            path = Path(self._dir.name) / f"text-{index}.txt"
            path.write_bytes(piece)
            halves.append(Text(path=path, label=f"{text.label} ({part} half)", sha256=text.sha256))
        return halves[0], halves[1]

    def close(self) -> None:
        self._dir.cleanup()


def sensitivities(
    request: BudgetRequest, calibration: Text, sizes: GroupSizes, scratch: _Scratch,
    progress: BudgetProgress | None = None,
) -> list[Sensitivity]:  # fmt: skip
    """Each whole group alone at each cheaper type, the rest at Q8_0, then each layer band alone at the
    cheapest type: mean KLD on the calibration text."""
    groups = [g for g in sizes.groups if g != OTHER]
    wholes = list(dict.fromkeys(whole_group(g) for g in groups))
    bands = [g for g in groups if g != whole_group(g)]
    rungs = _rungs_within(request.max_evals - len(bands), len(wholes))
    top = LADDER[-1]
    total = 1 + len(wholes) * (len(rungs) - 1) + len(bands)
    with Reference(
        request.source, calibration.path, text=calibration.label, n_ctx=request.n_ctx,
        chunks=request.calibration_chunks, threads=request.threads,
    ) as reference:  # fmt: skip

        def measure(group: str, rung: Rung) -> Sensitivity:
            lowered = [g for g in groups if group in (g, whole_group(g))]
            value = scratch.kld(
                reference, TypeMix(types={**uniform(groups, top).types, **uniform(lowered, rung).types})
            )
            if progress:
                progress("sensitivity", scratch.evals, total)
            return Sensitivity(group=group, type=rung.ggml, kld_mean=value, bytes=sizes.whole_bytes(group, rung.ggml))

        baseline = measure(OTHER, top)  # no group lowered
        found = [baseline.model_copy(update={"group": g, "bytes": sizes.whole_bytes(g, top.ggml)}) for g in wholes]
        found += [measure(whole, rung) for whole in wholes for rung in rungs[:-1]]
        found += [measure(band, LADDER[0]) for band in bands]
    return found


def _fitting(
    request: BudgetRequest, mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes, budget: int
) -> TypeMix:
    """`mix`, stepped down until llama.cpp's own dry run of the whole mix is within the budget."""
    current: TypeMix | None = mix
    while current is not None:
        planned = plan(request.source, current.params(request.imatrix, request.imatrix_sha256))
        if planned.file_bytes <= budget:
            return current
        current = step_down(current, cost, sizes)
    raise QuantizeError(f"no mix of {request.source.name} fits {format_size(budget)}", param="budget")


def _placed_as_wanted(fit: FitResult, target: FitTarget, has_experts: bool) -> bool:
    """On a GPU class every layer's dense part on the GPU (experts may stay in RAM); else all in RAM."""
    if fit.verdict == "does_not_fit":
        return False
    if not target.hardware.has_gpu:
        return True
    return fit.verdict == "full_offload" or (has_experts and fit.n_gpu_layers == fit.n_layers + 1)


def largest_fitting(request: BudgetRequest, sizes: GroupSizes, front: list[Front]) -> Front | None:
    """The largest (least KLD) mix on the front that `mm fit` places on the target as wanted."""
    assert request.fit_target is not None
    headers = read_model(request.source)
    has_experts = "experts" in sizes.groups
    for candidate in reversed(front):
        tensor_bytes, tensor_types = sizes.tensor_plan(candidate.mix)
        shape = model_shape(headers, tensor_bytes, tensor_types)
        target = request.fit_target
        fit = fit_shape(shape, request.source, target.hardware, target.settings, suggest=False)
        if _placed_as_wanted(fit, target, has_experts):
            return candidate
    return None


def _written(
    request: BudgetRequest, mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes,
    sha256_of: Callable[..., str],
) -> tuple[TypeMix, Path]:  # fmt: skip
    """Write `mix` and judge the written file: within the size budget, or (`fit`) placed on the target as
    wanted by `mm fit`'s own reading of it. The dry run only estimates the header, so a file a few bytes
    over is removed and the mix stepped down once more."""
    current: TypeMix | None = mix
    while current is not None:
        output = request.output or default_output_path(
            request.source, sha256_of(mm_home(), request.source), f"mix-{current.key()}"
        )
        params = current.params(request.imatrix, request.imatrix_sha256)
        quantize(
            QuantizeRequest(
                source=request.source, params=params, output=output, threads=request.threads, requested=True
            )
        )
        if _accepted(request, output, "experts" in sizes.groups):
            return current, output
        log.info("%s (%d bytes) is over the budget: one step down", output, output.stat().st_size)
        _remove_output(output)
        current = step_down(current, cost, sizes)
    raise QuantizeError(f"no mix of {request.source.name} fits the budget", param="budget")


def _accepted(request: BudgetRequest, output: Path, has_experts: bool) -> bool:
    target = request.fit_target
    if target is None:
        return output.stat().st_size <= (request.budget_bytes or 0)  # set by quantize_budget before writing
    return _placed_as_wanted(fit_model(output, target.hardware, target.settings), target, has_experts)


def _nearest_presets(request: BudgetRequest, budget: int) -> list[str]:
    """The largest uniform preset within the budget and the smallest above it (by llama.cpp's dry run)."""
    sized = sorted((plan(request.source, QuantParams(type=p)).file_bytes, p) for p in DEFAULT_PRESETS)
    under = [p for size, p in sized if size <= budget]
    over = [p for size, p in sized if size > budget]
    return under[-1:] + over[:1]


def _judged(reference: Reference, name: str, path: Path) -> JudgedQuant:
    sums = reference.compare(path)
    figures = reference.result(path, sums, text="", text_sha256="", ref_sha256=None, seconds=0.0)
    bpw = file_bits_per_weight(read_header(path).tensors)
    return JudgedQuant(
        name=name, size_bytes=path.stat().st_size, bits_per_weight=bpw,
        kld_mean=figures.kld_mean, kld_stdev=figures.kld_stdev, ppl=figures.ppl, ppl_delta=figures.ppl_delta,
    )  # fmt: skip


def _check_cheapest(request: BudgetRequest, sizes: GroupSizes, cheapest: Front) -> None:
    """Before measuring anything: the smallest mix (every group at q2_k) must be within the budget."""
    name = request.source.name
    if request.fit_target is not None:
        if largest_fitting(request, sizes, [cheapest]) is None:
            raise FitError(
                f"even the smallest mix of {name} ({format_size(cheapest.size_bytes)}, every group at q2_k) does "
                f"not fit {request.fit_target.hardware.name} as `mm fit` places it",
                hint="a smaller context or model, or a larger class",
                param="budget",
            )
    elif request.budget_bytes is None:
        raise QuantizeError("a budget needs a size, or a target to fit", param="budget")
    elif cheapest.size_bytes > request.budget_bytes:
        raise QuantizeError(
            f"budget {format_size(request.budget_bytes)} is below the smallest mix of {name} "
            f"({format_size(cheapest.size_bytes)}, every group at q2_k)",
            hint="give a larger budget, or a smaller model",
            param="budget",
        )


def quantize_budget(request: BudgetRequest, progress: BudgetProgress | None = None) -> BudgetResult:
    """Measure each group's sensitivity, choose the mix, write it, and judge it beside the nearest presets."""
    from pipeline.base.digest import file_sha256

    started = time.perf_counter()
    if read_model(request.source)[0].file_type not in FLOAT_FILE_TYPES:
        raise QuantizeError(
            f"{request.source.name} is already quantized: a budget mix is chosen by KL-divergence from the "
            "unquantized model",
            hint="give the F32/F16/BF16 GGUF (`mm convert` makes one from safetensors)",
        )
    whole = group_sizes(request.source, QuantParams(type="q8_0", imatrix_path=_str(request.imatrix)))
    sizes = sizes_in_bands(request, whole)
    groups = [g for g in sizes.groups if g != OTHER]
    cheapest = Front(sizes.file_bytes(uniform(groups, LADDER[0])), 0.0, uniform(groups, LADDER[0]))
    _check_cheapest(request, sizes, cheapest)
    scratch = _Scratch(request)
    try:
        calibration, evaluation = (
            (request.calibration, request.evaluation) if request.evaluation else scratch.split(request.calibration)
        )
        # The judge's reference first: a text too short to judge by fails before the long search.
        with Reference(
            request.source, evaluation.path, text=evaluation.label, n_ctx=request.n_ctx,
            chunks=request.evaluation_chunks, threads=request.threads,
        ) as reference:  # fmt: skip
            found = sensitivities(request, calibration, sizes, scratch, progress)
            cost = costs_over_baseline(found)
            budget = request.budget_bytes
            if budget is None:
                budget = (largest_fitting(request, sizes, mix_front(sizes, cost)) or cheapest).size_bytes
            chosen = best_mix(sizes, cost, budget) or uniform(groups, LADDER[0])
            fitting = _fitting(request, chosen, cost, sizes, budget)
            mix, output = _written(request, fitting, cost, sizes, file_sha256)
            params = mix.params(request.imatrix, request.imatrix_sha256)
            measured = _judged(reference, "mix", output)
            presets = []
            for preset in _nearest_presets(request, budget):
                made = quantize(QuantizeRequest(source=request.source, params=QuantParams(type=preset),
                                                threads=request.threads))  # fmt: skip
                presets.append(_judged(reference, preset, made.output))
                scratch.evals += 1
    finally:
        scratch.close()
    result = BudgetResult(
        source=str(request.source), budget_bytes=budget, output=output, mix=mix.types, params=params,
        measured=measured, presets=presets, sensitivities=found, calibration_text=calibration.label,
        calibration_sha256=calibration.sha256, evaluation_text=evaluation.label,
        evaluation_sha256=evaluation.sha256, n_ctx=request.n_ctx, evaluation_chunks=request.evaluation_chunks,
        target=request.fit_target.hardware.name if request.fit_target else None, evals=scratch.evals + 1,
        seconds=round(time.perf_counter() - started, 3),
    )  # fmt: skip
    _attach(result)
    return result


def _attach(result: BudgetResult) -> None:
    """The mix and its figures into the output's sidecar record, where `mm publish` finds them."""
    record = read_record(result.output)
    if record is None:  # quantize writes one with every output
        raise QuantizeError(f"{result.output}: its quantize record is missing")
    write_record(record.model_copy(update={"mix": result.record()}))


def sizes_in_bands(request: BudgetRequest, sizes: GroupSizes) -> GroupSizes:
    """`sizes` in layer bands when asked for and `max_evals` holds every whole group at every type besides one
    probe per band (bands refine a full search, never at the cost of the types tried); else whole groups."""
    if request.bands <= 1:
        return sizes
    banded = sizes.banded(request.bands)
    n_wholes = len({whole_group(g) for g in sizes.groups if g != OTHER})
    n_bands = sum(1 for g in banded.groups if g != whole_group(g))
    needed = 1 + n_wholes * (len(LADDER) - 1) + n_bands
    if needed > request.max_evals:
        log.warning("layer bands need %d measured runs (max_evals %d): whole groups instead", needed, request.max_evals)
        return sizes
    return banded


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
