"""What mm wrote in a Hub repo: `.mm/manifest.json`, which decides what a push may replace or delete.

A repo is shared with people and other tools. A push may replace or delete a file only when mm's own
manifest in the repo lists it and the repo's copy still has the content mm wrote (its LFS sha256 or git
blob sha1); anything else — a person's file, a stray `profiles/other.json`, a file changed by hand —
is never deleted, and replacing it is refused. The manifest is merged by every push (entries whose file
is gone or changed are dropped), so concurrent pushers keep each other's entries across a conflict retry.
"""

from __future__ import annotations

import hashlib
import logging

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.base.errors import HubError
from pipeline.hub.read import read_small_file
from pipeline.hub.upload import RepoState

log = logging.getLogger(__name__)

MANIFEST = ".mm/manifest.json"
SCHEMA_VERSION = 1
OWNERSHIP_HINT = (
    "remove or rename that file on the Hub, or push to another repo (mm never overwrites what it did not write)"
)


class Written(BaseModel):
    """One file as mm wrote it: enough to recognise the repo's copy as unchanged."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    git_oid: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")  # regular (non-LFS) files


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    files: dict[str, Written] = Field(default_factory=dict)

    def owns(self, state: RepoState, path: str) -> bool:
        """Is `path` in the repo exactly as mm wrote it?"""
        written, entry = self.files.get(path), state.files.get(path)
        if written is None or entry is None or entry.size != written.size_bytes:
            return False
        if entry.lfs is not None:
            return entry.lfs.sha256 == written.sha256
        return written.git_oid is not None and entry.blob_id == written.git_oid

    def render(self) -> bytes:
        ordered = Manifest(files=dict(sorted(self.files.items())))
        return (ordered.model_dump_json(indent=2) + "\n").encode()


def written_bytes(data: bytes) -> Written:
    return Written(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        git_oid=hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest(),
    )


def read_manifest(state: RepoState, token: str) -> Manifest:
    """The repo's manifest, keeping only entries whose file is still there unchanged; none yet is empty."""
    if MANIFEST not in state.files:
        return Manifest()
    try:
        found = Manifest.model_validate_json(read_small_file(state.repo, MANIFEST, state.head, token=token))
    except ValidationError as exc:
        raise HubError(
            f"{state.repo}: {MANIFEST} is not a manifest this mm reads ({exc.error_count()} problems)",
            hint=f"delete {MANIFEST} on the Hub (mm then treats every file as someone else's), or upgrade mm",
        ) from None
    kept = {path: w for path, w in found.files.items() if found.owns(state, path)}
    if len(kept) != len(found.files):
        log.info(
            "%s: %d file(s) in mm's manifest were changed or removed since", state.repo, len(found.files) - len(kept)
        )
    return Manifest(files=kept)


def check_replaceable(state: RepoState, manifest: Manifest, path: str) -> None:
    """Writing `path` is fine when the repo lacks it or holds it as mm wrote it; otherwise refuse the push."""
    if path in state.files and not manifest.owns(state, path):
        raise HubError(
            f"{state.repo}: {path} exists and mm did not write it (it is not in {MANIFEST} with this content); "
            "refusing to replace it",
            hint=OWNERSHIP_HINT,
        )
