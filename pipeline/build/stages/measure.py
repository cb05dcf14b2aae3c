"""The stages that size and measure each quant: fit (predicted on the recipe's hardware), eval and bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.base.constants import VERSION
from pipeline.build.stage import Stage, StageEnv, StageOutcome, Upstream, fingerprint
from pipeline.build.values import Benched, Evaluated, Fitted, ModelFile, Text
from pipeline.resolve.model_ref import recipe_hardware
from pipeline.spec.recipe import Recipe


def fit_stage(recipe: Recipe, env: StageEnv, qtype: str) -> Stage:
    quant = f"quantize:{qtype}"

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "hardware": recipe_hardware(recipe).model_dump(mode="json"),
            "run": recipe.run.model_dump(mode="json", exclude={"n_threads"}),
            "llama_cpp": env.llama_cpp_version,
            "mm": VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.fitting.fit import fit_model

        result = fit_model(Path(up[quant].value(ModelFile).path), recipe_hardware(recipe), recipe.run)
        return StageOutcome.of(Fitted(fit=result.model_dump(mode="json")))

    return Stage(f"fit:{qtype}", (quant,), inputs, action)


# --- eval, bench: measured before publish, so the profile carries them ----------------------------------


def eval_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    """KLD and perplexity of the quant against the recipe's source model (mm eval)."""
    quant, settings = f"quantize:{qtype}", recipe.eval
    assert settings is not None

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "ref_sha256": up[model].value(ModelFile).sha256,
            "text_sha256": up["eval-text"].value(Text).text_sha256,
            "eval": settings.model_dump(mode="json", exclude={"text"}),
            **env.tool_versions,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.measure.evaluate import evaluate

        text = up["eval-text"].value(Text)
        result = evaluate(
            Path(up[quant].value(ModelFile).path), Path(up[model].value(ModelFile).path), Path(text.path),
            text=text.source, text_sha256=text.text_sha256, n_ctx=settings.ctx, chunks=settings.chunks,
            threads=recipe.run.n_threads, ref_sha256=up[model].value(ModelFile).sha256,
        )  # fmt: skip
        return StageOutcome.of(Evaluated(eval=result.model_dump(mode="json")))

    return Stage(f"eval:{qtype}", (quant, model, "eval-text"), inputs, action)


def bench_stage(recipe: Recipe, env: StageEnv, qtype: str) -> Stage:
    """pp/tg tokens/s of the quant with the fitted settings on this machine (mm bench)."""
    quant, fit, settings = f"quantize:{qtype}", f"fit:{qtype}", recipe.bench
    assert settings is not None

    def inputs(up: Upstream) -> dict[str, Any]:
        from pipeline.probe.local_machine import machine_identity

        cpu, cores, gpus = machine_identity()
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "fit_sha256": fingerprint(up[fit].value(Fitted).fit),
            "bench": settings.model_dump(mode="json"),
            "machine": [cpu, cores, list(gpus)],
            **env.tool_versions,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.fitting.fit import FitResult
        from pipeline.measure.bench import run_bench
        from pipeline.registry.measurements import with_prediction
        from pipeline.registry.profile import llama_kwargs

        path = Path(up[quant].value(ModelFile).path)
        fitted = FitResult.model_validate(up[fit].value(Fitted).fit)
        placed = fitted.settings.placed(
            fitted.n_gpu_layers, fitted.n_cpu_moe, fitted.tensor_overrides, recipe.run.n_threads
        )
        result = run_bench(
            llama_kwargs(str(path), placed), n_prompt=settings.n_prompt, n_gen=settings.n_gen,
            repetitions=settings.repetitions, tensor_overrides=placed.tensor_overrides,
        )  # fmt: skip
        result = with_prediction(result, path, placed)  # the placement measured, predicted for this machine
        return StageOutcome.of(Benched(bench=result.model_dump(mode="json")))

    return Stage(f"bench:{qtype}", (quant, fit), inputs, action)
