"""The blob store: each model file kept once by its sha256 (a read-only copy or reflink, never a hard link),
and the cheap check that a profile's blob is still intact before it runs."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from pipeline.base.clone import clone_hashing
from pipeline.base.digest import cached_sha256, file_sha256, record_sha256, sha256_file
from pipeline.base.disk_space import disk_full, require_space
from pipeline.base.errors import IntegrityError
from pipeline.base.home import Home, atomic_path, inside, mm_home
from pipeline.registry.profile import BlobRef, Profile

log = logging.getLogger(__name__)


def blob_path(home: Home, sha256: str) -> Path:
    return inside(home.blobs, home.blobs / sha256)


def store_blob(home: Home, source: Path, sha256: str, size_bytes: int) -> BlobRef:
    """The blob of `source` in the store (copied, verified), as a profile refers to it."""
    blob = _blob_for(home, source, sha256, size_bytes)
    stat = blob.stat()
    return BlobRef(sha256=sha256, size_bytes=size_bytes, path=str(blob), mtime_ns=stat.st_mtime_ns, inode=stat.st_ino)


def _blob_for(home: Home, source: Path, sha256: str, size_bytes: int) -> Path:
    """The blob for `sha256`: a copy of `source` (a reflink where the filesystem offers one), read-only.

    Never a hard link: a blob sharing its inode with a quantize output or a user's file is damaged with it,
    and a damaged blob must be repairable from that file (`mm verify --repair`).
    """
    target = blob_path(home, sha256)
    if target.is_file() and _blob_intact(home, target, sha256, size_bytes):
        return target
    if target.exists():
        log.warning("blob %s is damaged; replacing it from %s", sha256[:12], source)
    home.ensure(home.blobs)
    require_space(target.parent, size_bytes, f"a copy of {source.name} in the registry")
    with atomic_path(target) as tmp:
        try:
            copied = clone_hashing(source, tmp)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise disk_full(target.parent, size_bytes) from None
            raise
        if copied != sha256:
            raise IntegrityError(f"{source}: changed after it was hashed; publish again") from None
    target.chmod(0o444)  # nothing of mm's writes a blob; an editor asks before it does
    record_sha256(home, target, sha256)
    return target


def restore_blob(source: Path, sha256: str, size_bytes: int) -> Path:
    """Replace a damaged or missing blob with a copy of `source`, which must hash to `sha256` (the caller
    holds the registry lock)."""
    return _blob_for(mm_home(), source, sha256, size_bytes)


def _blob_intact(home: Home, blob: Path, sha256: str, size_bytes: int) -> bool:
    if blob.stat().st_size != size_bytes:
        return False
    return file_sha256(home, blob) == sha256


# --- the pre-run check -----------------------------------------------------------------------------


def check_blob(profile: Profile, *, full: bool = False) -> Path:
    """The profile's blob path if it is intact; raises IntegrityError (with the profile's name) if not.

    Cheap by default: the size, then the stat recorded at publish (or a digest cached after a verified
    hash); a changed stat costs one re-hash. `full` always re-hashes.
    """
    home = mm_home()
    blob = blob_path(home, profile.blob.sha256)
    hint = f"`mm verify --repair {profile.name}` restores it from its source"
    expected = profile.blob.sha256
    try:
        stat = blob.stat()
    except FileNotFoundError:
        raise IntegrityError(
            f"profile {profile.name!r}: its model blob {blob} is missing",
            path=str(blob), expected=expected, actual=None, hint=hint,
        ) from None  # fmt: skip
    if stat.st_size != profile.blob.size_bytes:
        raise IntegrityError(
            f"profile {profile.name!r}: blob {blob} is {stat.st_size} bytes, expected {profile.blob.size_bytes}",
            path=str(blob), expected=f"{profile.blob.size_bytes} bytes", actual=f"{stat.st_size} bytes", hint=hint,
        )  # fmt: skip
    if not full:
        if (stat.st_mtime_ns, stat.st_ino) == (profile.blob.mtime_ns, profile.blob.inode):
            return blob
        if cached_sha256(home, blob) == profile.blob.sha256:
            return blob
    actual = sha256_file(blob)
    if actual != expected:
        raise IntegrityError(
            f"profile {profile.name!r}: blob {blob} is corrupted (sha256 {actual}, expected {expected})",
            path=str(blob), expected=f"sha256 {expected}", actual=f"sha256 {actual}", hint=hint,
        )  # fmt: skip
    record_sha256(home, blob, actual)
    return blob
