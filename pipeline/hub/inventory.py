"""What the Hub cache holds, file by file, and removing files from it (as `hf cache ls` / `hf cache rm`).

The cache is huggingface_hub's layout (`models--owner--name/{blobs,snapshots,refs}`), read with its own
`scan_cache_dir`. A file is removed by its snapshot entry; its blob goes once no snapshot points at it,
under the same per-blob lock a pull holds, so a pull in progress is never cut from under.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from pydantic import BaseModel

from pipeline.base.errors import UsageError
from pipeline.base.home import locked, mm_home


class CachedFile(BaseModel):
    repo: str
    revision: str  # the commit; `refs` lists the branches/tags pointing at it
    refs: list[str]
    filename: str
    size_bytes: int
    path: str  # the snapshot entry (what `mm pull --json` reports)
    blob: str


class CacheReport(BaseModel):
    schema_version: int = 1
    cache_dir: str
    files: list[CachedFile]
    size_bytes: int  # on disk, each blob counted once


def cache_files() -> CacheReport:
    """Every model file in the Hub cache, with its repo, commit, branch names and size."""
    root = mm_home().hub
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return CacheReport(cache_dir=str(root), files=[], size_bytes=0)
    files = [
        CachedFile(repo=repo.repo_id, revision=rev.commit_hash, refs=sorted(rev.refs),
                   filename=f.file_path.relative_to(rev.snapshot_path).as_posix(), size_bytes=f.size_on_disk,
                   path=str(f.file_path), blob=str(f.blob_path))
        for repo in sorted(info.repos, key=lambda r: r.repo_id) if repo.repo_type == "model"
        for rev in repo.revisions
        for f in sorted(rev.files, key=lambda f: f.file_name)
    ]  # fmt: skip
    blobs = {f.blob: f.size_bytes for f in files}
    return CacheReport(cache_dir=str(root), files=files, size_bytes=sum(blobs.values()))


def _matches(item: CachedFile, pattern: str) -> bool:
    """`owner/name` (every file), `owner/name:FILE`, or `owner/name:FILE@commit-prefix`."""
    repo, _, rest = pattern.partition(":")
    filename, _, revision = rest.partition("@")
    return (
        item.repo == repo
        and (not filename or item.filename == filename)
        and (not revision or item.revision.startswith(revision) or revision in item.refs)
    )


def remove_cached(patterns: list[str], *, dry_run: bool = False) -> list[CachedFile]:
    """Remove the matching files' snapshot entries, then each blob nothing else points at."""
    report = cache_files()
    chosen = [f for f in report.files if any(_matches(f, p) for p in patterns)]
    missing = [p for p in patterns if not any(_matches(f, p) for f in report.files)]
    if missing:
        raise UsageError(
            f"not in the Hub cache ({report.cache_dir}): {', '.join(missing)}",
            hint="`mm cache ls` lists what is there (owner/name, owner/name:FILE or owner/name:FILE@commit)",
        )
    if dry_run:
        return chosen
    still_used = {f.blob for f in report.files if f not in chosen}
    home = mm_home()
    for item in chosen:
        blob = Path(item.blob)
        with locked(home, f"blob-{blob.name}"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
            if item.blob not in still_used:
                with contextlib.suppress(FileNotFoundError):
                    blob.unlink()
        with contextlib.suppress(OSError):  # an empty snapshot folder goes too; refs stay (huggingface_hub's way)
            Path(item.path).parent.rmdir()
    return chosen
