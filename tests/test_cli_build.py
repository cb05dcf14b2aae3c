"""`mm build` the way a nightly runs it: real Hub client against the local Hub, real llama.cpp, real registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from pipeline.base.digest import sha256_file
from pipeline.base.home import mm_home
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.conftest import write_recipe
from tests.hub import LocalHub

Mm = Callable[..., Result]
SMALL = TinySpec(n_layers=1, n_embd=256, n_ff=256, n_vocab=320)


def hub_recipe(repo: str, file: str, types: list[str], revision: str = "main") -> str:
    return f"""
hardware = "cpu-32g"
[source]
repo = "{repo}"
file = "{file}"
revision = "{revision}"
[quantize]
types = {json.dumps(types)}
[run]
ctx = 256
batch = 256
ubatch = 64
"""


def model_bytes(tmp_path: Path, seed: int) -> Path:
    return write_tiny_model(tmp_path / f"m{seed}.gguf", SMALL.with_(seed=seed))


@pytest.fixture
def two_recipes(local_hub: LocalHub, recipes_folder: Path, tmp_path: Path) -> Path:
    local_hub.add_repo("org/alpha", {"alpha.gguf": model_bytes(tmp_path, 1)})
    local_hub.add_repo("org/beta", {"beta.gguf": model_bytes(tmp_path, 2)})
    write_recipe(recipes_folder, "alpha", hub_recipe("org/alpha", "alpha.gguf", ["q8_0"]))
    write_recipe(recipes_folder, "beta", hub_recipe("org/beta", "beta.gguf", ["q4_0"]))
    return recipes_folder


def run_build(mm: Mm, tmp_path: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    result = mm("build", *args, "--report", str(report))
    return result, json.loads(report.read_text())


def stage_table(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {r["name"]: {s["name"]: s["status"] for s in r["stages"]} for r in report["recipes"]}


def ran(report: dict[str, Any], recipe: str) -> list[str]:
    return [name for name, status in stage_table(report)[recipe].items() if status == "ran"]


def profile_blob_sha(mm: Mm, name: str) -> str:
    result = mm("show", name, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return str(document["blob"]["sha256"])


def test_full_build_then_second_run_skips_everything(
    mm: Mm, two_recipes: Path, tmp_path: Path, local_hub: LocalHub
) -> None:
    result, report = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["status"]) for r in report["recipes"]] == [("alpha", "built"), ("beta", "built")]
    assert all(s["status"] == "ran" and s["reason"] == "never built" for r in report["recipes"] for s in r["stages"])
    assert mm("show", "alpha-q8_0").exit_code == 0 and mm("show", "beta-q4_0").exit_code == 0

    local_hub.clear_log()
    result, again = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in again["recipes"]] == ["skipped", "skipped"]
    assert {s["status"] for r in again["recipes"] for s in r["stages"]} == {"skipped"}
    # A no-op costs one metadata request per branch-tracking recipe, and no file request at all.
    requests = sorted(r.path for r in local_hub.requests)
    assert requests == ["/api/models/org/alpha/revision/main", "/api/models/org/beta/revision/main"]


def test_upstream_commit_rebuilds_only_that_recipe_from_download_on(
    mm: Mm, two_recipes: Path, tmp_path: Path, local_hub: LocalHub
) -> None:
    assert run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))[0].exit_code == 0
    old_sha = profile_blob_sha(mm, "alpha-q8_0")
    local_hub.update_file("org/alpha", "alpha.gguf", model_bytes(tmp_path, 3))

    _, plan = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes), "--dry-run")
    assert {s["reason"] for s in plan["recipes"][0]["stages"]} == {"new upstream commit"}
    assert plan["recipes"][1]["status"] == "skipped"

    result, report = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))
    assert result.exit_code == 0, result.output
    assert ran(report, "alpha") == ["resolve", "download", "verify", "quantize:q8_0", "fit:q8_0", "publish:q8_0"]
    assert ran(report, "beta") == []
    assert profile_blob_sha(mm, "alpha-q8_0") != old_sha


def test_added_quant_type_runs_only_the_new_quant(mm: Mm, two_recipes: Path, tmp_path: Path) -> None:
    assert run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))[0].exit_code == 0
    write_recipe(two_recipes, "alpha", hub_recipe("org/alpha", "alpha.gguf", ["q8_0", "q4_0"]))
    result, report = run_build(mm, tmp_path, "alpha", "--recipes", str(two_recipes))
    assert result.exit_code == 0, result.output
    assert ran(report, "alpha") == ["quantize:q4_0", "fit:q4_0", "publish:q4_0"]
    assert mm("show", "alpha-q4_0").exit_code == 0


def test_broken_and_good_recipe_keep_going(mm: Mm, two_recipes: Path, tmp_path: Path) -> None:
    write_recipe(two_recipes, "beta", hub_recipe("org/beta", "missing.gguf", ["q4_0"]))
    result, report = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes), "--keep-going")
    assert result.exit_code != 0
    assert "1 of 2 recipe(s) failed: beta" in result.stderr
    statuses = {r["name"]: r for r in report["recipes"]}
    assert statuses["alpha"]["status"] == "built"
    assert mm("show", "alpha-q8_0").exit_code == 0
    beta = statuses["beta"]
    assert beta["status"] == "failed" and "missing.gguf" in beta["reason"]
    failed = [s for s in beta["stages"] if s["status"] == "failed"]
    assert [s["name"] for s in failed] == ["download"] and "missing.gguf" in failed[0]["error"]


def test_vanished_upstream_fails_clearly_and_keeps_the_last_good_profile(
    mm: Mm, two_recipes: Path, tmp_path: Path, local_hub: LocalHub
) -> None:
    assert run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes))[0].exit_code == 0
    before = profile_blob_sha(mm, "beta-q4_0")
    with local_hub.lock:
        del local_hub.repos["org/beta"]
    result, report = run_build(mm, tmp_path, "--all", "--recipes", str(two_recipes), "--keep-going")
    assert result.exit_code != 0
    beta = next(r for r in report["recipes"] if r["name"] == "beta")
    assert beta["status"] == "failed" and beta["reason"].startswith("resolve:") and "org/beta" in beta["reason"]
    assert profile_blob_sha(mm, "beta-q4_0") == before


def test_shards_through_the_cli_cover_every_recipe_once(mm: Mm, recipes_folder: Path, tmp_path: Path) -> None:
    for i in range(7):
        write_recipe(recipes_folder, f"r{i}", hub_recipe(f"org/r{i}", "m.gguf", ["q8_0"], revision="0" * 40))
    seen: list[str] = []
    for k in (1, 2, 3):
        result = mm("build", "--all", "--recipes", str(recipes_folder), "--shard", f"{k}/3", "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        seen += [r["name"] for r in json.loads(result.stdout)["recipes"]]
    assert sorted(seen) == [f"r{i}" for i in range(7)]


def test_usage_errors_are_clear(mm: Mm, recipes_folder: Path) -> None:
    result = mm("build", "--recipes", str(recipes_folder))
    assert result.exit_code == 2 and "--all" in result.stderr
    result = mm("build", "--all", "--recipes", str(recipes_folder), "--shard", "5/3")
    assert result.exit_code == 2 and "--shard" in result.stderr
    result = mm("build", "nope", "--recipes", str(recipes_folder))
    assert result.exit_code == 2 and "no recipe named 'nope'" in result.stderr


@pytest.mark.slow
def test_kill_9_mid_build_then_rerun_completes_with_verified_outputs(
    mm: Mm, local_hub: LocalHub, recipes_folder: Path, tmp_path: Path
) -> None:
    big = write_tiny_model(tmp_path / "big.gguf", TinySpec(n_layers=4, n_embd=1024, n_ff=2048, dtype="f16"))
    local_hub.add_repo("org/big", {"big.gguf": big})
    write_recipe(recipes_folder, "big", hub_recipe("org/big", "big.gguf", ["q8_0", "q4_k_m", "q2_k"]))
    env = {**os.environ, "HF_ENDPOINT": local_hub.url}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "build", "--all", "--recipes", str(recipes_folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stamps = mm_home().stamps / "big"
    deadline = time.monotonic() + 60
    while not (stamps / "quantize-q8_0.json").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)  # somewhere in the remaining quantize stages
    assert child.wait() == -signal.SIGKILL

    result, report = run_build(mm, tmp_path, "--all", "--recipes", str(recipes_folder))
    assert result.exit_code == 0, result.output
    assert report["recipes"][0]["status"] == "built"
    statuses = stage_table(report)["big"]
    assert statuses["download"] == statuses["quantize:q8_0"] == "skipped"  # resumed, not redone
    assert statuses["publish:q2_k"] == "ran"
    for qtype in ("q8_0", "q4_k_m", "q2_k"):
        stamp = json.loads((stamps / f"quantize-{qtype}.json").read_text())
        (output,) = stamp["outcome"]["outputs"]
        assert sha256_file(Path(output["path"])) == output["sha256"]
        assert mm("show", f"big-{qtype}").exit_code == 0
    assert mm("verify").exit_code == 0


@pytest.mark.slow
def test_demo_builds_and_generates(mm: Mm) -> None:
    result = mm("demo", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["build"]["recipes"][0]["status"] == "built"
    assert document["text"]
    assert mm("show", document["profile"]).exit_code == 0
    again = json.loads(mm("demo", "--json").stdout)
    assert again["build"]["recipes"][0]["status"] == "skipped"
