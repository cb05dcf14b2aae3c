"""The Hugging Face cache layout under the mm home: blobs, snapshot links and refs, read and written safely.

huggingface_hub's own `hf_hub_download`/`try_to_load_from_cache` find what mm places here:
`models--owner--name/blobs/<etag>`, `snapshots/<commit>/<file>` → relative symlink to the blob,
`refs/<revision>` → commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Literal

from pipeline.base.home import atomic_path, atomic_symlink, atomic_write_text, inside, mm_home
from pipeline.base.safe_names import COMMIT_RE

RepoType = Literal["model", "dataset"]


def repo_folder(repo: str, repo_type: RepoType = "model", *, root: Path | None = None) -> Path:
    """`models--owner--name` (or `datasets--…`), as huggingface_hub names a repo's cache folder, under the
    Hub cache or `root` (the header stubs keep their own refs in the same layout)."""
    base = mm_home().hub if root is None else root
    return inside(base, base / (f"{repo_type}s--" + repo.replace("/", "--")))


def blob_path(repo: str, etag: str, repo_type: RepoType = "model") -> Path:
    folder = repo_folder(repo, repo_type) / "blobs"
    return inside(folder, folder / etag)


def ref_path(repo: str, revision: str, repo_type: RepoType = "model", *, root: Path | None = None) -> Path:
    folder = repo_folder(repo, repo_type, root=root) / "refs"
    return inside(folder, folder / revision)


def snapshot_path(repo: str, commit: str, filename: str, repo_type: RepoType = "model") -> Path:
    folder = repo_folder(repo, repo_type) / "snapshots"
    return inside(folder, folder / commit / filename)


def cached_commit(repo: str, revision: str, repo_type: RepoType = "model", *, root: Path | None = None) -> str | None:
    """The commit a branch or tag pointed at when last pulled (refs/<revision>), or None."""
    try:
        commit = ref_path(repo, revision, repo_type, root=root).read_text().strip()
    except OSError:
        return None
    return commit if COMMIT_RE.match(commit) else None


def cached_blob_name(repo: str, commit: str, filename: str, repo_type: RepoType = "model") -> str | None:
    """The blob (etag) a snapshot entry points at, if the entry and its blob are both there."""
    link = snapshot_path(repo, commit, filename, repo_type)
    if not link.is_file():
        return None
    return link.resolve().name if link.is_symlink() else None


def write_ref(
    repo: str, revision: str, commit: str, repo_type: RepoType = "model", *, root: Path | None = None
) -> None:
    """Point refs/<revision> at `commit` (atomically, as huggingface_hub does); commits need no ref."""
    if revision == commit:
        return
    ref = ref_path(repo, revision, repo_type, root=root)
    with contextlib.suppress(OSError):
        if ref.read_text() == commit:
            return
    atomic_write_text(ref, commit)


def link_snapshot(repo: str, commit: str, filename: str, etag: str, repo_type: RepoType = "model") -> Path:
    """Create snapshots/<commit>/<filename> → ../../blobs/<etag> (relative, replaced atomically)."""
    return atomic_symlink(snapshot_path(repo, commit, filename, repo_type), blob_path(repo, etag, repo_type))


def place_blob(source: Path, repo: str, etag: str, repo_type: RepoType = "model") -> Path:
    """Move a verified file into blobs/<etag>: a rename on one filesystem, else a copy that appears atomically."""
    blob = blob_path(repo, etag, repo_type)
    blob.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, blob)
    except OSError:  # HF_HUB_CACHE on another filesystem than the mm home (EXDEV)
        with atomic_path(blob) as tmp:
            shutil.copyfile(source, tmp)
        source.unlink()
    return blob


def remove_blob(repo: str, etag: str, repo_type: RepoType = "model") -> None:
    with contextlib.suppress(FileNotFoundError):
        blob_path(repo, etag, repo_type).unlink()
