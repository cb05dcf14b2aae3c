"""Disk space: free bytes where a file will go, the check made before writing, and ENOSPC as mm's error.

Every writer that knows its size asks `require_space` first (a pull, a quantize, a publish across
filesystems); whatever still meets a full disk (ENOSPC) becomes the same DiskSpaceError (exit 4),
naming the folder and what was needed, through `disk_full`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.base.errors import DiskSpaceError
from pipeline.base.units import format_size

SLACK_BYTES = 16 << 20  # what a filesystem needs beyond the file itself (metadata, records, logs)
HINT = "free some space, or point MM_HOME (or HF_HUB_CACHE) at a bigger disk"


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem that holds `folder` (or its nearest existing parent)."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage("/").free


def disk_full(folder: Path, needed_bytes: int | None = None) -> DiskSpaceError:
    """The error for ENOSPC met while writing into `folder`: which disk, how much is free, what was needed."""
    need = f"; {format_size(needed_bytes)} needed" if needed_bytes is not None else ""
    return DiskSpaceError(
        f"the disk is full: writing into {folder} failed ({format_size(free_bytes(folder))} free{need})", hint=HINT
    )


def require_space(
    folder: Path,
    needed_bytes: int,
    what: str,
    *,
    exact: Callable[[], int] | None = None,
    slack_bytes: int = SLACK_BYTES,
    hint: str = HINT,
    param: str | None = None,
) -> int:
    """The bytes `what` needs in `folder`, or DiskSpaceError before anything is written.

    `needed_bytes` may be an estimate; when free space is within twice it, `exact()` (e.g. llama.cpp's
    dry run) is asked for the true size, so a roomy disk never pays for the exact answer.
    """
    free = free_bytes(folder)
    if exact is not None and free < 2 * needed_bytes + slack_bytes:
        needed_bytes = exact()
    if free < needed_bytes + slack_bytes:
        raise DiskSpaceError(
            f"not enough free disk: {what} needs {format_size(needed_bytes)}, {format_size(free)} free at {folder}",
            hint=hint,
            param=param,
        )
    return needed_bytes
