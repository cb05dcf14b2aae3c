"""One resumable, hashing HTTP download into mm's partial area (huggingface_hub no longer resumes across runs).

The partial file is named by the content it must become (`<etag>.part`), so any run — or another repo
with the same blob — continues it with a Range request. Bytes are hashed as they arrive; on resume the
prefix already on disk is hashed once first, so a finished file is never read a second time.
"""

from __future__ import annotations

import contextlib
import errno
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

from pipeline.base.digest import read_chunks
from pipeline.base.disk_space import disk_full
from pipeline.base.errors import HubConnectionError, HubError, IntegrityError
from pipeline.base.home import inside, mm_home
from pipeline.base.safe_names import check_etag

log = logging.getLogger(__name__)

MAX_STALLED_ATTEMPTS = 5  # requests in a row that brought no new byte before giving up (the next run resumes)
MAX_REQUESTS = 100  # requests for one file in one run, however much each brought
BACKOFF_SECONDS = 0.25  # first wait after a request that brought nothing; doubles each time
BACKOFF_CAP_SECONDS = 8.0
RETRY_AFTER_CAP_SECONDS = 60.0  # a longer Retry-After is an error at once ("run again later")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


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
    folder = mm_home().ensure(mm_home().partial)
    return inside(folder, folder / f"{check_etag(etag)}.part")


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

    A mismatch — of the bytes or of the size the server announced — deletes the partial file (resuming
    wrong bytes stays wrong) and raises IntegrityError at once, never a retry. Dropped connections, 429
    and 5xx are retried with a Range request and a backoff (429's Retry-After honoured up to a cap); a
    request that brings no new byte counts against a budget, and when it runs out the error says to run
    again, which resumes.
    """
    state = _State(partial_path(etag), size_bytes, with_git_sha1=len(etag) == 40)
    state.hash_prefix()
    bar = progress(label, size_bytes, state.offset) if progress is not None else None
    try:
        _fetch_with_budget(url, state, headers, label, bar)
    except IntegrityError:
        state.path.unlink(missing_ok=True)
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(state.path.parent, size_bytes - state.offset) from None
        raise
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


class _Retry(Exception):
    """A 429 or 5xx answer: worth another request after `delay` seconds (None: the usual backoff)."""

    def __init__(self, reason: str, delay: float | None) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


def _fetch_with_budget(url: str, state: _State, headers: dict[str, str], label: str, bar: Progress | None) -> None:
    requests = stalled = 0
    while state.offset < state.size_bytes:
        requests += 1
        before = state.offset
        delay: float | None = None
        try:
            _get_range(url, state, headers, bar)
            reason = "the response ended early"
        except _Retry as retry:
            reason, delay = retry.reason, retry.delay
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        if state.offset >= state.size_bytes:
            return
        stalled = 0 if state.offset > before else stalled + 1
        log.warning("%s: %s at %d of %d bytes", label, reason, state.offset, state.size_bytes)
        if stalled >= MAX_STALLED_ATTEMPTS or requests >= MAX_REQUESTS:
            raise HubConnectionError(
                f"download of {label} stopped at {state.offset} of {state.size_bytes} bytes after {requests} "
                f"requests ({reason})",
                hint="run the same command again later: it resumes where it stopped",
            )
        if delay is None:
            delay = 0.0 if stalled == 0 else min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2 ** (stalled - 1))
        time.sleep(delay)


def _retry_after(response: httpx2.Response, label: str) -> float | None:
    """The seconds a 429/503 asks to wait (Retry-After, in seconds); more than the cap is an error now."""
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        seconds = max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from a Hub; the usual backoff instead
    if seconds > RETRY_AFTER_CAP_SECONDS:
        raise HubError(
            f"{label}: the server is rate-limiting and asks to wait {seconds:.0f} s "
            f"(more than the {RETRY_AFTER_CAP_SECONDS:.0f} s mm waits)",
            hint="run the same command again later: it resumes where it stopped",
        )
    return seconds


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
            with open(self.path, "rb", buffering=0) as handle:
                for chunk in read_chunks(handle):
                    self.hashes.update(chunk)
        self.offset = have


def _get_range(url: str, state: _State, headers: dict[str, str], bar: Progress | None) -> None:
    """One GET from the state's offset to the end, appended to the partial file as it arrives."""
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if state.offset:
        request_headers["Range"] = f"bytes={state.offset}-"
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, follow_redirects=True
    ) as response:
        status = response.status_code
        if status in RETRYABLE_STATUS:
            raise _Retry(f"the server answered {status}", _retry_after(response, url))
        if status == 416:  # the server's file is shorter than what we already hold
            raise _size_mismatch(url, state.size_bytes, f"it has fewer than the {state.offset} bytes already fetched")
        hf_raise_for_status(response)
        _check_length(url, response, state)
        if state.offset and status == 200:
            log.warning("%s: the server ignored the Range request; downloading from the start", url)
            if bar is not None:
                bar.update(-state.offset)
            state.restart()
        with open(state.path, "r+b" if state.offset else "wb") as handle:
            handle.seek(state.offset)
            handle.truncate()
            try:
                for chunk in response.iter_bytes():
                    if state.offset + len(chunk) > state.size_bytes:
                        raise _size_mismatch(url, state.size_bytes, "it sent more")
                    handle.write(chunk)
                    state.hashes.update(chunk)
                    state.offset += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                handle.flush()
                os.fsync(handle.fileno())


def _check_length(url: str, response: httpx2.Response, state: _State) -> None:
    """The body's announced length and range must agree with the size the Hub announced for the file."""
    length = response.headers.get("Content-Length")
    if response.status_code == 200:
        if length is not None and length.isdigit() and int(length) != state.size_bytes:
            raise _size_mismatch(url, state.size_bytes, f"its body is {length} bytes")
        return
    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {state.offset}-"):
        raise HubError(f"{url}: asked for bytes {state.offset}-, the server sent the range {content_range!r}")
    total = content_range.rpartition("/")[2]
    if total != "*" and total != str(state.size_bytes):
        raise _size_mismatch(url, state.size_bytes, f"its range says the file has {total} bytes")


def _size_mismatch(url: str, size_bytes: int, what: str) -> IntegrityError:
    return IntegrityError(
        f"{url}: the server announced {size_bytes} bytes for this file but {what}; the partial download was deleted",
        hint="the mirror or a proxy serves something else than it describes: check HF_ENDPOINT",
    )
