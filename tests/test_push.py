"""`mm push` and `mm pull --profile` against the local Hub: the real huggingface_hub upload machinery."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.hub import VALID_TOKEN, LocalHub

Mm = Callable[..., Result]
REPO = "fleet/tiny-GGUF"


def publish_two(mm: Mm, tiny_model: Path, tiny_model_f16: Path, folder: Path) -> list[str]:
    """Two profiles on two different blobs (f32 and f16 copies owned by this test)."""
    names = []
    for model, quant in ((tiny_model, "f32"), (tiny_model_f16, "f16")):
        own = folder / f"tiny-{quant}.gguf"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, own)
        result = mm("publish", str(own), "--hardware", "cpu-64g", "--ctx", "256", "--name", f"tiny-{quant}", "--json")
        assert result.exit_code == 0, result.stderr
        names.append(f"tiny-{quant}")
    return names


def repo_tree(hub: LocalHub, repo: str = REPO) -> dict[str, bytes]:
    state = hub.repos[repo]
    return state.commits[state.refs["main"]]


def test_push_then_a_second_home_pulls_the_profile_and_runs_it(
    mm: Mm, tiny_model: Path, tiny_model_f16: Path, local_hub: LocalHub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    names = publish_two(mm, tiny_model, tiny_model_f16, tmp_path / "models")
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    pushed = mm("push", *names, "--repo", REPO, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    report = json.loads(pushed.stdout)
    assert report["commit"] and report["conflicts"] == 0

    tree = repo_tree(local_hub)
    ggufs = sorted(p for p in tree if p.endswith(".gguf"))
    assert len(ggufs) == 2 and {"profiles/tiny-f32.json", "profiles/tiny-f16.json", "README.md"} <= set(tree)
    # The repo's bytes are the local files' bytes (sha256 by an independent hash, not mm's records).
    local_digests = {
        hashlib.sha256(tiny_model.read_bytes()).hexdigest(),
        hashlib.sha256(tiny_model_f16.read_bytes()).hexdigest(),
    }
    assert {hashlib.sha256(tree[g]).hexdigest() for g in ggufs} == local_digests
    card = tree["README.md"].decode()
    assert card.startswith("---\n") and "library_name: gguf" in card and "- gguf" in card
    assert "tiny-f32" in card and "tiny-f16" in card and "rtx3060-12g" in card
    assert f"mm pull {REPO} --profile tiny-f32" in card and f"--hf-repo {REPO}" in card
    assert f"ollama run hf.co/{REPO}:F16" in card  # a quant type's name is the tag Ollama finds a file by

    # A user machine: another MM_HOME, no token (public repo), pulls one profile and runs it.
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("MM_HOME", str(tmp_path / "user-home"))
    listed = mm("pull", REPO, "--list-profiles", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert sorted(p["name"] for p in json.loads(listed.stdout)) == ["tiny-f16", "tiny-f32"]
    pulled = mm("pull", REPO, "--profile", "tiny-f16", "--hardware", "cpu-64g", "--json")
    assert pulled.exit_code == 0, pulled.stderr
    installed = json.loads(pulled.stdout)
    assert installed["check"]["fits"] and installed["warning"] is None
    profile = installed["profile"]
    blob = Path(profile["blob"]["path"])
    assert blob.is_relative_to(tmp_path / "user-home")
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(tiny_model_f16.read_bytes()).hexdigest()
    assert profile["provenance"]["source"]["path"].endswith("tiny-f16.gguf")  # kept as published
    assert profile["run"]["n_ctx"] == 256
    gets = len(local_hub.file_gets(installed["file"]))
    assert gets == 1
    again = mm("pull", REPO, "--profile", "tiny-f16", "--hardware", "cpu-64g")
    assert again.exit_code == 0, again.stderr
    assert len(local_hub.file_gets(installed["file"])) == gets  # an unchanged profile downloads nothing
    ran = mm("run", "tiny-f16", "-p", "hello", "--max-tokens", "3", "--seed", "1")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip()


def test_a_repush_uploads_nothing(
    mm: Mm, tiny_model: Path, tiny_model_f16: Path, local_hub: LocalHub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    names = publish_two(mm, tiny_model, tiny_model_f16, tmp_path / "models")
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert mm("push", *names, "--repo", REPO).exit_code == 0
    first_puts, first_commits = len(local_hub.uploads.puts), len(local_hub.uploads.commits)
    assert first_puts == 2 and first_commits == 1
    local_hub.clear_log()

    again = mm("push", *names, "--repo", REPO, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["commit"] is None
    assert len(local_hub.uploads.puts) == first_puts and len(local_hub.uploads.commits) == first_commits
    writes = [r for r in local_hub.requests if r.method in ("PUT", "POST") and "/paths-info/" not in r.path]
    assert [r.path for r in writes if "/lfs/" in r.path or "/commit/" in r.path or "/preupload/" in r.path] == []


def test_pushing_one_more_profile_sends_only_its_blob_and_keeps_the_other_rows(
    mm: Mm, tiny_model: Path, tiny_model_f16: Path, local_hub: LocalHub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    first, second = publish_two(mm, tiny_model, tiny_model_f16, tmp_path / "models")
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert mm("push", first, "--repo", REPO).exit_code == 0
    assert mm("push", second, "--repo", REPO).exit_code == 0
    stored = local_hub.uploads.stored_puts(REPO)
    assert len(stored) == 2 and len({p.oid for p in stored}) == 2  # each blob sent once
    card = repo_tree(local_hub)["README.md"].decode()
    assert f"| {first} |" in card and f"| {second} |" in card


def test_push_without_a_token_is_a_clear_error(mm: Mm, tiny_model: Path, tmp_path: Path, local_hub: LocalHub) -> None:
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--name", "m").exit_code == 0
    result = mm("push", "m", "--repo", REPO)
    assert result.exit_code == 3
    assert "needs a token with write access" in result.stderr and "HF_TOKEN" in result.stderr
    assert local_hub.requests == []  # refused before any request


def test_push_with_a_wrong_token_is_refused(mm: Mm, tiny_model: Path, tmp_path: Path, local_hub: LocalHub) -> None:
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--name", "m").exit_code == 0
    result = mm("push", "m", "--repo", REPO, "--token", "hf_not_the_right_one")
    assert result.exit_code == 3
    assert "refused" in result.stderr and "write access" in result.stderr
    assert "hf_not_the_right_one" not in result.stdout + result.stderr


def test_a_rebuilt_profile_replaces_its_gguf_and_a_persons_card_text_is_kept(
    mm: Mm, tiny_model: Path, tiny_model_f16: Path, local_hub: LocalHub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    first = tmp_path / "a.gguf"
    shutil.copyfile(tiny_model, first)
    assert mm("publish", str(first), "--hardware", "cpu-64g", "--name", "m").exit_code == 0
    assert mm("push", "m", "--repo", REPO).exit_code == 0
    (old_gguf,) = [p for p in repo_tree(local_hub) if p.endswith(".gguf")]
    card = repo_tree(local_hub)["README.md"].decode()
    edited = card.replace("<!-- mm:card:end -->", "<!-- mm:card:end -->\n## Licence\nApache-2.0, by hand.")
    local_hub.commit(REPO, {"README.md": edited.encode()})

    second = tmp_path / "b.gguf"
    shutil.copyfile(tiny_model_f16, second)
    assert mm("publish", str(second), "--hardware", "cpu-64g", "--name", "m").exit_code == 0
    pushed = mm("push", "m", "--repo", REPO, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert json.loads(pushed.stdout)["deleted"] == [old_gguf]
    files = repo_tree(local_hub)
    (new_gguf,) = [p for p in files if p.endswith(".gguf")]
    assert hashlib.sha256(files[new_gguf]).hexdigest() == hashlib.sha256(tiny_model_f16.read_bytes()).hexdigest()
    assert json.loads(files["profiles/m.json"])["file"] == new_gguf
    card = files["README.md"].decode()
    assert "Apache-2.0, by hand." in card and new_gguf in card and old_gguf not in card


def test_a_recipe_publish_repo_must_be_a_repo_id(mm: Mm, recipes_folder: Path, tiny_model: Path) -> None:
    recipe = recipes_folder / "bad.toml"
    recipe.write_text(f'hardware = "cpu-32g"\n[source]\npath = "{tiny_model}"\n[publish]\nrepo = "no slash here"\n')
    result = mm("recipe", "validate", str(recipe))
    assert result.exit_code == 2
    assert "publish.repo" in result.stderr + result.stdout and "owner/name" in result.stderr + result.stdout


def test_pull_warns_when_the_published_placement_does_not_fit_here(
    mm: Mm, tiny_model: Path, local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "rtx3060-12g", "--ctx", "2048", "--name", "gpu").exit_code == 0
    assert mm("push", "gpu", "--repo", REPO, "--token", VALID_TOKEN).exit_code == 0
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "hardware.toml").write_text(
        '[small-gpu]\nvram = "1M"\nram = "64G"\ngpu_bandwidth_gbps = 100\nram_bandwidth_gbps = 50\ngpu_overhead = "0"\n'
    )
    monkeypatch.setenv("MM_HOME", str(tmp_path / "user"))
    pulled = mm("pull", REPO, "--profile", "gpu", "--hardware", "small-gpu", "--recipes", str(recipes), "--json")
    assert pulled.exit_code == 0, pulled.stderr  # installed all the same: it may be meant for another machine
    report = json.loads(pulled.stdout)
    assert not report["check"]["fits"] and report["check"]["verdict"] == "does_not_fit"
    assert "does not fit small-gpu" in report["warning"] and "warning:" in pulled.stderr
    assert report["profile"]["run"]["n_gpu_layers"] > 0  # the published placement is kept, not silently changed


def test_the_card_shows_what_mm_bench_measured(
    mm: Mm, tiny_model: Path, local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "cpu-32g", "--ctx", "512", "--name", "m").exit_code == 0
    bench = mm("bench", "m", "-p", "32", "-n", "8", "-r", "1", "--json")
    assert bench.exit_code == 0, bench.stderr
    tg = json.loads(bench.stdout)["tg"]["median_ts"]
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert mm("push", "m", "--repo", REPO).exit_code == 0
    card = repo_tree(local_hub)["README.md"].decode()
    planned, measured = card.split("## Measured")
    row = next(line for line in measured.splitlines() if line.startswith("| m |"))
    assert f"tg8 {tg:.1f} tok/s" in row, row
    # the plan for cpu-32g and the measurement on this machine sit apart, each under its own name
    assert f"{tg:.1f}" not in planned and "cpu-32g" not in row
