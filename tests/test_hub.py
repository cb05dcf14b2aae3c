"""pipeline.hub.api and the download path against the local Hub server, plus the server's own Hub compatibility."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from pipeline.base.errors import EntryNotFoundError, GatedRepoError, RepoNotFoundError, RevisionNotFoundError
from pipeline.hub import api as hub
from pipeline.hub import download
from tests.hub import VALID_TOKEN, LocalHub

REPO = "org/model-GGUF"


def test_resolve_commit_follows_branches_and_tags_and_never_asks_for_a_commit(local_hub: LocalHub) -> None:
    first = local_hub.add_repo(REPO, {"m.gguf": b"one"})
    local_hub.tag(REPO, "v1", first)
    second = local_hub.update_file(REPO, "m.gguf", b"two")
    local_hub.clear_log()

    assert hub.resolve_commit(REPO, "main") == second
    assert hub.resolve_commit(REPO, "v1") == first
    requests_so_far = len(local_hub.requests)
    assert hub.resolve_commit(REPO, first) == first
    assert len(local_hub.requests) == requests_so_far


def test_list_gguf_files_gives_sizes_of_gguf_files_only(local_hub: LocalHub) -> None:
    local_hub.add_repo(REPO, {"b.gguf": b"x" * 300, "a.gguf": b"y" * 100, "config.json": b"{}"})
    assert hub.list_gguf_files(REPO) == [("a.gguf", 100), ("b.gguf", 300)]


def test_file_metadata_reports_the_lfs_sha256(local_hub: LocalHub) -> None:
    data = os.urandom(5000)
    commit = local_hub.add_repo(REPO, {"m.gguf": data})
    remote = hub.file_metadata(REPO, "m.gguf", commit)
    assert remote.sha256 == hashlib.sha256(data).hexdigest()
    assert remote.size_bytes == len(data) and remote.commit == commit


def test_hub_errors_become_mm_errors(local_hub: LocalHub) -> None:
    commit = local_hub.add_repo(REPO, {"m.gguf": b"data"})
    local_hub.add_repo("org/secret", {"m.gguf": b"data"}, private=True)
    local_hub.add_repo("org/gated", {"m.gguf": b"data"}, gated=True)

    with pytest.raises(RepoNotFoundError):
        hub.resolve_commit("org/missing")
    with pytest.raises(RepoNotFoundError):
        hub.resolve_commit("org/secret")
    assert hub.resolve_commit("org/secret", token=VALID_TOKEN)
    with pytest.raises(RevisionNotFoundError):
        hub.resolve_commit(REPO, "nope")
    with pytest.raises(EntryNotFoundError, match=r"m\.gguf"):
        hub.file_metadata(REPO, "other.gguf", commit)
    gated_commit = hub.resolve_commit("org/gated")
    with pytest.raises(GatedRepoError):
        hub.file_metadata("org/gated", "m.gguf", gated_commit)


def test_huggingface_hub_downloads_from_the_local_hub_with_ranges(local_hub: LocalHub, tmp_path: Path) -> None:
    """The server speaks the Hub's protocol well enough for huggingface_hub's own downloader."""
    data = os.urandom(100_000)
    local_hub.add_repo(REPO, {"m.gguf": data})
    path = hf_hub_download(REPO, "m.gguf", cache_dir=tmp_path / "c", endpoint=local_hub.url)
    assert Path(path).read_bytes() == data

    import httpx2

    response = httpx2.get(f"{local_hub.url}/{REPO}/resolve/main/m.gguf", headers={"Range": "bytes=99000-"})
    assert response.status_code == 206 and response.content == data[99000:]


def test_pull_reuses_a_blob_huggingface_hub_downloaded(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(20_000)
    local_hub.add_repo(REPO, {"m.gguf": data})
    shared_cache = tmp_path / "existing-hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(shared_cache))
    hf_hub_download(REPO, "m.gguf", cache_dir=shared_cache, endpoint=local_hub.url)
    local_hub.clear_log()

    [pulled] = download.pull(REPO, "m.gguf")

    assert pulled.path.is_relative_to(shared_cache)
    assert pulled.sha256 == hashlib.sha256(data).hexdigest()
    assert local_hub.file_gets("m.gguf") == []


def test_pull_replaces_a_cached_blob_whose_bytes_went_bad(local_hub: LocalHub) -> None:
    data = os.urandom(20_000)
    local_hub.add_repo(REPO, {"m.gguf": data})
    [first] = download.pull(REPO, "m.gguf")
    blob = first.path.resolve()
    blob.write_bytes(b"\0" * len(data))  # bit rot, or another tool scribbling on the cache

    [again] = download.pull(REPO, "m.gguf")

    assert again.path.read_bytes() == data
    assert len(local_hub.file_gets("m.gguf")) == 2
