"""What `mm bench` and `mm eval` measure, and where it goes: a profile's exact settings (or a model with
flags), the prediction for this machine beside the measurement, and the profile that stores both."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.base.errors import RegistryError, UsageError
from pipeline.fitting.fit import fit_model
from pipeline.hub.transfer import ProgressFactory
from pipeline.measure.bench import BenchProgress, run_bench
from pipeline.measure.evaluate import EvalProgress, evaluate
from pipeline.probe.local_machine import default_threads
from pipeline.registry.profile import NAME_RE, Profile, llama_kwargs
from pipeline.resolve.texts import parse_text, resolve_text
from pipeline.spec.results import BenchResult, EvalResult
from pipeline.spec.run_settings import RunSettings


class Target(NamedTuple):
    path: Path
    kwargs: dict[str, Any]  # llama_cpp.Llama(...) keyword arguments
    settings: RunSettings
    profile: Profile | None
    tensor_overrides: list[str]  # the profile's -ot strings (experts kept in RAM), loaded with the model


def resolve_target(target: str, recipes: Path | None = None, flags: Mapping[str, Any] | None = None) -> Target:
    """A profile name (its exact settings), else a MODEL with the recipe's [run] (on the CPU); either with
    `flags` (RunSettings fields a user gave) on top, on the physical cores (llama-bench's default) unless they
    name the threads."""
    from pipeline.registry.run import run_kwargs
    from pipeline.registry.store import get_profile

    profile: Profile | None = None
    if NAME_RE.match(target) and not target.endswith(".gguf"):
        try:
            profile = get_profile(target)
        except RegistryError:
            profile = None
    if profile is not None:
        run = _on_default_threads(profile.run.with_flags(**(flags or {})))
        kwargs = run_kwargs(profile, run=run)
        return Target(Path(kwargs["model_path"]), kwargs, run, profile, run.tensor_overrides)
    from pipeline.resolve.model_ref import resolve_model

    path, recipe, _ = resolve_model(target, recipes)
    on_cpu = (recipe.run if recipe else RunSettings()).with_flags(**{"n_gpu_layers": 0, **(flags or {})})
    run = _on_default_threads(on_cpu)
    return Target(path, llama_kwargs(str(path), run), run, None, [])


def _on_default_threads(run: RunSettings) -> RunSettings:
    return run if run.n_threads is not None else run.model_copy(update={"n_threads": default_threads()})


def bench(
    target: str, recipes: Path | None = None, *, flags: Mapping[str, Any] | None = None, n_prompt: int = 512,
    n_gen: int = 128, repetitions: int = 5, store: bool = True, progress: BenchProgress | None = None,
) -> BenchResult:  # fmt: skip
    """Measure pp/tg on this machine, predict tg for this machine, store both in the profile (if one)."""
    from pipeline.registry.store import record_measurement

    resolved = resolve_target(target, recipes, flags)
    result = run_bench(
        resolved.kwargs, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions, progress=progress,
        tensor_overrides=resolved.tensor_overrides,
    )  # fmt: skip
    result = with_prediction(result, resolved.path, resolved.settings)
    if store and resolved.profile is not None:
        record_measurement(resolved.profile.name, bench=result)
    return result


def with_prediction(result: BenchResult, path: Path, settings: RunSettings) -> BenchResult:
    """The measurement with fit's decode prediction beside it: this machine's class (mm hw --measure's
    rates, else datasheet figures), the settings and placement measured, the threads it ran on."""
    from pipeline.probe.local_machine import local_class

    local = local_class()
    fit = fit_model(path, local, settings.model_copy(update={"n_threads": result.threads}))
    measured = "datasheet figures" if local.measured == "datasheet" else "mm hw --measure"
    update = {"predicted_tg_ts": fit.tokens_per_second, "predicted_pp_ts": fit.prompt_tokens_per_second,
              "predicted_tg_spread": fit.tokens_per_second_spread or None}  # fmt: skip
    return result.model_copy(update={**update, "hardware": f"{local.name} ({measured}, {fit.speed_basis})"})


def eval_quant(
    target: str, ref: str | None, recipes: Path | None = None, *, text: str | None = None, n_ctx: int = 512,
    chunks: int | None = None, threads: int | None = None, store: bool = True, token: str | None = None,
    offline: bool = False, progress: EvalProgress | None = None, download: ProgressFactory | None = None,
) -> EvalResult:  # fmt: skip
    """KLD and perplexity of a profile or MODEL against `ref` on a text; stored in the profile (if one)."""
    from pipeline.base.digest import file_sha256
    from pipeline.base.home import mm_home
    from pipeline.registry.store import record_measurement
    from pipeline.resolve.model_ref import resolve_model

    resolved = resolve_target(target, recipes, {"n_threads": threads} if threads is not None else None)
    if not ref:
        raise UsageError(
            "mm eval needs a reference: the model the quant is compared with (its f16/bf16 source)", param="ref"
        )
    ref_path, _, _ = resolve_model(ref, recipes, token=token, offline=offline)
    chosen = resolve_text(parse_text(text), token=token, offline=offline, progress=download)
    result = evaluate(
        resolved.path, ref_path, chosen.path, text=chosen.source, text_sha256=chosen.sha256, n_ctx=n_ctx,
        chunks=chunks, threads=resolved.kwargs.get("n_threads"), ref_sha256=file_sha256(mm_home(), ref_path),
        progress=progress,
    )  # fmt: skip
    if store and resolved.profile is not None:
        record_measurement(resolved.profile.name, evaluation=result)
    return result


def measured_quality(model: Path) -> dict[str, EvalResult]:
    """The newest `mm eval` against `model` stored in any profile, by the profile's quant type.

    `model` is matched by its recorded sha256 only (a file mm pulled, built or evaluated against):
    a model never hashed is not hashed here, so `mm fit` stays a header-only command.
    """
    from pipeline.base.digest import cached_sha256
    from pipeline.base.home import mm_home
    from pipeline.registry.store import list_profiles

    sha256 = cached_sha256(mm_home(), model)
    if sha256 is None:
        return {}
    found: dict[str, EvalResult] = {}
    for profile in list_profiles()[0]:
        for result in profile.measured.evals:
            older = found.get(profile.quant)
            if result.ref_sha256 == sha256 and (older is None or result.measured_at > older.measured_at):
                found[profile.quant] = result
    return found
