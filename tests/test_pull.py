"""`mm pull` through the CLI against the local Hub-compatible server: the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache
from typer.testing import Result

from tests.conftest import write_recipe
from tests.hub import VALID_TOKEN, Fault, LocalHub

REPO = "org/tiny-GGUF"
FILE = "tiny.gguf"
Mm = Callable[..., Result]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pulled(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.stderr
    files = json.loads(result.stdout)
    assert isinstance(files, list)
    return files


def hub_cache(home: Path) -> Path:
    return home / "hub"


def leftover_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def tiny_bytes(tiny_model: Path) -> bytes:
    return tiny_model.read_bytes()


def test_pull_single_file_lands_verified_in_the_hub_cache(
    mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, isolated_env: Path
) -> None:
    commit = local_hub.add_repo(REPO, {FILE: tiny_bytes, "README.md": b"# tiny\n"})

    [entry] = pulled(mm("pull", f"{REPO}:{FILE}", "--json"))

    assert entry["sha256"] == sha256(tiny_bytes)
    assert entry["commit"] == commit
    assert entry["size_bytes"] == entry["size"] == len(tiny_bytes)
    path = Path(str(entry["path"]))
    assert path.read_bytes() == tiny_bytes
    # huggingface_hub's own cache lookup finds the file mm placed, by branch and by commit
    cache = hub_cache(isolated_env)
    assert try_to_load_from_cache(REPO, FILE, cache_dir=cache) == str(path)
    assert try_to_load_from_cache(REPO, FILE, cache_dir=cache, revision=commit) == str(path)
    assert not leftover_files(isolated_env / "partial")


def test_pull_again_downloads_nothing(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    commit = local_hub.add_repo(REPO, {FILE: tiny_bytes})
    pulled(mm("pull", f"{REPO}:{FILE}", "--json", "--quiet"))
    assert len(local_hub.file_gets(FILE)) == 1

    local_hub.clear_log()
    again = pulled(mm("pull", REPO, "--file", FILE, "--json"))
    assert again[0]["sha256"] == sha256(tiny_bytes)
    assert local_hub.file_gets(FILE) == []

    local_hub.clear_log()
    pulled(mm("pull", f"{REPO}:{FILE}@{commit}", "--json"))
    assert local_hub.requests == []  # a commit and a verified cache: no network at all


def test_pull_split_gguf_pulls_every_shard(mm: Mm, local_hub: LocalHub) -> None:
    shards = {f"big-{i:05d}-of-00003.gguf": os.urandom(50_000 + i) for i in (1, 2, 3)}
    local_hub.add_repo(REPO, shards)

    files = pulled(mm("pull", f"{REPO}:big-00001-of-00003.gguf", "--json"))

    assert [f["filename"] for f in files] == sorted(shards)
    for entry in files:
        data = shards[str(entry["filename"])]
        assert entry["sha256"] == sha256(data)
        assert Path(str(entry["path"])).read_bytes() == data


def test_pull_gated_repo_without_token_says_to_accept_the_license(
    mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, isolated_env: Path
) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes}, gated=True)

    result = mm("pull", f"{REPO}:{FILE}")

    assert result.exit_code == 3
    assert "gated" in result.stderr and "accept the license" in result.stderr and "HF_TOKEN" in result.stderr
    assert not leftover_files(hub_cache(isolated_env) / "models--org--tiny-GGUF" / "blobs")


def test_pull_gated_repo_with_wrong_token_is_refused(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes}, gated=True)
    result = mm("pull", f"{REPO}:{FILE}", "--token", "hf_not_the_right_one")
    assert result.exit_code == 3
    assert "hf_not_the_right_one" not in result.stderr + result.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_pull_gated_repo_with_token_never_shows_or_stores_it(
    mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes}, gated=True)
    args = ["pull", f"{REPO}:{FILE}", "--json"]
    if how == "flag":
        args += ["--token", VALID_TOKEN]
    else:
        monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)

    result = mm(*args)

    assert pulled(result)[0]["sha256"] == sha256(tiny_bytes)
    assert all(r.authorized for r in local_hub.file_gets(FILE))
    assert VALID_TOKEN not in result.stdout + result.stderr
    for path in leftover_files(isolated_env):
        if not path.is_symlink():
            assert VALID_TOKEN.encode() not in path.read_bytes(), path


def test_pull_revision_pinned_by_commit_gets_that_commits_bytes(mm: Mm, local_hub: LocalHub) -> None:
    old, new = b"GGUF old bytes" * 1000, b"GGUF new bytes" * 1000
    first = local_hub.add_repo(REPO, {FILE: old})
    second = local_hub.update_file(REPO, FILE, new)
    local_hub.clear_log()

    [entry] = pulled(mm("pull", f"{REPO}:{FILE}", "--revision", first, "--json"))

    assert entry["commit"] == first
    assert Path(str(entry["path"])).read_bytes() == old
    assert not any(r.path.startswith("/api/models") for r in local_hub.requests)  # no resolve call for a commit
    [latest] = pulled(mm("pull", f"{REPO}:{FILE}", "--json"))
    assert latest["commit"] == second and Path(str(latest["path"])).read_bytes() == new


def test_pull_resumes_after_connection_cut(mm: Mm, local_hub: LocalHub) -> None:
    data = os.urandom(3_000_000)
    local_hub.add_repo(REPO, {FILE: data})
    cut_at = 1_234_567
    local_hub.inject(REPO, FILE, Fault(cut_after=cut_at, times=1))

    [entry] = pulled(mm("pull", f"{REPO}:{FILE}", "--json"))

    gets = local_hub.file_gets(FILE)
    assert [g.range for g in gets] == [None, f"bytes={cut_at}-"]
    assert Path(str(entry["path"])).read_bytes() == data


@pytest.mark.slow
def test_pull_resumes_after_kill_from_where_it_stopped(local_hub: LocalHub, isolated_env: Path) -> None:
    data = os.urandom(4_000_000)
    local_hub.add_repo(REPO, {FILE: data})
    local_hub.inject(REPO, FILE, Fault(bytes_per_second=2_000_000))
    partial = isolated_env / "partial" / f"{sha256(data)}.part"
    command = [sys.executable, "-m", "pipeline.cli", "pull", f"{REPO}:{FILE}", "--quiet"]

    process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 500_000):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = partial.stat().st_size
    assert 0 < stopped_at < len(data)

    local_hub.inject(REPO, FILE, None)
    finished = subprocess.run([*command, "--json"], env=dict(os.environ), capture_output=True, text=True, check=False)

    assert finished.returncode == 0, finished.stderr
    assert local_hub.file_gets(FILE)[-1].range == f"bytes={stopped_at}-"
    assert Path(json.loads(finished.stdout)[0]["path"]).read_bytes() == data
    assert not partial.exists()


def test_pull_rejects_corrupted_bytes_and_keeps_none(
    mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, isolated_env: Path
) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    local_hub.inject(REPO, FILE, Fault(corrupt=True, times=1))

    result = mm("pull", f"{REPO}:{FILE}")

    assert result.exit_code == 5
    assert "do not match" in result.stderr
    assert not leftover_files(isolated_env / "partial")
    repo_cache = hub_cache(isolated_env) / "models--org--tiny-GGUF"
    assert not leftover_files(repo_cache / "blobs")
    assert not (repo_cache / "snapshots").exists() or not any((repo_cache / "snapshots").rglob(FILE))
    # the server heals: the next pull downloads afresh and verifies
    assert pulled(mm("pull", f"{REPO}:{FILE}", "--json"))[0]["sha256"] == sha256(tiny_bytes)


@pytest.mark.slow
def test_four_concurrent_pulls_make_one_download(local_hub: LocalHub) -> None:
    data = os.urandom(2_000_000)
    local_hub.add_repo(REPO, {FILE: data})
    local_hub.inject(REPO, FILE, Fault(bytes_per_second=1_000_000))  # 2 s: long enough for all four to overlap
    command = [sys.executable, "-m", "pipeline.cli", "pull", f"{REPO}:{FILE}", "--json"]

    processes = [
        subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]

    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err for _, err in outputs]
    assert {json.loads(out)[0]["sha256"] for out, _ in outputs} == {sha256(data)}
    assert len(local_hub.file_gets(FILE)) == 1


def test_pull_offline_serves_from_cache(
    mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    [online] = pulled(mm("pull", f"{REPO}:{FILE}", "--json"))
    local_hub.clear_log()

    [offline] = pulled(mm("pull", f"{REPO}:{FILE}", "--offline", "--json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [from_env] = pulled(mm("pull", f"{REPO}:{FILE}", "--json"))

    assert offline == online == from_env
    assert local_hub.requests == []


def test_pull_offline_without_cache_fails_clearly(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    result = mm("pull", f"{REPO}:{FILE}", "--offline")
    assert result.exit_code == 3
    assert "offline" in result.stderr and "not in the local cache" in result.stderr
    assert local_hub.requests == []


def test_pull_wrong_repo(mm: Mm, local_hub: LocalHub) -> None:
    result = mm("pull", "org/no-such-repo:model.gguf")
    assert result.exit_code == 3
    assert "repository org/no-such-repo not found" in result.stderr


def test_pull_wrong_file_lists_the_gguf_files(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes, "other.Q4_K_M.gguf": b"x" * 10, "README.md": b"hi"})
    result = mm("pull", f"{REPO}:nope.gguf")
    assert result.exit_code == 3
    assert "nope.gguf not found" in result.stderr
    assert "tiny.gguf" in result.stderr and "other.Q4_K_M.gguf" in result.stderr
    assert "README.md" not in result.stderr


def test_pull_wrong_revision(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    result = mm("pull", f"{REPO}:{FILE}", "--revision", "no-such-branch")
    assert result.exit_code == 3
    assert "revision 'no-such-branch' not found" in result.stderr


def test_pull_not_enough_disk_fails_before_downloading(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    local_hub.advertise_size(REPO, FILE, 1 << 48)  # 256 TiB: more than any disk has free
    result = mm("pull", f"{REPO}:{FILE}")
    assert result.exit_code == 4
    assert "not enough free disk" in result.stderr
    assert local_hub.file_gets(FILE) == []


def test_pull_repo_without_file_lists_choices_when_not_a_terminal(mm: Mm, local_hub: LocalHub) -> None:
    local_hub.add_repo(REPO, {"a.Q2_K.gguf": b"a" * 2048, "a.Q4_K_M.gguf": b"b" * 4096})
    result = mm("pull", REPO)
    assert result.exit_code == 2
    assert "--file" in result.stderr and "a.Q2_K.gguf" in result.stderr and "a.Q4_K_M.gguf" in result.stderr


def test_pull_recipe_checks_its_pin(mm: Mm, local_hub: LocalHub, tiny_bytes: bytes, recipes_folder: Path) -> None:
    local_hub.add_repo(REPO, {FILE: tiny_bytes})
    source = f'[source]\nrepo = "{REPO}"\nfile = "{FILE}"\n'
    write_recipe(recipes_folder, "good", f'hardware = "cpu-64g"\n{source}sha256 = "{sha256(tiny_bytes)}"\n')
    write_recipe(recipes_folder, "stale", f'hardware = "cpu-64g"\n{source}sha256 = "{"0" * 64}"\n')

    good = pulled(mm("pull", "good", "--recipes", str(recipes_folder), "--json"))
    stale = mm("pull", "stale", "--recipes", str(recipes_folder))

    assert good[0]["sha256"] == sha256(tiny_bytes)
    assert stale.exit_code == 5 and "the recipe's pin (source.sha256)" in stale.stderr


@pytest.mark.parametrize("model", ["not a repo", "owner/name/extra", "acme:model"])
def test_pull_of_something_unpullable_says_what_is_expected(mm: Mm, model: str) -> None:
    result = mm("pull", model)
    assert result.exit_code == 2
    assert "expected owner/name:FILE.gguf" in result.stderr
