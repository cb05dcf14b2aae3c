"""Garbage collection: blobs, quantize outputs and records no profile references, and crashes' leftovers.

gc runs under the registry lock and an exclusive builds lease, so it never removes what a publish or a
running build is about to name.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.digest import forget_sha256
from pipeline.base.errors import LockTimeoutError, RegistryError
from pipeline.base.home import BUILDS_LEASE, Home, lease, locked, mm_home
from pipeline.base.leftovers import find_leftovers
from pipeline.base.provenance import quantize_lock_name, read_record
from pipeline.registry.store import LOCK, read_profile

HEX64 = re.compile(r"[0-9a-f]{64}")


class GcItem(BaseModel):
    path: str
    kind: str  # blob | quant | record | temp | link
    size_bytes: int


class GcReport(BaseModel):
    dry_run: bool
    removed: list[GcItem]
    freed_bytes: int  # bytes actually returned to the filesystem (hard links counted once)
    kept_blobs: int
    builds_running: bool = False  # then quantize outputs were left alone: a build may still read them
    kept_partials: list[GcItem] = []  # resumable downloads (younger than a day, or being downloaded)
    kept_requested: list[GcItem] = []  # unpublished `mm quantize` outputs the user asked for (gone with everything)


def _referenced(home: Home) -> set[str]:
    """Digests any profile names; a broken profile keeps every digest-like string in it alive."""
    keep: set[str] = set()
    for path in home.profiles.glob("*.json") if home.profiles.is_dir() else []:
        try:
            keep.add(read_profile(path).blob.sha256)
        except RegistryError:
            with contextlib.suppress(OSError):
                keep.update(HEX64.findall(path.read_text(errors="replace")))
    return keep


def _gc_candidates(
    home: Home, keep: set[str], held: contextlib.ExitStack, *, quant_outputs: bool, requested: bool
) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(what to remove, the requested quantize outputs left alone because `requested` is False)"""
    found: list[tuple[Path, str]] = []
    spared: list[Path] = []
    for folder in (home.blobs, home.profiles):
        # Every write here happens under the registry lock, which gc holds: any temp file is a crash's.
        found += [(p, "temp") for p in folder.glob(".*.tmp")] if folder.is_dir() else []
    if home.blobs.is_dir():
        found += [(p, "blob") for p in home.blobs.iterdir() if HEX64.fullmatch(p.name) and p.name not in keep]
    exports = home.root / "exports"  # `mm export`'s <sha256>.gguf links to blobs
    if exports.is_dir():
        found += [(p, "link") for p in exports.glob("*.gguf") if p.name.removesuffix(".gguf") not in keep]
    for record_file in sorted(home.quant.rglob("*.mm.json")) if home.quant.is_dir() and quant_outputs else []:
        output = record_file.with_name(record_file.name.removesuffix(".mm.json"))
        try:
            record = read_record(output)
        except Exception:  # a broken record says nothing about what it describes: leave both alone
            continue
        if record is not None and record.sha256 not in keep and record.requested and not requested:
            spared += [output] if output.is_file() else []
        elif record is not None and record.sha256 not in keep:
            try:  # an output quantize is working on right now is not garbage: skip it, hold the rest
                held.enter_context(locked(home, quantize_lock_name(output), wait=False))
            except LockTimeoutError:
                continue
            if output.is_file():
                found.append((output, "quant"))
            found.append((record_file, "record"))
    return found, spared


def gc(dry_run: bool = False, *, everything: bool = False) -> GcReport:
    """Remove blobs, quantize outputs and their records that no profile references; report what it frees.
    Quantize outputs the user asked for (`mm quantize`) stay unless `everything`: they are results, not scraps."""
    home = mm_home()
    with (
        locked(home, LOCK),
        lease(home, BUILDS_LEASE, exclusive=True) as no_build,  # a running build's outputs are not garbage
        contextlib.ExitStack() as held,
    ):
        keep = _referenced(home)
        candidates, spared = _gc_candidates(home, keep, held, quant_outputs=no_build, requested=everything)
        leftovers = find_leftovers(home, held)
        candidates += leftovers.stale
        items: list[GcItem] = []
        inodes: dict[tuple[int, int], tuple[int, int, int]] = {}  # (dev, ino) -> (size, nlink, removed)
        for path, kind in candidates:
            try:
                st = path.lstat() if kind == "link" else path.stat()
            except FileNotFoundError:  # finished (renamed into place) by its writer while gc looked
                continue
            items.append(GcItem(path=str(path), kind=kind, size_bytes=st.st_size))
            size, nlink, removed = inodes.get((st.st_dev, st.st_ino), (st.st_size, st.st_nlink, 0))
            inodes[(st.st_dev, st.st_ino)] = (size, nlink, removed + 1)
            if not dry_run:
                path.unlink(missing_ok=True)
                if kind in ("blob", "quant"):
                    forget_sha256(home, path)
        freed = sum(size for size, nlink, removed in inodes.values() if removed >= nlink)
        kept = len(keep & {p.name for p in home.blobs.iterdir()}) if home.blobs.is_dir() else 0
        partials = [GcItem(path=str(p), kind="partial", size_bytes=_size(p)) for p in leftovers.kept_partials]
        requested = [GcItem(path=str(p), kind="quant", size_bytes=_size(p)) for p in spared]
    return GcReport(
        dry_run=dry_run,
        removed=items,
        freed_bytes=freed,
        kept_blobs=kept,
        builds_running=not no_build,
        kept_partials=partials,
        kept_requested=requested,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a pull finished it meanwhile
        return 0
