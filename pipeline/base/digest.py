"""Streaming sha256 of files, and a stat-keyed cache so unchanged files are never hashed twice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.base.home import Home, atomic_write_json

CHUNK_BYTES = 8 << 20  # large reads keep hashlib (OpenSSL) at sha256sum's speed

ProgressCallback = Callable[[int], None]  # called with the number of bytes just processed


def sha256_file(path: Path, progress: ProgressCallback | None = None) -> str:
    """Hex sha256 of a file, read in large chunks into one reused buffer."""
    with open(path, "rb", buffering=0) as handle:
        return sha256_handle(handle, progress)


def read_chunks(handle: BinaryIO) -> Iterator[memoryview]:
    """An open file's bytes from its current position, in large chunks read into one reused buffer (each
    chunk is valid until the next is read): the one read loop every hash in mm goes through."""
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):  # type: ignore[attr-defined]
        yield view[:count]


def sha256_handle(handle: BinaryIO, progress: ProgressCallback | None = None) -> str:
    """Hex sha256 of an open file from its current position; the handle stays valid across a rename."""
    digest = hashlib.sha256()
    for chunk in read_chunks(handle):
        digest.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _cache_entry(home: Home, path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return home.digests / f"{key}.json"


def cached_sha256(home: Home, path: Path) -> str | None:
    """The recorded digest if the file's size, mtime and inode are unchanged since it was recorded."""
    entry = _cache_entry(home, path)
    try:
        record = json.loads(entry.read_text())
        if record.get("stat") == _stat_key(path):
            return str(record["sha256"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def record_sha256(home: Home, path: Path, sha256: str) -> None:
    """Remember a digest that was verified (computed while writing or downloading the file)."""
    home.ensure(home.digests)
    atomic_write_json(
        _cache_entry(home, path), {"path": str(path.resolve()), "sha256": sha256, "stat": _stat_key(path)}
    )


def file_sha256(home: Home, path: Path, progress: ProgressCallback | None = None) -> str:
    """Digest from the cache when the file is unchanged, else hashed now and recorded."""
    cached = cached_sha256(home, path)
    if cached is not None:
        return cached
    digest = sha256_file(path, progress)
    record_sha256(home, path, digest)
    return digest


def forget_sha256(home: Home, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_cache_entry(home, path))
