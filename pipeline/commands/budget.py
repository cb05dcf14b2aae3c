"""`mm quantize --budget`: the per-tensor type mix chosen by measured KL-divergence under a size budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipeline.base.errors import UsageError
from pipeline.base.units import format_size, parse_size
from pipeline.commands.options import parse_memory
from pipeline.commands.render import emit_json, note, show_progress, table


class FitFlags(NamedTuple):
    """The target of `--budget fit`, as the flags gave it."""

    hardware: str | None
    vram: str | None
    ram: str | None
    ctx: int | None


if TYPE_CHECKING:
    from pipeline.base.mix_record import MixRecord
    from pipeline.measure.budget import BudgetResult, Text


def _text(value: str) -> Text:
    from pipeline.measure.budget import Text
    from pipeline.resolve.texts import parse_text, resolve_text

    resolved = resolve_text(parse_text(value))
    return Text(path=resolved.path, label=resolved.source, sha256=resolved.sha256)


def quantize_to_budget(
    model: str, budget: str, flags: FitFlags, *, text: str | None, eval_text: str | None, max_evals: int, bands: int,
    imatrix: Path | None, threads: int | None, output: Path | None, recipes: Path | None, as_json: bool, quiet: bool,
) -> None:  # fmt: skip
    """Resolve MODEL and the texts, run the measured search with a progress bar, render the result."""
    from tqdm import tqdm

    from pipeline.llama.imatrix import calibration_text
    from pipeline.measure.budget import BudgetRequest, FitTarget, quantize_budget
    from pipeline.resolve.model_ref import resolve_model, target_hardware
    from pipeline.resolve.texts import resolve_text
    from pipeline.spec.run_settings import RunSettings

    resolved = resolve_model(model, recipes)
    fit_target = None
    if budget.strip().lower() == "fit":
        budget_bytes = None
        fit_target = FitTarget(
            hardware=target_hardware(flags.hardware, parse_memory(flags.vram, "--vram"),
                                     parse_memory(flags.ram, "--ram"), resolved.recipe, recipes),
            settings=(resolved.recipe.run if resolved.recipe else RunSettings()).with_flags(n_ctx=flags.ctx),
        )  # fmt: skip
    elif any(value is not None for value in flags):
        raise UsageError("--hardware, --vram, --ram and --ctx size a --budget fit, not a --budget SIZE")
    else:
        budget_bytes = parse_size(budget, what="--budget")
    path = resolved.path
    calibration = resolve_text(calibration_text(text))
    request = BudgetRequest(
        source=path, budget_bytes=budget_bytes, fit_target=fit_target,
        calibration=_text(str(calibration.path)).model_copy(update={"label": calibration.source}),
        evaluation=_text(eval_text) if eval_text else None, imatrix=imatrix, max_evals=max_evals, bands=bands,
        threads=threads, output=output,
    )  # fmt: skip
    with tqdm(desc="measuring", unit="run", disable=not show_progress(quiet), leave=False) as bar:

        def progress(what: str, done: int, total: int) -> None:
            bar.set_description(what)
            bar.total = total
            bar.update(done - bar.n)

        result = quantize_budget(request, progress)
    if as_json:
        emit_json(result)
        return
    _show(result)


def _show(result: BudgetResult) -> None:
    show_mix(result)
    note(
        f"{result.output} ({format_size(result.measured.size_bytes)} of {format_size(result.budget_bytes)}); "
        f"chosen on {result.calibration_text}, judged on {result.evaluation_text}; "
        f"{result.evals} measured runs in {result.seconds:.0f} s"
    )


def show_mix(record: MixRecord) -> None:
    """The mix (group -> type) and its figures beside the nearest uniform presets: `mm quantize --budget`,
    `mm show`."""
    table(["group", "type"], [[group, kind.lower()] for group, kind in record.mix.items()])
    rows = [record.measured, *record.presets]
    table(
        ["quant", "size", "bpw", "mean KLD", "ppl", "Δppl"],
        [[m.name, format_size(m.size_bytes), m.bits_per_weight, f"{m.kld_mean:.5f} ± {m.kld_stdev:.5f}",
          f"{m.ppl:.4f}", f"{m.ppl_delta:+.4f}"] for m in rows],
    )  # fmt: skip
