"""Streaming sha256 and the stat-keyed digest cache: hashed once, re-hashed when the file's stat changes."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from pipeline.base.digest import CHUNK_BYTES, cached_sha256, file_sha256, read_chunks, record_sha256, sha256_file
from pipeline.base.home import mm_home


def test_sha256_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_BYTES + 12345)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 2


def test_read_chunks_yields_every_byte_once() -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 1)
    assert b"".join(bytes(c) for c in read_chunks(io.BytesIO(data))) == data


def test_the_cache_answers_until_the_stat_changes(tmp_path: Path) -> None:
    home = mm_home()
    path = tmp_path / "m.gguf"
    path.write_bytes(b"one")
    assert cached_sha256(home, path) is None
    assert file_sha256(home, path) == hashlib.sha256(b"one").hexdigest()
    record_sha256(home, path, "f" * 64)  # what a writer that hashed while writing records
    assert file_sha256(home, path) == "f" * 64  # trusted while size, mtime and inode stand
    path.write_bytes(b"two!")
    assert cached_sha256(home, path) is None
    assert file_sha256(home, path) == hashlib.sha256(b"two!").hexdigest()
