"""The quantize stages: the texts a build reads, the importance matrix, and one quantize per target type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.base.digest import file_sha256
from pipeline.base.provenance import QuantParams
from pipeline.build.stage import Stage, StageEnv, StageOutcome, Upstream, output_record, tensor_progress
from pipeline.build.values import ModelFile, Text
from pipeline.spec.recipe import Recipe


def _uses_built_imatrix(recipe: Recipe, qtype: str) -> bool:
    from pipeline.llama.imatrix import uses_imatrix

    return recipe.quantize.imatrix == "auto" and uses_imatrix(qtype)


def text_stage(recipe: Recipe, env: StageEnv, name: str, text: str | None) -> Stage:
    """A text (imatrix calibration, or eval), made local and verified (a Hub text on a branch: one metadata
    request); each has its own default when the recipe names none."""

    def inputs(_: Upstream) -> dict[str, Any]:
        return {"text": text}

    def action(_: Upstream) -> StageOutcome:
        from pipeline.resolve.texts import parse_text, resolve_text

        folder = recipe.path.parent if recipe.path else None
        if name == "calibration":
            from pipeline.llama.imatrix import calibration_text

            ref = calibration_text(text, folder)
        else:
            ref = parse_text(text, folder)
        resolved = resolve_text(ref, token=env.token, offline=env.offline)
        return StageOutcome.of(Text(path=str(resolved.path), text_sha256=resolved.sha256, source=resolved.source))

    changed = f"{name.removesuffix('-text')} text changed"  # "calibration text changed", "eval text changed"
    return Stage(name, (), inputs, action, volatile=True, changed_reason=changed)


def imatrix_stage(recipe: Recipe, env: StageEnv, model: str) -> Stage:
    settings = recipe.imatrix

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[model].value(ModelFile).sha256,
            "text_sha256": up["calibration"].value(Text).text_sha256,
            "imatrix": settings.model_dump(mode="json", exclude={"text"}),
            **env.tool_versions,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.llama.imatrix import ImatrixParams, calibration_model, make_imatrix
        from pipeline.resolve.texts import ResolvedText

        calibration = up["calibration"].value(Text)
        text = ResolvedText(
            path=Path(calibration.path),
            sha256=calibration.text_sha256,
            size_bytes=Path(calibration.path).stat().st_size,
            source=calibration.source,
        )
        source = calibration_model(Path(up[model].value(ModelFile).path), recipe.run.n_threads)
        params = ImatrixParams(chunks=settings.chunks, ctx=settings.ctx)
        with tensor_progress(env.quantize_progress, "imatrix") as progress:
            result = make_imatrix(source, text, params, threads=recipe.run.n_threads, progress=progress)
        out = output_record(env.home, result.output, result.record.sha256)
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256), [out])

    return Stage("imatrix", (model, "calibration"), inputs, action)


# --- quantize: one per target type ----------------------------------------------------------------------


def _quant_params(recipe: Recipe, env: StageEnv, qtype: str, up: Upstream) -> QuantParams:
    settings = recipe.quantize
    imatrix, imatrix_sha256 = None, None
    if _uses_built_imatrix(recipe, qtype):
        built = up["imatrix"].value(ModelFile)
        imatrix, imatrix_sha256 = Path(built.path), built.sha256
    elif isinstance(settings.imatrix, Path):
        imatrix = recipe.resolve(settings.imatrix)
        imatrix_sha256 = file_sha256(env.home, imatrix) if imatrix.is_file() else None
    return settings.params(qtype, str(imatrix) if imatrix else None, imatrix_sha256)


def quantize_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    def inputs(up: Upstream) -> dict[str, Any]:
        params = _quant_params(recipe, env, qtype, up).model_dump(mode="json")
        params.pop("imatrix_path")  # where the imatrix lives doesn't matter; its bytes do
        return {
            "source_sha256": up[model].value(ModelFile).sha256,
            "imatrix_sha256": params.pop("imatrix_sha256"),
            "params": params,
            "engine": recipe.quantize.engine,
            **env.tool_versions,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.llama.quantize import QuantizeRequest, quantize

        verified = up[model].value(ModelFile)
        request = QuantizeRequest(
            source=Path(verified.path),
            params=_quant_params(recipe, env, qtype, up),
            source_ref=verified.source_ref,
            engine=recipe.quantize.engine,
            threads=recipe.run.n_threads,
        )
        with tensor_progress(env.quantize_progress, f"quantize {qtype}") as progress:
            result = quantize(request, progress)
        sha = result.record.sha256 if result.record is not None else None
        out = output_record(env.home, Path(result.output), sha)
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256), [out])

    deps = (model, "imatrix") if _uses_built_imatrix(recipe, qtype) else (model,)
    return Stage(f"quantize:{qtype}", deps, inputs, action)


BUDGET = "budget"  # the pseudo-type of a recipe's budget output: stages quantize:budget, fit:budget, ...


def budget_stage(recipe: Recipe, env: StageEnv, model: str) -> Stage:
    """`[quantize] budget`: the per-tensor mix chosen by measured KLD on the calibration text (its held-out
    half judges it); a new source, text, budget or target rebuilds it."""
    settings = recipe.quantize
    fits = (settings.budget or "").strip().lower() == "fit"

    def inputs(up: Upstream) -> dict[str, Any]:
        from pipeline.resolve.model_ref import recipe_hardware

        return {
            "source_sha256": up[model].value(ModelFile).sha256,
            "text_sha256": up["calibration"].value(Text).text_sha256,
            "budget": settings.budget,
            "max_evals": settings.budget_max_evals,
            **({"bands": settings.budget_bands} if settings.budget_bands > 1 else {}),  # old stamps stay valid
            "target": {"hardware": recipe_hardware(recipe).model_dump(mode="json"), "run": recipe.run.model_dump(
                mode="json")} if fits else None,
            **env.tool_versions,
        }  # fmt: skip

    def action(up: Upstream) -> StageOutcome:
        from pipeline.base.units import parse_size
        from pipeline.measure.budget import BudgetRequest, FitTarget, quantize_budget
        from pipeline.measure.budget import Text as BudgetText
        from pipeline.resolve.model_ref import recipe_hardware

        calibration = up["calibration"].value(Text)
        target = FitTarget(hardware=recipe_hardware(recipe), settings=recipe.run) if fits else None
        request = BudgetRequest(
            source=Path(up[model].value(ModelFile).path),
            budget_bytes=None if fits else parse_size(settings.budget or "", what="budget"), fit_target=target,
            calibration=BudgetText(path=Path(calibration.path), label=calibration.source,
                                   sha256=calibration.text_sha256),
            max_evals=settings.budget_max_evals, bands=settings.budget_bands, threads=recipe.run.n_threads,
        )  # fmt: skip
        result = quantize_budget(request)
        out = output_record(env.home, result.output, file_sha256(env.home, result.output))
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256), [out])

    return Stage(f"quantize:{BUDGET}", (model, "calibration"), inputs, action)
