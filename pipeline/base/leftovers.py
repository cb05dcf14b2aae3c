"""Leftovers of killed mm processes — quantize temp outputs, header-stub and blob temps, partial downloads —
found for `mm gc`, each only when no live process holds it.

A leftover's writer holds a lock while it writes (quantize: the output's lock; a download: its blob's;
a header fetch: its folder's). gc takes that same lock without waiting: a held lock means a live writer
and the file is skipped; a free one is kept held until gc is done, so no writer starts on it meanwhile.
Partial downloads are resumable, so only those untouched for PARTIAL_MAX_AGE_SECONDS go.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.errors import LockTimeoutError
from pipeline.base.home import Home, locked
from pipeline.base.provenance import quantize_lock_name

PARTIAL_MAX_AGE_SECONDS = 24 * 3600  # a pull resumed within a day keeps its bytes
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # home.atomic_path: .<target>.<random>.tmp


@dataclass(frozen=True)
class Leftovers:
    stale: list[tuple[Path, str]]  # (path, kind): temp | partial
    kept_partials: list[Path]  # resumable downloads, too young to remove (or held by a live pull)


def find_leftovers(home: Home, held: contextlib.ExitStack, now: float | None = None) -> Leftovers:
    """Stale temp files and old partial downloads that no live process holds (their locks stay held)."""
    now = time.time() if now is None else now
    taken: set[str] = set()

    def hold(lock: str, path: Path) -> bool:
        """The lock is ours, and `path` still there (its writer may have finished it before we got the lock)."""
        if lock not in taken and not _hold(home, lock, held):
            return False
        taken.add(lock)
        return path.exists()

    stale: list[tuple[Path, str]] = []
    for temp in _temps(home.quant):
        output = temp.parent / _target(temp).removesuffix(".mm.json")
        if hold(quantize_lock_name(output), temp):
            stale.append((temp, "temp"))
    for temp in _temps(home.headers):
        if temp.parent.parent == home.headers and hold(f"header-{temp.parent.name}", temp):
            stale.append((temp, "temp"))
    for temp in _temps(home.hub):
        if temp.parent.name == "blobs" and hold(f"blob-{_target(temp)}", temp):
            stale.append((temp, "temp"))
    kept: list[Path] = []
    for part in sorted(home.partial.glob("*.part")) if home.partial.is_dir() else []:
        try:
            old = now - part.stat().st_mtime > PARTIAL_MAX_AGE_SECONDS
        except FileNotFoundError:  # its pull finished and moved it into the cache
            continue
        if old and hold(f"blob-{part.name.removesuffix('.part')}", part):
            stale.append((part, "partial"))
        elif part.exists():
            kept.append(part)
    return Leftovers(stale, kept)


def _temps(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob(".*.tmp") if _TEMP_RE.match(p.name) and not p.is_symlink())


def _target(temp: Path) -> str:
    match = _TEMP_RE.match(temp.name)
    assert match is not None
    return match["name"]


def _hold(home: Home, lock: str, held: contextlib.ExitStack) -> bool:
    """Take `lock` without waiting and keep it until `held` closes; False when a live process has it."""
    try:
        held.enter_context(locked(home, lock, wait=False))
    except LockTimeoutError:
        return False
    return True
