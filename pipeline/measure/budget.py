"""`mm quantize --budget`: the per-tensor type mix with the least measured KL-divergence under a size budget.

What is measured, and why the search has this shape:
- Sizes are exact: one `--pure` dry run per ladder type gives every tensor's bytes (llama/mix.py), so any
  mix's size is a sum, and the final mix is dry-run again before it is written.
- Sensitivity is measured, not assumed: starting from every group at Q8_0 (near lossless), each group alone is
  lowered to each cheaper type and the model's mean KL-divergence from the source is measured on a few chunks
  of the calibration text, as `llama-perplexity --kl-divergence` computes it (measure/evaluate.py). That is
  groups x (types - 1) small quantize+score runs, bounded by `max_evals` (fewer types are tried past it).
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
from pipeline.base.errors import QuantizeError
from pipeline.base.home import mm_home
from pipeline.base.provenance import QuantParams
from pipeline.base.units import format_size
from pipeline.gguf.header import read_model
from pipeline.gguf.quant_types import FLOAT_FILE_TYPES
from pipeline.llama.mix import LADDER, OTHER, GroupSizes, Rung, TypeMix, group_sizes, uniform
from pipeline.llama.quantize import QuantizeRequest, default_output_path, plan, quantize
from pipeline.measure.evaluate import Reference

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_PRESETS = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0")
BudgetProgress = Callable[[str, int, int], None]  # (what, done, of)


class Text(BaseModel):
    path: Path
    label: str  # where it came from (path, or repo:file@commit)
    sha256: str


class BudgetRequest(BaseModel):
    source: Path  # a float (F32/F16/BF16) GGUF: the reference every KLD is measured against
    budget_bytes: int
    calibration: Text
    evaluation: Text | None = None  # None: the calibration text's second half, never used to choose
    imatrix: Path | None = None
    imatrix_sha256: str | None = None
    n_ctx: int = 128  # tokens per scored chunk: a few short chunks tell groups apart
    calibration_chunks: int = 4
    evaluation_chunks: int | None = 8
    max_evals: int = 48
    threads: int | None = None
    output: Path | None = None


class Sensitivity(BaseModel):
    group: str
    type: str
    kld_mean: float  # the model with only this group at this type, the rest at Q8_0
    bytes: int


class Measured(BaseModel):
    """One model judged on the evaluation text."""

    name: str  # "mix" or a preset's type
    size_bytes: int
    bits_per_weight: float
    kld_mean: float
    kld_stdev: float
    ppl: float
    ppl_delta: float


class BudgetResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    source: str
    budget_bytes: int
    output: Path
    mix: dict[str, str]  # group -> ggml type
    params: QuantParams
    measured: Measured  # the mix, on the evaluation text
    presets: list[Measured]  # the uniform presets nearest in size, measured the same way
    sensitivities: list[Sensitivity]
    calibration_text: str
    evaluation_text: str
    evals: int
    seconds: float


def _rungs_within(max_evals: int, n_groups: int) -> list[Rung]:
    """The ladder types to try, cheapest and dearest kept, evenly thinned to fit `max_evals` runs."""
    lower = list(LADDER[:-1])
    allowed = max(1, (max_evals - 1) // max(n_groups, 1))
    if allowed >= len(lower):
        return [*lower, LADDER[-1]]
    step = (len(lower) - 1) / max(allowed - 1, 1)
    picked = sorted({round(i * step) for i in range(allowed)})
    return [*(lower[i] for i in picked), LADDER[-1]]


def best_mix(sizes: GroupSizes, cost: dict[str, dict[str, float]], budget_bytes: int) -> TypeMix | None:
    """The mix of least summed cost whose exact size fits the budget (None if even the cheapest does not).

    For each base type (the lowest type used, which tensors of no group take) a Pareto front of
    (bytes, cost) is grown group by group; dominated partial mixes are dropped, so the front stays small."""
    best: tuple[float, TypeMix] | None = None
    groups = sorted(cost)
    for base in LADDER:
        if not all(base.ggml in cost[g] for g in groups):
            continue
        fixed = sizes.header_bytes + sizes.groups.get(OTHER, {}).get(base.ggml, 0)
        front: list[tuple[int, float, dict[str, str]]] = [(fixed, 0.0, {})]
        for group in groups:
            grown = [
                (size + sizes.groups[group][kind], total + cost[group][kind], {**choice, group: kind})
                for size, total, choice in front
                for kind in cost[group]
                if LADDER.index(RUNG_OF[kind]) >= LADDER.index(base)
            ]
            grown.sort(key=lambda item: (item[0], item[1]))
            front = []
            for item in grown:
                if item[0] <= budget_bytes and (not front or item[1] < front[-1][1]):
                    front.append(item)
        for _size, total, choice in front:
            if base.ggml in choice.values() and (best is None or total < best[0]):
                best = (total, TypeMix(types=choice))
    return best[1] if best else None


RUNG_OF = {rung.ggml: rung for rung in LADDER}


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
        forget_sha256(mm_home(), path)
        for leftover in (path, path.with_name(path.name + ".mm.json"), mm_home().logs / f"quantize-{path.name}.log"):
            leftover.unlink(missing_ok=True)

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
    """Each group alone at each cheaper type, the rest at Q8_0: mean KLD on the calibration text."""
    groups = [g for g in sizes.groups if g != OTHER]
    rungs = _rungs_within(request.max_evals, len(groups))
    top = LADDER[-1]
    total = 1 + len(groups) * (len(rungs) - 1)
    with Reference(
        request.source, calibration.path, text=calibration.label, n_ctx=request.n_ctx,
        chunks=request.calibration_chunks, threads=request.threads,
    ) as reference:  # fmt: skip
        baseline = scratch.kld(reference, uniform(groups, top))
        if progress:
            progress("sensitivity", 1, total)
        found = [
            Sensitivity(group=g, type=top.ggml, kld_mean=baseline, bytes=sizes.groups[g][top.ggml]) for g in groups
        ]
        for group in groups:
            for rung in rungs[:-1]:
                mix = TypeMix(types={**uniform(groups, top).types, group: rung.ggml})
                value = scratch.kld(reference, mix)
                found.append(
                    Sensitivity(group=group, type=rung.ggml, kld_mean=value, bytes=sizes.groups[group][rung.ggml])
                )
                if progress:
                    progress("sensitivity", scratch.evals, total)
    return found


def _costs(found: list[Sensitivity]) -> dict[str, dict[str, float]]:
    """KLD added by each group's type over the all-Q8_0 baseline; noise below the baseline counts as none."""
    top = LADDER[-1].ggml
    baseline = {s.group: s.kld_mean for s in found if s.type == top}
    cost: dict[str, dict[str, float]] = {}
    for s in found:
        cost.setdefault(s.group, {})[s.type] = max(s.kld_mean - baseline[s.group], 0.0)
    return cost


def _step_down(mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes) -> TypeMix | None:
    """One group one type lower: the step adding the least cost per byte saved (None at the bottom)."""
    steps = []
    for group, kind in mix.types.items():
        lower = [k for k in cost[group] if LADDER.index(RUNG_OF[k]) < LADDER.index(RUNG_OF[kind])]
        if lower:
            below = max(lower, key=lambda k: LADDER.index(RUNG_OF[k]))
            saved = sizes.groups[group][kind] - sizes.groups[group][below]
            steps.append(((cost[group][below] - cost[group][kind]) / max(saved, 1), group, below))
    if not steps:
        return None
    _, group, below = min(steps)
    return TypeMix(types={**mix.types, group: below})


def _fitting(request: BudgetRequest, mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes) -> TypeMix:
    """`mix`, stepped down until llama.cpp's own dry run of the whole mix is within the budget."""
    current: TypeMix | None = mix
    while current is not None:
        planned = plan(request.source, current.params(request.imatrix, request.imatrix_sha256))
        if planned.file_bytes <= request.budget_bytes:
            return current
        current = _step_down(current, cost, sizes)
    raise QuantizeError(f"no mix of {request.source.name} fits {format_size(request.budget_bytes)}", param="budget")


def _written(
    request: BudgetRequest, mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes,
    sha256_of: Callable[..., str],
) -> tuple[TypeMix, Path]:  # fmt: skip
    """Write `mix`; the dry run estimates the header, so a file a few bytes over is removed and the mix
    stepped down once more (the file on disk is the judge)."""
    current: TypeMix | None = mix
    while current is not None:
        output = request.output or default_output_path(
            request.source, sha256_of(mm_home(), request.source), f"mix-{current.key()}"
        )
        params = current.params(request.imatrix, request.imatrix_sha256)
        quantize(QuantizeRequest(source=request.source, params=params, output=output, threads=request.threads))
        if output.stat().st_size <= request.budget_bytes:
            return current, output
        log.info("%s is %d bytes, over the budget: one step down", output, output.stat().st_size)
        forget_sha256(mm_home(), output)
        output.unlink()
        output.with_name(output.name + ".mm.json").unlink(missing_ok=True)
        current = _step_down(current, cost, sizes)
    raise QuantizeError(f"no mix of {request.source.name} fits {format_size(request.budget_bytes)}", param="budget")


def _nearest_presets(request: BudgetRequest) -> list[str]:
    """The largest uniform preset within the budget and the smallest above it (by llama.cpp's dry run)."""
    sized = sorted((plan(request.source, QuantParams(type=p)).file_bytes, p) for p in DEFAULT_PRESETS)
    under = [p for size, p in sized if size <= request.budget_bytes]
    over = [p for size, p in sized if size > request.budget_bytes]
    return under[-1:] + over[:1]


def _judged(reference: Reference, name: str, path: Path, n_elements: int) -> Measured:
    sums = reference.compare(path)
    figures = reference.result(path, sums, text="", text_sha256="", ref_sha256=None, seconds=0.0)
    size = path.stat().st_size
    return Measured(
        name=name, size_bytes=size, bits_per_weight=round(size * 8 / max(n_elements, 1), 3),
        kld_mean=figures.kld_mean, kld_stdev=figures.kld_stdev, ppl=figures.ppl, ppl_delta=figures.ppl_delta,
    )  # fmt: skip


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
    sizes = group_sizes(request.source, QuantParams(type="q8_0", imatrix_path=_str(request.imatrix)))
    groups = [g for g in sizes.groups if g != OTHER]
    cheapest = sizes.file_bytes(uniform(groups, LADDER[0]))
    if cheapest > request.budget_bytes:
        raise QuantizeError(
            f"budget {format_size(request.budget_bytes)} is below the smallest mix of {request.source.name} "
            f"({format_size(cheapest)}, every group at q2_k)",
            hint="give a larger budget, or a smaller model",
            param="budget",
        )
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
            cost = _costs(found)
            chosen = best_mix(sizes, cost, request.budget_bytes) or uniform(groups, LADDER[0])
            mix, output = _written(request, _fitting(request, chosen, cost, sizes), cost, sizes, file_sha256)
            params = mix.params(request.imatrix, request.imatrix_sha256)
            measured = _judged(reference, "mix", output, sizes.n_elements)
            presets = []
            for preset in _nearest_presets(request):
                made = quantize(QuantizeRequest(source=request.source, params=QuantParams(type=preset),
                                                threads=request.threads))  # fmt: skip
                presets.append(_judged(reference, preset, made.output, sizes.n_elements))
                scratch.evals += 1
    finally:
        scratch.close()
    return BudgetResult(
        source=str(request.source), budget_bytes=request.budget_bytes, output=output, mix=mix.types, params=params,
        measured=measured, presets=presets, sensitivities=found, calibration_text=calibration.label,
        evaluation_text=evaluation.label, evals=scratch.evals + 1,
        seconds=round(time.perf_counter() - started, 3),
    )  # fmt: skip


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
