"""The build's stages for one recipe — resolve → download → verify → quantize → fit → publish — and their inputs.

Each stage declares the inputs its output depends on (fingerprinted by the runner as canonical JSON) and
an action that produces outputs. Actions call the same library functions as `mm pull`, `mm quantize`,
`mm fit` and `mm publish`; they import them lazily so a no-op build never loads llama.cpp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from pipeline import __version__
from pipeline.base.digest import cached_sha256, file_sha256, record_sha256
from pipeline.base.home import Home
from pipeline.base.provenance import PIN, QuantParams, SourceRef, check_sha256, source_ref
from pipeline.base.safe_names import COMMIT_RE
from pipeline.build.values import (
    Benched,
    Downloaded,
    Evaluated,
    Fitted,
    ModelFile,
    Published,
    Pushed,
    Resolved,
    SnapshotFiles,
    StageValue,
    Text,
)
from pipeline.llama.tools import llama_cpp_version
from pipeline.resolve.model_ref import recipe_hardware, recipe_source_path
from pipeline.spec.recipe import Recipe

if TYPE_CHECKING:  # huggingface_hub loads with pipeline.hub.transfer: only when a transfer runs
    from pipeline.hub.transfer import Progress, ProgressFactory

# Bumped when a stage's action changes what it produces, so stamps of the old action are stale.
STAGE_VERSION = 1
V = TypeVar("V", bound=StageValue)


class OutputRecord(BaseModel):
    """A file a stage produced, with the digest it had when the stage finished."""

    path: str
    size_bytes: int
    sha256: str


class StageOutcome(BaseModel):
    """What a stage hands on: files it produced and its value (a stage_values model, stored as its JSON)."""

    outputs: list[OutputRecord] = Field(default_factory=list)
    values: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, value: StageValue, outputs: Sequence[OutputRecord] = ()) -> StageOutcome:
        return cls(outputs=list(outputs), values=value.model_dump(mode="json", exclude_none=True))

    def value(self, kind: type[V]) -> V:
        """The stage's value as the model it was written from (fails loudly if it is another kind)."""
        return kind.model_validate(self.values)


Upstream = Mapping[str, StageOutcome]


def _commit(up: Upstream) -> str:
    commit = up["resolve"].value(Resolved).commit
    assert commit is not None, "resolve names a commit for a Hub source"
    return commit


def _source_json(model: ModelFile) -> dict[str, Any] | None:
    """The source as the publish fingerprint has always held it (its JSON)."""
    return model.source_ref.model_dump(mode="json") if model.source_ref is not None else None


@dataclass(frozen=True)
class Stage:
    """One unit of work: `inputs(upstream)` is fingerprinted; `action(upstream)` does the work.

    A `volatile` stage (resolve) is itself the up-to-date check: it runs every time (cheap, read-only)
    and counts as skipped when its outcome is unchanged; `changed_reason` is what a changed outcome means.
    """

    name: str
    deps: tuple[str, ...]
    inputs: Callable[[Upstream], dict[str, Any]]
    action: Callable[[Upstream], StageOutcome]
    volatile: bool = False
    changed_reason: str = "result changed"


@dataclass(frozen=True)
class StageEnv:
    """What every stage of a build shares: the home, Hub access, and the llama.cpp in use."""

    home: Home
    token: str | None = None
    offline: bool = False
    push: bool = False  # `mm build --push`: recipes with [publish] repo push their profiles after publishing
    llama_cpp_version: str = field(default_factory=llama_cpp_version)
    download_progress: ProgressFactory | None = None  # a bar per file (bytes), when someone is watching
    quantize_progress: ProgressFactory | None = None  # a bar per quantize (tensors)


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs' canonical JSON (sorted keys, no whitespace), as doit's config_changed."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def output_record(home: Home, path: Path, sha256: str | None = None) -> OutputRecord:
    """Describe a produced file; its digest is remembered so later checks need only a stat."""
    digest = sha256 or file_sha256(home, path)
    if sha256 is not None and cached_sha256(home, path) != sha256:
        record_sha256(home, path, sha256)
    return OutputRecord(path=str(path), size_bytes=path.stat().st_size, sha256=digest)


def check_output(home: Home, output: OutputRecord) -> str | None:
    """None when the file is still what the stage produced, else why not. Cheap first: stat, then cache.

    A file whose stat changed since its digest was recorded is re-hashed (touched is not changed).
    """
    path = Path(output.path)
    try:
        size = path.stat().st_size
    except OSError:
        return f"output missing: {path}"
    if size != output.size_bytes:
        return f"output changed: {path}"
    digest = cached_sha256(home, path) or file_sha256(home, path)
    return None if digest == output.sha256 else f"output changed: {path}"


def profile_name(recipe_name: str, qtype: str) -> str:
    """One profile per recipe and quant type."""
    return f"{recipe_name}-{qtype}"


def recipe_stages(recipe: Recipe, env: StageEnv) -> list[Stage]:
    """The ordered stages of a recipe; publish stages come last so a failure never touches a profile."""
    stages = [_resolve_stage(recipe, env)]
    source = recipe.source
    if source.is_safetensors:  # a transformers checkpoint: convert stands where verify does
        stages += [] if source.is_local else [_snapshot_stage(recipe, env)]
        stages.append(_convert_stage(recipe, env))
    else:
        stages += [] if source.is_local else [_download_stage(recipe, env)]
        stages.append(_verify_stage(recipe, env))
    model = _model_stage(recipe)
    if recipe.quantize.imatrix == "auto":
        stages += [_text_stage(recipe, env, "calibration", recipe.imatrix.text), _imatrix_stage(recipe, env, model)]
    types = recipe.quantize.types
    stages += [_quantize_stage(recipe, env, qtype, model) for qtype in types]
    stages += [_fit_stage(recipe, env, qtype) for qtype in types]
    if recipe.eval is not None:
        stages.append(_text_stage(recipe, env, "eval-text", recipe.eval.text))
        stages += [_eval_stage(recipe, env, qtype, model) for qtype in types]
    if recipe.bench is not None:
        stages += [_bench_stage(recipe, env, qtype) for qtype in types]
    stages += [_publish_stage(recipe, env, qtype, model) for qtype in types]
    if env.push and recipe.publish.repo is not None:
        stages.append(_push_stage(recipe, env))
    return stages


# --- resolve: revision → commit (hub), or the local file's digest --------------------------------


def _resolve_stage(recipe: Recipe, env: StageEnv) -> Stage:
    source = recipe.source

    def inputs(_: Upstream) -> dict[str, Any]:
        if source.is_local and source.is_safetensors:
            return {"folder": str(_model_folder(recipe))}
        if source.is_local:
            return {"path": str(recipe_source_path(recipe, must_exist=False))}
        return {"repo": source.repo, "revision": source.revision}

    def action(_: Upstream) -> StageOutcome:
        if source.is_local and source.is_safetensors:
            from pipeline.convert.converter import local_snapshot

            return StageOutcome.of(Resolved(snapshot=local_snapshot(_model_folder(recipe)).model_dump(mode="json")))
        if source.is_local:
            path = recipe_source_path(recipe)
            return StageOutcome.of(Resolved(sha256=file_sha256(env.home, path), size_bytes=path.stat().st_size))
        assert source.repo is not None
        if COMMIT_RE.match(source.revision):
            return StageOutcome.of(Resolved(commit=source.revision))  # pinned: no network at all
        from pipeline.hub.api import resolve_commit

        commit = resolve_commit(source.repo, source.revision, token=env.token, offline=env.offline)
        return StageOutcome.of(Resolved(commit=commit))

    changed = "source file changed" if source.is_local else "new upstream commit"
    return Stage("resolve", (), inputs, action, volatile=True, changed_reason=changed)


# --- download + verify ------------------------------------------------------------------------------


def _download_stage(recipe: Recipe, env: StageEnv) -> Stage:
    source = recipe.source

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "repo": source.repo,
            "file": source.file,
            "commit": up["resolve"].value(Resolved).commit,
            "pin": source.sha256,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.hub.download import pull

        assert source.repo is not None and source.file is not None
        commit = _commit(up)
        files = pull(
            source.repo, source.file, commit, token=env.token, offline=env.offline, expected_sha256=source.sha256,
            progress=env.download_progress,
        )  # fmt: skip
        from pipeline.hub.cache import write_ref

        write_ref(source.repo, source.revision, commit)  # as `mm pull` does: --offline and huggingface_hub find it
        ref = source_ref(Path(files[0].path), revision=source.revision)
        outputs = [output_record(env.home, Path(f.path), f.sha256) for f in files]
        return StageOutcome.of(Downloaded(source_ref=ref), outputs)

    return Stage("download", ("resolve",), inputs, action)


def _verify_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """Check the source bytes against the digests they must have (Hub LFS sha256, the recipe's pin)."""
    local = recipe.source.is_local
    dep = "resolve" if local else "download"
    pin = recipe.source.sha256

    def inputs(up: Upstream) -> dict[str, Any]:
        if local:
            return {
                "path": str(recipe_source_path(recipe, must_exist=False)),
                "source_sha256": up["resolve"].value(Resolved).sha256,
                "pin": pin,
            }
        return {"source_sha256": [o.sha256 for o in up["download"].outputs], "pin": pin}

    def action(up: Upstream) -> StageOutcome:
        if local:
            path = recipe_source_path(recipe, must_exist=False)
            expected = [OutputRecord(path=str(path), size_bytes=path.stat().st_size, sha256=pin or "")]
        else:
            expected = up["download"].outputs
        outputs = []
        for index, item in enumerate(expected):
            path = Path(item.path)
            actual = file_sha256(env.home, path)
            pinned = bool(pin) and index == 0
            check_sha256(
                str(path),
                actual,
                pin if pinned else item.sha256,
                against=PIN if pinned else "the Hub's LFS sha256",
                hint="delete the file and rebuild, or fix the pin in the recipe",
            )
            outputs.append(OutputRecord(path=str(path), size_bytes=path.stat().st_size, sha256=actual))
        ref = _verified_source(local, up, outputs)
        return StageOutcome.of(ModelFile(path=outputs[0].path, sha256=outputs[0].sha256, source_ref=ref), outputs)

    return Stage("verify", (dep,), inputs, action)


def _verified_source(local: bool, up: Upstream, outputs: list[OutputRecord]) -> SourceRef:
    if not local:
        return up["download"].value(Downloaded).source_ref
    return source_ref(Path(outputs[0].path))


# --- convert (safetensors sources) and the importance matrix ---------------------------------------------


def _model_stage(recipe: Recipe) -> str:
    """The stage whose `path`, `sha256` and `source_ref` are the GGUF quantize starts from."""
    return "convert" if recipe.source.is_safetensors else "verify"


def _model_folder(recipe: Recipe) -> Path:
    assert recipe.source.path is not None
    return recipe.resolve(recipe.source.path.expanduser()).resolve()


def _snapshot_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """The files conversion reads, at the resolved commit, pulled and verified like `mm pull`."""
    source = recipe.source

    def inputs(up: Upstream) -> dict[str, Any]:
        return {"repo": source.repo, "commit": up["resolve"].value(Resolved).commit, "stage_version": STAGE_VERSION}

    def action(up: Upstream) -> StageOutcome:
        from pipeline.convert.converter import pull_snapshot
        from pipeline.hub.cache import write_ref

        assert source.repo is not None
        commit = _commit(up)
        snapshot = pull_snapshot(
            source.repo, commit, token=env.token, offline=env.offline, progress=env.download_progress
        ).model_copy(update={"revision": source.revision})
        write_ref(source.repo, source.revision, commit)
        outputs = [output_record(env.home, snapshot.folder / f.name, f.sha256) for f in snapshot.files]
        return StageOutcome.of(SnapshotFiles(snapshot=snapshot.model_dump(mode="json")), outputs)

    return Stage("download", ("resolve",), inputs, action)


def _convert_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """llama.cpp's convert_hf_to_gguf.py; its output is what quantize starts from."""
    dep = "resolve" if recipe.source.is_local else "download"

    def inputs(up: Upstream) -> dict[str, Any]:
        snapshot = up[dep].value(SnapshotFiles).snapshot
        return {
            "commit": snapshot["commit"],
            "snapshot": [(f["name"], f["sha256"]) for f in snapshot["files"]],
            "outtype": recipe.convert.outtype,
            "llama_cpp": env.llama_cpp_version,  # the converter comes from the same llama.cpp source
            "stage_version": STAGE_VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.convert.converter import Snapshot, convert

        snapshot = Snapshot.model_validate(up[dep].value(SnapshotFiles).snapshot)
        with _tensor_progress(env.quantize_progress, f"convert {snapshot.name}") as progress:
            result = convert(snapshot, recipe.convert.outtype, progress=progress)
        out = output_record(env.home, result.output, result.record.sha256)
        ref = result.record.source_ref()
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256, source_ref=ref), [out])

    return Stage("convert", (dep,), inputs, action)


def _uses_built_imatrix(recipe: Recipe, qtype: str) -> bool:
    from pipeline.llama.imatrix import uses_imatrix

    return recipe.quantize.imatrix == "auto" and uses_imatrix(qtype)


def _text_stage(recipe: Recipe, env: StageEnv, name: str, text: str | None) -> Stage:
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


def _imatrix_stage(recipe: Recipe, env: StageEnv, model: str) -> Stage:
    settings = recipe.imatrix

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[model].value(ModelFile).sha256,
            "text_sha256": up["calibration"].value(Text).text_sha256,
            "imatrix": settings.model_dump(mode="json", exclude={"text"}),
            "llama_cpp": env.llama_cpp_version,
            "stage_version": STAGE_VERSION,
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
        source = calibration_model(Path(up[model].value(ModelFile).path), recipe.run.threads)
        params = ImatrixParams(chunks=settings.chunks, ctx=settings.ctx)
        with _tensor_progress(env.quantize_progress, "imatrix") as progress:
            result = make_imatrix(source, text, params, threads=recipe.run.threads, progress=progress)
        out = output_record(env.home, result.output, result.record.sha256)
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256), [out])

    return Stage("imatrix", (model, "calibration"), inputs, action)


# --- quantize, fit, publish: one of each per target type -------------------------------------------


def _quant_params(recipe: Recipe, env: StageEnv, qtype: str, up: Upstream) -> QuantParams:
    settings = recipe.quantize
    imatrix, imatrix_sha256 = None, None
    if _uses_built_imatrix(recipe, qtype):
        built = up["imatrix"].value(ModelFile)
        imatrix, imatrix_sha256 = Path(built.path), built.sha256
    elif isinstance(settings.imatrix, Path):
        imatrix = recipe.resolve(settings.imatrix)
        imatrix_sha256 = file_sha256(env.home, imatrix) if imatrix.is_file() else None
    return QuantParams(
        type=qtype,
        allow_requantize=settings.allow_requantize,
        imatrix_path=str(imatrix) if imatrix else None,
        imatrix_sha256=imatrix_sha256,
        output_tensor_type=settings.output_tensor_type,
        token_embedding_type=settings.token_embedding_type,
        tensor_types=settings.tensor_types,
        pure=settings.pure,
        leave_output_tensor=settings.leave_output_tensor,
    )


def _quantize_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    def inputs(up: Upstream) -> dict[str, Any]:
        params = _quant_params(recipe, env, qtype, up).model_dump(mode="json")
        params.pop("imatrix_path")  # where the imatrix lives doesn't matter; its bytes do
        return {
            "source_sha256": up[model].value(ModelFile).sha256,
            "imatrix_sha256": params.pop("imatrix_sha256"),
            "params": params,
            "engine": recipe.quantize.engine,
            "llama_cpp": env.llama_cpp_version,
            "stage_version": STAGE_VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.llama.quantize import QuantizeRequest, quantize

        verified = up[model].value(ModelFile)
        request = QuantizeRequest(
            source=Path(verified.path),
            params=_quant_params(recipe, env, qtype, up),
            source_ref=verified.source_ref,
            engine=recipe.quantize.engine,
            threads=recipe.run.threads,
        )
        with _tensor_progress(env.quantize_progress, f"quantize {qtype}") as progress:
            result = quantize(request, progress)
        sha = result.record.sha256 if result.record is not None else None
        out = output_record(env.home, Path(result.output), sha)
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256), [out])

    deps = (model, "imatrix") if _uses_built_imatrix(recipe, qtype) else (model,)
    return Stage(f"quantize:{qtype}", deps, inputs, action)


@contextlib.contextmanager
def _tensor_progress(factory: ProgressFactory | None, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """quantize's (done, total) callback drawn on a bar from `factory`, made once the total is known."""
    if factory is None:
        yield None
        return
    bar: list[Progress] = []
    last = [0]

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(factory(label, total, 0))
        bar[0].update(done - last[0])
        last[0] = done

    try:
        yield progress
    finally:
        if bar:
            bar[0].close()


def _fit_stage(recipe: Recipe, env: StageEnv, qtype: str) -> Stage:
    quant = f"quantize:{qtype}"

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "hardware": recipe_hardware(recipe).model_dump(mode="json"),
            "run": recipe.run.model_dump(mode="json", exclude={"threads"}),
            "llama_cpp": env.llama_cpp_version,
            "mm": __version__,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.fitting.fit import fit_model

        result = fit_model(Path(up[quant].value(ModelFile).path), recipe_hardware(recipe), fit_settings(recipe))
        return StageOutcome.of(Fitted(fit=result.model_dump(mode="json")))

    return Stage(f"fit:{qtype}", (quant,), inputs, action)


def fit_settings(recipe: Recipe) -> Any:
    """The recipe's [run] section as fit's settings (typed Any: fit is imported only when used)."""
    from pipeline.fitting.fit import FitSettings

    return FitSettings.for_recipe(recipe)


# --- eval, bench: measured before publish, so the profile carries them ----------------------------------


def _eval_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    """KLD and perplexity of the quant against the recipe's source model (mm eval)."""
    quant, settings = f"quantize:{qtype}", recipe.eval
    assert settings is not None

    def inputs(up: Upstream) -> dict[str, Any]:
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "ref_sha256": up[model].value(ModelFile).sha256,
            "text_sha256": up["eval-text"].value(Text).text_sha256,
            "eval": settings.model_dump(mode="json", exclude={"text"}),
            "llama_cpp": env.llama_cpp_version,
            "stage_version": STAGE_VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.measure.evaluate import evaluate

        text = up["eval-text"].value(Text)
        result = evaluate(
            Path(up[quant].value(ModelFile).path), Path(up[model].value(ModelFile).path), Path(text.path),
            text=text.source, text_sha256=text.text_sha256, n_ctx=settings.ctx, chunks=settings.chunks,
            threads=recipe.run.threads, ref_sha256=up[model].value(ModelFile).sha256,
        )  # fmt: skip
        return StageOutcome.of(Evaluated(eval=result.model_dump(mode="json")))

    return Stage(f"eval:{qtype}", (quant, model, "eval-text"), inputs, action)


def _bench_stage(recipe: Recipe, env: StageEnv, qtype: str) -> Stage:
    """pp/tg tokens/s of the quant with the fitted settings on this machine (mm bench)."""
    quant, fit, settings = f"quantize:{qtype}", f"fit:{qtype}", recipe.bench
    assert settings is not None

    def inputs(up: Upstream) -> dict[str, Any]:
        from pipeline.spec.local_machine import machine_identity

        cpu, cores, gpus = machine_identity()
        return {
            "model_sha256": up[quant].value(ModelFile).sha256,
            "fit_sha256": fingerprint(up[fit].value(Fitted).fit),
            "bench": settings.model_dump(mode="json"),
            "machine": [cpu, cores, list(gpus)],
            "llama_cpp": env.llama_cpp_version,
            "stage_version": STAGE_VERSION,
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.fitting.fit import FitResult
        from pipeline.measure.bench import run_bench
        from pipeline.registry.measurements import with_prediction
        from pipeline.registry.profile import llama_kwargs, run_settings

        path = Path(up[quant].value(ModelFile).path)
        fitted = FitResult.model_validate(up[fit].value(Fitted).fit)
        run = fitted.settings
        placed = run_settings(
            run, n_gpu_layers=fitted.n_gpu_layers, threads=recipe.run.threads, n_cpu_moe=fitted.n_cpu_moe,
            tensor_overrides=fitted.tensor_overrides,
        )  # fmt: skip
        result = run_bench(
            llama_kwargs(str(path), placed), n_prompt=settings.n_prompt, n_gen=settings.n_gen,
            repetitions=settings.repetitions, tensor_overrides=placed.tensor_overrides,
        )  # fmt: skip
        measured = run.model_copy(update={"n_gpu_layers": fitted.n_gpu_layers, "n_cpu_moe": fitted.n_cpu_moe})
        result = with_prediction(result, path, measured)  # the placement measured, predicted for this machine
        return StageOutcome.of(Benched(bench=result.model_dump(mode="json")))

    return Stage(f"bench:{qtype}", (quant, fit), inputs, action)


def _measured(recipe: Recipe, qtype: str) -> tuple[str, ...]:
    return (f"eval:{qtype}",) * (recipe.eval is not None) + (f"bench:{qtype}",) * (recipe.bench is not None)


def _publish_stage(recipe: Recipe, env: StageEnv, qtype: str, model: str) -> Stage:
    quant, fit = f"quantize:{qtype}", f"fit:{qtype}"
    name = profile_name(recipe.name, qtype)
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
            model, recipe_hardware(recipe), fit_result, name=name, recipe=recipe, threads=recipe.run.threads
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


def _push_stage(recipe: Recipe, env: StageEnv) -> Stage:
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
