"""The build's stages for one recipe, in order — resolve → download → verify → quantize → fit → publish.

Actions call the same library functions as `mm pull`, `mm quantize`, `mm fit` and `mm publish`; they import
them lazily so a no-op build never loads llama.cpp. Each stage module builds the stages of one part of the
flow: `source` (the GGUF quantize starts from), `quantize` (texts, imatrix, quantize), `measure` (fit, eval,
bench) and `publish` (profiles, push).
"""

from __future__ import annotations

from pipeline.build.stage import Stage, StageEnv
from pipeline.build.stages.measure import bench_stage, eval_stage, fit_stage
from pipeline.build.stages.publish import publish_stage, push_stage
from pipeline.build.stages.quantize import BUDGET, budget_stage, imatrix_stage, quantize_stage, text_stage
from pipeline.build.stages.source import convert_stage, download_stage, resolve_stage, snapshot_stage, verify_stage
from pipeline.spec.recipe import Recipe


def recipe_stages(recipe: Recipe, env: StageEnv) -> list[Stage]:
    """The ordered stages of a recipe; publish stages come last so a failure never touches a profile."""
    stages = [resolve_stage(recipe, env)]
    source = recipe.source
    if source.is_safetensors:  # a transformers checkpoint: convert stands where verify does
        stages += [] if source.is_local else [snapshot_stage(recipe, env)]
        stages.append(convert_stage(recipe, env))
    else:
        stages += [] if source.is_local else [download_stage(recipe, env)]
        stages.append(verify_stage(recipe, env))
    model = _model_stage(recipe)
    if recipe.quantize.imatrix == "auto" or recipe.quantize.budget:
        stages.append(text_stage(recipe, env, "calibration", recipe.imatrix.text))
    if recipe.quantize.imatrix == "auto":
        stages.append(imatrix_stage(recipe, env, model))
    stages += [quantize_stage(recipe, env, qtype, model) for qtype in recipe.quantize.types]
    types = list(recipe.quantize.types)
    if recipe.quantize.budget:
        stages.append(budget_stage(recipe, env, model))
        types.append(BUDGET)
    stages += [fit_stage(recipe, env, qtype) for qtype in types]
    if recipe.eval is not None:
        stages.append(text_stage(recipe, env, "eval-text", recipe.eval.text))
        stages += [eval_stage(recipe, env, qtype, model) for qtype in types]
    if recipe.bench is not None:
        stages += [bench_stage(recipe, env, qtype) for qtype in types]
    stages += [publish_stage(recipe, env, qtype, model) for qtype in types]
    if env.push and recipe.publish.repo is not None:
        stages.append(push_stage(recipe, env))
    return stages


def _model_stage(recipe: Recipe) -> str:
    """The stage whose `path`, `sha256` and `source_ref` are the GGUF quantize starts from."""
    return "convert" if recipe.source.is_safetensors else "verify"
