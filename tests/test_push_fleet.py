"""Pushing as a nightly fleet does: shards of `mm build --push` into one repo, kills, retries, tokens."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.conftest import write_recipe
from tests.hub import VALID_TOKEN, LocalHub
from tests.hub_upload import hold_first_commits

Mm = Callable[..., Result]
REPO = "fleet/nightly-GGUF"
SMALL = TinySpec(n_layers=1, n_embd=256, n_ff=256, n_vocab=320)
# crc32(name) % 3 puts one of these in each of the three shards (pipeline/build/runner.py:in_shard).
SHARDED = {"shard-b": 1, "shard-c": 2, "shard-a": 3}


def fleet_recipe(model: Path, repo: str = REPO, types: tuple[str, ...] = ("q8_0",)) -> str:
    return f"""
hardware = "cpu-32g"
[source]
path = "{model}"
[quantize]
types = {json.dumps(list(types))}
[run]
ctx = 256
batch = 256
ubatch = 64
[publish]
repo = "{repo}"
"""


def mm_process(args: list[str], home: Path, hub: LocalHub, token: str | None = VALID_TOKEN) -> subprocess.Popen[str]:
    env = {**os.environ, "MM_HOME": str(home), "HF_ENDPOINT": hub.url}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def publish_a_copy(mm: Mm, model: Path, folder: Path, name: str) -> None:
    """Publish a copy of `model` as profile `name` (the session's model itself stays read-only)."""
    own = folder / f"{name}.gguf"
    shutil.copyfile(model, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--name", name).exit_code == 0


def tree(hub: LocalHub, repo: str = REPO) -> dict[str, bytes]:
    state = hub.repos[repo]
    return state.commits[state.refs["main"]]


@pytest.mark.slow
def test_three_shards_push_into_one_repo_and_every_quant_and_row_survives(
    local_hub: LocalHub, recipes_folder: Path, tmp_path: Path
) -> None:
    for seed, name in enumerate(SHARDED, start=1):
        model = write_tiny_model(tmp_path / f"{name}.gguf", SMALL.with_(seed=seed))
        write_recipe(recipes_folder, name, fleet_recipe(model))
    hold_first_commits(local_hub, 3)  # all three commit against the same parent: two must retry
    runners = [
        mm_process(
            [
                "build",
                "--all",
                "--recipes",
                str(recipes_folder),
                "--shard",
                f"{k}/3",
                "--push",
                "--keep-going",
                "--json",
            ],
            tmp_path / f"runner-{k}",
            local_hub,
        )
        for k in (1, 2, 3)
    ]
    outputs = [runner.communicate(timeout=240) for runner in runners]
    for runner, (out, err) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, err
        assert VALID_TOKEN not in out + err
    assert local_hub.uploads.conflicts >= 2  # the conflicts happened and were resolved
    files = tree(local_hub)
    card = files["README.md"].decode()
    for name in SHARDED:
        profile = json.loads(files[f"profiles/{name}-q8_0@cpu-32g.json"])
        gguf = files[profile["file"]]
        assert hashlib.sha256(gguf).hexdigest() == profile["profile"]["blob"]["sha256"]
        assert f"| {name}-q8_0@cpu-32g |" in card
    for k, runner_out in enumerate((o for o, _ in outputs), start=1):
        report = json.loads(runner_out)
        (recipe,) = report["recipes"]
        assert SHARDED[recipe["name"]] == k
        assert {s["name"]: s["status"] for s in recipe["stages"]}["push"] == "ran"


@pytest.mark.slow
def test_push_killed_mid_upload_then_rerun_sends_only_what_is_missing(
    mm: Mm, local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = write_tiny_model(tmp_path / "big.gguf", TinySpec(n_layers=2, n_embd=512, n_ff=1024, dtype="f16"))
    small = write_tiny_model(tmp_path / "small.gguf", SMALL.with_(seed=7))
    for path, name in ((big, "big"), (small, "small")):
        assert mm("publish", str(path), "--hardware", "cpu-64g", "--name", name).exit_code == 0
    big_oid = hashlib.sha256(big.read_bytes()).hexdigest()
    small_oid = hashlib.sha256(small.read_bytes()).hexdigest()
    local_hub.uploads.slow_oids[big_oid] = 200_000.0  # bytes/s: the big upload takes many seconds
    child = mm_process(["push", "big", "small", "--repo", REPO], Path(os.environ["MM_HOME"]), local_hub)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        local_hub.uploads.receiving.get(big_oid, 0) > 0 and local_hub.uploads.stored_puts(REPO)
    ):
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert [p.oid for p in local_hub.uploads.stored_puts(REPO)] == [small_oid]  # small arrived, big did not
    assert tree(local_hub).keys() == {".gitattributes"}  # nothing committed

    del local_hub.uploads.slow_oids[big_oid]
    local_hub.uploads.puts.clear()
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    rerun = mm("push", "big", "small", "--repo", REPO, "--json")
    assert rerun.exit_code == 0, rerun.stderr
    assert [p.oid for p in local_hub.uploads.puts] == [big_oid]  # only the missing object was sent
    files = tree(local_hub)
    for name, source in (("big", big), ("small", small)):
        profile = json.loads(files[f"profiles/{name}.json"])
        assert hashlib.sha256(files[profile["file"]]).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_failed_push_fails_that_recipe_and_the_next_build_retries_it(
    mm: Mm, local_hub: LocalHub, recipes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", SMALL.with_(seed=3))
    write_recipe(recipes_folder, "pushed", fleet_recipe(model))
    plain = write_tiny_model(tmp_path / "p.gguf", SMALL.with_(seed=4))
    write_recipe(recipes_folder, "local-only", fleet_recipe(plain).split("[publish]")[0])
    monkeypatch.setenv("HF_TOKEN", "hf_revoked_token")
    failed = mm("build", "--all", "--recipes", str(recipes_folder), "--push", "--keep-going", "--json")
    assert failed.exit_code == 10
    report = {r["name"]: r for r in json.loads(failed.stdout)["recipes"]}
    assert report["local-only"]["status"] == "built" and report["pushed"]["status"] == "failed"
    push = {s["name"]: s for s in report["pushed"]["stages"]}["push"]
    assert push["status"] == "failed" and "refused" in push["error"]
    assert "hf_revoked_token" not in failed.stdout + failed.stderr
    assert mm("show", "pushed-q8_0").exit_code == 0  # the local profile was published all the same

    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    again = mm("build", "--all", "--recipes", str(recipes_folder), "--push", "--json")
    assert again.exit_code == 0, again.stderr
    stages = {s["name"]: s["status"] for r in json.loads(again.stdout)["recipes"] for s in r["stages"]}
    assert stages["push"] == "ran" and stages["publish:q8_0"] == "skipped"
    assert "profiles/pushed-q8_0@cpu-32g.json" in tree(local_hub)
    third = mm("build", "--all", "--recipes", str(recipes_folder), "--push", "--json")
    stages = {s["name"]: s["status"] for r in json.loads(third.stdout)["recipes"] for s in r["stages"]}
    assert stages["push"] == "skipped"


def test_private_and_gated_repos_need_a_token_to_pull(
    mm: Mm, tiny_model: Path, local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_a_copy(mm, tiny_model, tmp_path, "m")
    pushed = mm("push", "m", "--repo", "fleet/private-GGUF", "--private", "--token", VALID_TOKEN)
    assert pushed.exit_code == 0, pushed.stderr
    assert local_hub.repos["fleet/private-GGUF"].private
    assert mm("push", "m", "--repo", "fleet/gated-GGUF", "--token", VALID_TOKEN).exit_code == 0
    local_hub.repos["fleet/gated-GGUF"].gated = True

    monkeypatch.setenv("MM_HOME", str(tmp_path / "user"))
    private = mm("pull", "fleet/private-GGUF", "--profile", "m")
    assert private.exit_code == 3
    assert "not found" in private.stderr and "HF_TOKEN" in private.stderr
    gated = mm("pull", "fleet/gated-GGUF", "--profile", "m")
    assert gated.exit_code == 3
    assert "gated" in gated.stderr and "HF_TOKEN" in gated.stderr
    for repo in ("fleet/private-GGUF", "fleet/gated-GGUF"):
        ok = mm("pull", repo, "--profile", "m", "--hardware", "cpu-64g", "--token", VALID_TOKEN)
        assert ok.exit_code == 0, ok.stderr


@pytest.mark.slow
def test_the_token_appears_nowhere_on_disk_or_in_output(
    mm: Mm, tiny_model: Path, local_hub: LocalHub, tmp_path: Path
) -> None:
    publish_a_copy(mm, tiny_model, tmp_path, "m")
    home = Path(os.environ["MM_HOME"])
    runs = [  # one after the other, at debug log level, so every line huggingface_hub and mm log is seen
        (["-vv", "push", "m", "--repo", "fleet/secret-GGUF", "--private", "--token", VALID_TOKEN], None),
        (["-vv", "push", "m", "--repo", "fleet/secret-GGUF", "--json"], VALID_TOKEN),
        (
            ["-vv", "pull", "fleet/secret-GGUF", "--profile", "m", "--name", "again", "--hardware", "cpu-64g"],
            VALID_TOKEN,
        ),
    ]
    for args, token in runs:
        run = mm_process(args, home, local_hub, token)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert "DEBUG" in err and VALID_TOKEN not in out + err
    for path in tmp_path.rglob("*"):  # the mm home, its Hub cache, the token-file paths huggingface_hub uses
        if path.is_file() and not path.is_symlink():
            assert VALID_TOKEN.encode() not in path.read_bytes(), path
    for name, data in tree(local_hub, "fleet/secret-GGUF").items():
        assert VALID_TOKEN.encode() not in data, name


def test_push_to_a_branch_and_pull_from_it(
    mm: Mm, tiny_model: Path, local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_a_copy(mm, tiny_model, tmp_path, "m")
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    pushed = mm("push", "m", "--repo", REPO, "--revision", "nightly", "--json")
    assert pushed.exit_code == 0, pushed.stderr
    state = local_hub.repos[REPO]
    assert "profiles/m.json" in state.commits[state.refs["nightly"]]
    assert "profiles/m.json" not in state.commits[state.refs["main"]]
    monkeypatch.setenv("MM_HOME", str(tmp_path / "user"))
    missing = mm("pull", REPO, "--profile", "m")  # not on main
    assert missing.exit_code == 9 and f"{REPO} has no profile 'm'" in missing.stderr
    pulled = mm("pull", REPO, "--profile", "m", "--revision", "nightly", "--hardware", "cpu-64g")
    assert pulled.exit_code == 0, pulled.stderr
