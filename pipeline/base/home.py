"""The mm home (MM_HOME): its folders, atomic writes into it, and the locks that serialize mm processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from pipeline.base.constants import HF_CACHE_ENV, HF_HOME_ENV, HOME_ENV, env_value
from pipeline.base.disk_space import disk_full
from pipeline.base.errors import LockTimeoutError, UnsafePathError

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("~/.cache/mm")
BUILDS_LEASE = "builds"  # held shared by every running `mm build`, exclusively by `mm gc`


def _default_file_mode() -> int:
    """0666 less the process umask (read once at import; os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@dataclass(frozen=True)
class Home:
    """The folders of one mm home; every path mm writes lives under one of these."""

    root: Path

    @property
    def hub(self) -> Path:
        """Hub cache: HF_HUB_CACHE, else HF_HOME/hub (huggingface_hub's own order), so an existing cache is
        reused, not copied; else the mm home's hub/."""
        explicit = env_value(HF_CACHE_ENV)
        if explicit:
            return Path(explicit).expanduser()
        hf_home = env_value(HF_HOME_ENV)
        return Path(hf_home).expanduser() / "hub" if hf_home else self.root / "hub"

    @property
    def quant(self) -> Path:
        return self.root / "quant"

    @property
    def converted(self) -> Path:
        """GGUFs converted from safetensors, keyed by snapshot + converter + outtype."""
        return self.root / "converted"

    @property
    def imatrix(self) -> Path:
        """Importance matrices, keyed by model sha256 + text sha256 + parameters."""
        return self.root / "imatrix"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def stamps(self) -> Path:
        return self.root / "stamps"

    @property
    def tools(self) -> Path:
        return self.root / "tools"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def partial(self) -> Path:
        """mm's own resumable partial downloads (huggingface_hub no longer resumes across runs)."""
        return self.root / "partial"

    @property
    def digests(self) -> Path:
        return self.root / "digests"

    @property
    def headers(self) -> Path:
        """Header stubs of Hub models not pulled: the real GGUF header, the data region a sparse hole."""
        return self.root / "headers"

    def ensure(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def inside(root: Path, path: Path) -> Path:
    """`path`, after checking it resolves inside `root`, before anything writes to it.

    The last guard against a value from outside (a commit, an ETag, a file name) that slipped past its
    check: huggingface_hub makes the same check for its snapshot pointers (`_get_pointer_path`).
    """
    real_root = os.path.realpath(root)
    lexical = os.path.normpath(os.path.abspath(path))  # '..' resolved first, as written
    # The folder is resolved (symlinks followed); the last name is not: writers replace it, never follow it.
    real = os.path.join(os.path.realpath(os.path.dirname(lexical)), os.path.basename(lexical))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise UnsafePathError(
            f"refusing to write {path}: it is not inside {root}",
            hint="a value from a server, recipe or file named a path outside mm's folders; nothing was written",
        )
    return path


def mm_home() -> Home:
    """The home named by MM_HOME (read on each call so tests and `make nightly` can point elsewhere)."""
    return Home(Path(env_value(HOME_ENV) or DEFAULT_HOME).expanduser().resolve())


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `target`; it replaces `target` only if the block succeeds.

    A unique name (not a shared `.incomplete`) so two writers never share a temp file, and the same
    directory so `os.replace` is an atomic rename. Nothing may point at `target` until it is complete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; mm's files get the user's usual mode
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(target.parent) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_symlink(link: Path, target: Path) -> Path:
    """`link` → `target` (written relative), made under a unique temporary name and renamed over `link`, so a
    reader sees the old link or the new one; nothing is written when it already points there."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return link
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.symlink(relative, tmp)
        os.replace(tmp, link)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return link


def remove_stale_temps(target: Path) -> None:
    """atomic_path's temporary files for `target` left by a killed run; call it holding target's lock."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                log.info("removed %s, left by an interrupted run", stale)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, document: Any) -> None:
    atomic_write_text(target, json.dumps(document, indent=2, sort_keys=True) + "\n")


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lock_path(home: Home, name: str) -> Path:
    """One lock file per artifact, all in $MM_HOME/locks; `name` may contain '/' (flattened)."""
    safe = name.replace("/", "--").replace(":", "-")
    return home.ensure(home.locks) / f"{safe}.lock"


@contextlib.contextmanager
def locked(home: Home, name: str, *, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold the named lock; while blocked, log "still waiting for …" every few seconds.

    With wait=False a held lock raises LockTimeoutError at once (`--no-wait`).
    """
    lock = filelock.FileLock(str(lock_path(home, name)))
    if not wait:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout as exc:
            raise LockTimeoutError(f"{name} is busy: another mm process is working on it") from exc
    else:
        _acquire_with_heartbeat(lock, name, timeout)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def lease(home: Home, name: str, *, exclusive: bool = False) -> Iterator[bool]:
    """A lease many processes share (exclusive=False: waits only while an exclusive holder works), or an
    exclusive one taken without waiting: yields whether it is held (False: shared holders are alive).

    `mm build` holds the "builds" lease shared while it runs; `mm gc` takes it exclusively, and when it
    cannot, leaves alone what a running build may still read. The kernel drops a lease with its process
    (flock), so a killed build never blocks gc.
    """
    fd = os.open(lock_path(home, name), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)


def _acquire_with_heartbeat(lock: filelock.FileLock, name: str, timeout: float | None) -> None:
    waited = 0.0
    step = 5.0
    while True:
        try:
            lock.acquire(timeout=step)
            return
        except filelock.Timeout:
            waited += step
            if timeout is not None and waited >= timeout:
                raise LockTimeoutError(
                    f"gave up after {waited:.0f}s waiting for {name}: another mm process holds it"
                ) from None
            log.info("still waiting for %s (held by another mm process, %.0fs so far)", name, waited)
