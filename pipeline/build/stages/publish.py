"""The stages that publish: a profile per quant type in the registry, and the push of all of them to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.build.stage import STAGE_VERSION, Stage, StageEnv, StageOutcome, Upstream, fingerprint, output_record
from pipeline.build.values import Benched, Evaluated, Fitted, ModelFile, Published, Pushed
from pipeline.resolve.model_ref import recipe_hardware
from pipeline.spec.recipe import Recipe


def profile_name(recipe: Recipe, qtype: str) -> str:
    """One profile per recipe and quant type, named `<model>-<quant>@<hardware>` as every profile is."""
    return f"{recipe.name}-{qtype}@{recipe.hardware}"


def _source_json(model: ModelFile) -> dict[str, Any] | None:
    """The source as the publish fingerprint has always held it (its JSON)."""
    return model.source_ref.model_dump(mode="json") if model.source_ref is not None else None


def _measured(recipe: Recipe, qtype: str) -> tuple[str, ...]:
    return (f"eval:{qtype}",) * (recipe.eval is not None) + (f"bench:{qtype}",) * (recipe.bench is not None)


def publish_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    quant, fit = f"quantize:{qtype}", f"fit:{qtype}"
    name = profile_name(recipe, qtype)
    measured = _measured(recipe, qtype)

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "fit_sha256": fingerprint(up[fit].value(Fitted).fit),
            "source": _source_json(up[model].value(ModelFile)),
            "profile": name,
            # source and quantize reach the profile through model_sha256 and source; listing them here
            # would republish every type when one is added to the recipe. Where it is pushed doesn't matter.
            "recipe": recipe.model_dump(
                mode="json", exclude={"source", "convert", "imatrix", "quantize", "publish", "eval", "bench"}
            ),
            "stage_version": STAGE_VERSION,
            **{stage: fingerprint(up[stage].values) for stage in measured},
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.fitting.fit import FitResult
        from pipeline.registry.store import profile_path, publish

        fit_result = FitResult.model_validate(up[fit].value(Fitted).fit)
        model = Path(up[quant].value(ModelFile).path)
        profile = publish(
            model, recipe_hardware(recipe), fit_result, name=name, recipe=recipe, threads=recipe.run.n_threads
        )
        if measured:
            from pipeline.registry.store import record_measurement
            from pipeline.spec.results import BenchResult, EvalResult

            bench = up[f"bench:{qtype}"].value(Benched).bench if f"bench:{qtype}" in measured else None
            evaluation = up[f"eval:{qtype}"].value(Evaluated).eval if f"eval:{qtype}" in measured else None
            record_measurement(
                profile.name,
                bench=BenchResult.model_validate(bench) if bench is not None else None,
                evaluation=EvalResult.model_validate(evaluation) if evaluation is not None else None,
            )
        document = profile_path(env.home, profile.name)
        return StageOutcome.of(Published(profile=profile.name), [output_record(env.home, document)])

    return Stage(f"publish:{qtype}", (quant, fit, model, *measured), inputs, action)


# --- push: every published profile of the recipe to its Hub repo, in one commit ------------------------------


def push_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """Runs when a profile document changed or the target changed; push itself sends only what the repo lacks.

    A failed push writes no stamp, so the next build tries again.
    """
    publishes = tuple(f"publish:{qtype}" for qtype in recipe.quantize.types)
    target = recipe.publish

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "repo": target.repo,
            "revision": target.revision,
            "private": target.private,
            "profile_sha256": {up[p].value(Published).profile: up[p].outputs[0].sha256 for p in publishes},
            "stage_version": STAGE_VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.registry.push import push

        assert target.repo is not None
        names = [up[p].value(Published).profile for p in publishes]
        report = push(names, target.repo, revision=target.revision, private=target.private, token=env.token)
        return StageOutcome.of(Pushed(repo=report.repo, commit=report.commit, uploaded=report.uploaded))

    return Stage("push", publishes, inputs, action)
