"""The source stages: resolve the recipe's source, download (or snapshot) it, and verify (or convert) it into
the GGUF quantize starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.base.digest import file_sha256
from pipeline.base.provenance import PIN, SourceRef, check_sha256, source_ref
from pipeline.base.safe_names import COMMIT_RE
from pipeline.build.stage import (
    STAGE_VERSION,
    OutputRecord,
    Stage,
    StageEnv,
    StageOutcome,
    Upstream,
    output_record,
    resolved_commit,
    tensor_progress,
)
from pipeline.build.values import Downloaded, ModelFile, Resolved, SnapshotFiles
from pipeline.resolve.model_ref import recipe_source_path
from pipeline.spec.recipe import Recipe

# --- resolve: revision → commit (hub), or the local file's digest --------------------------------


def resolve_stage(recipe: Recipe, env: StageEnv) -> Stage:
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


def download_stage(recipe: Recipe, env: StageEnv) -> Stage:
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
        commit = resolved_commit(up)
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


def verify_stage(recipe: Recipe, env: StageEnv) -> Stage:
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


def _model_folder(recipe: Recipe) -> Path:
    assert recipe.source.path is not None
    return recipe.resolve(recipe.source.path.expanduser()).resolve()


def snapshot_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """The files conversion reads, at the resolved commit, pulled and verified like `mm pull`."""
    source = recipe.source

    def inputs(up: Upstream) -> dict[str, Any]:
        return {"repo": source.repo, "commit": up["resolve"].value(Resolved).commit, "stage_version": STAGE_VERSION}

    def action(up: Upstream) -> StageOutcome:
        from pipeline.convert.converter import pull_snapshot
        from pipeline.hub.cache import write_ref

        assert source.repo is not None
        commit = resolved_commit(up)
        snapshot = pull_snapshot(
            source.repo, commit, token=env.token, offline=env.offline, progress=env.download_progress
        ).model_copy(update={"revision": source.revision})
        write_ref(source.repo, source.revision, commit)
        outputs = [output_record(env.home, snapshot.folder / f.name, f.sha256) for f in snapshot.files]
        return StageOutcome.of(SnapshotFiles(snapshot=snapshot.model_dump(mode="json")), outputs)

    return Stage("download", ("resolve",), inputs, action)


def convert_stage(recipe: Recipe, env: StageEnv) -> Stage:
    """llama.cpp's convert_hf_to_gguf.py; its output is what quantize starts from."""
    dep = "resolve" if recipe.source.is_local else "download"

    def inputs(up: Upstream) -> dict[str, Any]:
        snapshot = up[dep].value(SnapshotFiles).snapshot
        return {
            "commit": snapshot["commit"],
            "snapshot": [(f["name"], f["sha256"]) for f in snapshot["files"]],
            "outtype": recipe.convert.outtype,
            **env.tool_versions,  # the converter comes from the same llama.cpp source
        }

    def action(up: Upstream) -> StageOutcome:
        from pipeline.convert.converter import Snapshot, convert

        snapshot = Snapshot.model_validate(up[dep].value(SnapshotFiles).snapshot)
        with tensor_progress(env.quantize_progress, f"convert {snapshot.name}") as progress:
            result = convert(snapshot, recipe.convert.outtype, progress=progress)
        out = output_record(env.home, result.output, result.record.sha256)
        ref = result.record.source_ref()
        return StageOutcome.of(ModelFile(path=out.path, sha256=out.sha256, source_ref=ref), [out])

    return Stage("convert", (dep,), inputs, action)
