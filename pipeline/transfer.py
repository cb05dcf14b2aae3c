"""One resumable, hashing HTTP download into mm's partial area (huggingface_hub no longer resumes across runs).

The partial file is named by the content it must become (`<etag>.part`), so any run — or another repo
with the same blob — continues it with a Range request. Bytes are hashed as they arrive; on resume the
prefix already on disk is hashed once first, so a finished file is never read a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx2
from huggingface_hub import constants, get_session, hf_raise_for_status

from pipeline.errors import HubError, IntegrityError
from pipeline.home import mm_home

log = logging.getLogger(__name__)

MAX_STALLED_ATTEMPTS = 3  # attempts in a row that brought no new byte before giving up (the next run resumes)


class Progress(Protocol):
    """What a progress display must offer (a tqdm bar does)."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


# (label, total bytes, bytes already there) -> a progress display for one file
ProgressFactory = Callable[[str, int, int], Progress]


@dataclass(frozen=True)
class Fetched:
    """A complete partial file whose content matches the etag it was fetched for."""

    path: Path
    sha256: str


class _Hashes:
    """sha256 always; the git blob sha1 too when that is what the Hub's etag is (non-LFS files)."""

    def __init__(self, size_bytes: int, with_git_sha1: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.git_sha1 = hashlib.sha1(f"blob {size_bytes}\0".encode()) if with_git_sha1 else None

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git_sha1 is not None:
            self.git_sha1.update(data)

    def matches(self, etag: str) -> bool:
        if self.git_sha1 is not None:
            return self.git_sha1.hexdigest() == etag
        return self.sha256.hexdigest() == etag


def partial_path(etag: str) -> Path:
    return mm_home().ensure(mm_home().partial) / f"{etag}.part"


def partial_size(etag: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        return partial_path(etag).stat().st_size
    return 0


def fetch(
    url: str,
    *,
    etag: str,
    size_bytes: int,
    headers: dict[str, str],
    label: str,
    progress: ProgressFactory | None = None,
) -> Fetched:
    """Download `url` into the partial file for `etag`, continuing what is there; verify it against `etag`.

    A mismatch deletes the partial file (those bytes are wrong, resuming them would stay wrong) and raises
    IntegrityError. A dropped connection retries with a Range request while bytes keep coming; then the
    error says to run again, which resumes.
    """
    state = _State(partial_path(etag), size_bytes, with_git_sha1=len(etag) == 40)
    state.hash_prefix()
    bar = progress(label, size_bytes, state.offset) if progress is not None else None
    try:
        stalled = 0
        while state.offset < size_bytes:
            before = state.offset
            try:
                _get_range(url, state, headers, bar)
            except (httpx2.TransportError, httpx2.StreamError) as exc:
                stalled = 0 if state.offset > before else stalled + 1
                log.warning("%s: connection lost at %d of %d bytes (%s)", label, state.offset, size_bytes, exc)
                if stalled >= MAX_STALLED_ATTEMPTS:
                    raise HubError(
                        f"download of {label} stopped at {state.offset} of {size_bytes} bytes ({type(exc).__name__})",
                        hint="run the same command again: it resumes where it stopped",
                    ) from None
                time.sleep(min(2.0, 0.2 * stalled))
    finally:
        if bar is not None:
            bar.close()
    path, hashes = state.path, state.hashes
    if not hashes.matches(etag):
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{label}: downloaded bytes do not match the Hub's checksum (expected {etag}, got "
            f"{hashes.sha256.hexdigest() if hashes.git_sha1 is None else hashes.git_sha1.hexdigest()}); "
            "the bad download was deleted",
            hint="run again to download it afresh; if it repeats, the mirror or a proxy is serving wrong data",
        )
    return Fetched(path=path, sha256=hashes.sha256.hexdigest())


class _State:
    """The partial file, how many bytes it holds, and the hashes of exactly those bytes."""

    def __init__(self, path: Path, size_bytes: int, *, with_git_sha1: bool) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.with_git_sha1 = with_git_sha1
        self.restart()

    def restart(self) -> None:
        self.offset = 0
        self.hashes = _Hashes(self.size_bytes, self.with_git_sha1)

    def hash_prefix(self) -> None:
        """Hash what a previous run left; a partial larger than the file cannot be right and is dropped."""
        try:
            have = self.path.stat().st_size
        except FileNotFoundError:
            return
        if have > self.size_bytes:
            log.warning("%s is larger than the file it should become; starting over", self.path)
            self.path.unlink()
            return
        if have:
            log.info("resuming %s from byte %d (hashing what is there first)", self.path.name, have)
            buffer = bytearray(8 << 20)
            view = memoryview(buffer)
            with open(self.path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    self.hashes.update(view[:count])
        self.offset = have


def _get_range(url: str, state: _State, headers: dict[str, str], bar: Progress | None) -> None:
    """One GET from the state's offset to the end, appended to the partial file as it arrives."""
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if state.offset:
        request_headers["Range"] = f"bytes={state.offset}-"
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, follow_redirects=True
    ) as response:
        if response.status_code == 416:  # the server's file is shorter than our partial: not the same content
            state.path.unlink(missing_ok=True)
            state.restart()
            return
        hf_raise_for_status(response)
        if state.offset and response.status_code == 200:
            log.warning("%s: the server ignored the Range request; downloading from the start", url)
            if bar is not None:
                bar.update(-state.offset)
            state.restart()
        elif state.offset and not response.headers.get("Content-Range", "").startswith(f"bytes {state.offset}-"):
            raise HubError(f"{url}: the server answered a Range request with the wrong range")
        with open(state.path, "r+b" if state.offset else "wb") as handle:
            handle.seek(state.offset)
            handle.truncate()
            try:
                for chunk in response.iter_bytes():
                    if state.offset + len(chunk) > state.size_bytes:
                        raise IntegrityError(
                            f"{url}: the server sent more than the {state.size_bytes} bytes it announced"
                        )
                    handle.write(chunk)
                    state.hashes.update(chunk)
                    state.offset += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                handle.flush()
                os.fsync(handle.fileno())
