"""Stage units: their inputs and actions one at a time (real Hub client against the local Hub, real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.base.errors import IntegrityError, RepoNotFoundError, UsageError
from pipeline.base.home import mm_home
from pipeline.build.stage import Stage, StageEnv, StageOutcome, check_output, fingerprint, output_record
from pipeline.build.stages import recipe_stages
from pipeline.build.values import ModelFile, Resolved
from pipeline.spec.recipe import load_recipe
from tests.conftest import write_recipe
from tests.hub import LocalHub, sha256_hex

HUB_RECIPE = """
hardware = "cpu-32g"
[source]
repo = "org/tiny"
file = "tiny.gguf"
revision = "{revision}"
{pin}
[quantize]
types = ["q8_0", "q4_0"]
"""


def _stages(recipes_folder: Path, text: str, name: str = "r") -> dict[str, Stage]:
    recipe = load_recipe(write_recipe(recipes_folder, name, text))
    return {s.name: s for s in recipe_stages(recipe, StageEnv(home=mm_home()))}


def _metadata_requests(hub: LocalHub) -> list[str]:
    return [r.path for r in hub.requests if r.path.startswith("/api/")]


def test_stage_order_puts_every_publish_after_every_quantize_and_fit(recipes_folder: Path) -> None:
    names = list(_stages(recipes_folder, HUB_RECIPE.format(revision="main", pin="")))
    assert names == [
        "resolve", "download", "verify",
        "quantize:q8_0", "quantize:q4_0", "fit:q8_0", "fit:q4_0", "publish:q8_0", "publish:q4_0",
    ]  # fmt: skip


def test_resolve_pinned_commit_makes_no_request(local_hub: LocalHub, recipes_folder: Path) -> None:
    commit = local_hub.add_repo("org/tiny", {"tiny.gguf": b"GGUF bytes"})
    local_hub.clear_log()
    stages = _stages(recipes_folder, HUB_RECIPE.format(revision=commit, pin=""))
    outcome = stages["resolve"].action({})
    assert outcome.values == {"commit": commit}
    assert local_hub.requests == []


def test_resolve_branch_makes_one_metadata_request_and_sees_new_commits(
    local_hub: LocalHub, recipes_folder: Path
) -> None:
    first = local_hub.add_repo("org/tiny", {"tiny.gguf": b"one"})
    stages = _stages(recipes_folder, HUB_RECIPE.format(revision="main", pin=""))
    local_hub.clear_log()
    assert stages["resolve"].action({}).values["commit"] == first
    assert len(_metadata_requests(local_hub)) == 1
    second = local_hub.update_file("org/tiny", "tiny.gguf", b"two")
    assert stages["resolve"].action({}).values["commit"] == second


def test_resolve_of_a_vanished_repo_fails_with_the_hub_error(local_hub: LocalHub, recipes_folder: Path) -> None:
    stages = _stages(recipes_folder, HUB_RECIPE.format(revision="main", pin=""))
    with pytest.raises(RepoNotFoundError):
        stages["resolve"].action({})


def test_download_then_verify_hands_on_the_verified_source(local_hub: LocalHub, recipes_folder: Path) -> None:
    data = b"GGUF" + os.urandom(4096)
    commit = local_hub.add_repo("org/tiny", {"tiny.gguf": data})
    stages = _stages(recipes_folder, HUB_RECIPE.format(revision="main", pin=f'sha256 = "{sha256_hex(data)}"'))
    up: dict[str, StageOutcome] = {"resolve": StageOutcome(values={"commit": commit})}
    up["download"] = stages["download"].action(up)
    assert [o.sha256 for o in up["download"].outputs] == [sha256_hex(data)]
    verified = stages["verify"].action(up).value(ModelFile)
    assert Path(verified.path).read_bytes() == data
    ref = verified.source_ref
    assert ref is not None
    assert (ref.repo, ref.commit, ref.revision, ref.sha256) == ("org/tiny", commit, "main", sha256_hex(data))
    with pytest.raises(ValidationError):  # a stage's value is read as the kind it is, or not at all
        stages["verify"].action(up).value(Resolved)


def test_verify_rejects_a_local_source_that_does_not_match_its_pin(recipes_folder: Path) -> None:
    (recipes_folder / "m.gguf").write_bytes(b"not what was pinned")
    text = f'hardware = "cpu-32g"\n[source]\npath = "m.gguf"\nsha256 = "{"0" * 64}"\n'
    stages = _stages(recipes_folder, text)
    up = {"resolve": stages["resolve"].action({})}
    with pytest.raises(IntegrityError, match=r"source\.sha256"):
        stages["verify"].action(up)


def test_resolve_of_a_missing_local_file_names_the_field(recipes_folder: Path) -> None:
    stages = _stages(recipes_folder, 'hardware = "cpu-32g"\n[source]\npath = "absent.gguf"\n')
    with pytest.raises(UsageError, match=r"source\.path: no such file"):
        stages["resolve"].action({})


def test_fingerprint_is_canonical() -> None:
    assert fingerprint({"a": 1, "b": {"x": [1, 2], "y": None}}) == fingerprint({"b": {"y": None, "x": [1, 2]}, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_check_output_trusts_the_stat_keyed_digest_and_rehashes_only_on_stat_change(tmp_path: Path) -> None:
    home = mm_home()
    path = tmp_path / "out.bin"
    path.write_bytes(b"a" * 1000)
    record = output_record(home, path)
    assert record.sha256 == sha256_hex(b"a" * 1000)
    assert check_output(home, record) is None
    # Same size, same inode, mtime put back: the cached digest is trusted (no re-read of the bytes).
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_output(home, record) is None
    # A visible change (mtime) makes it re-hash, and the edit is caught.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert check_output(home, record) == f"output changed: {path}"
    path.unlink()
    assert check_output(home, record) == f"output missing: {path}"
