"""Copies that share no inode with their source: a reflink where the filesystem offers one, else bytes.

The registry's blobs used to be hard links to quantize outputs, so damage to one was damage to both and
republishing "repaired" a blob with its own damaged inode. A reflink (btrfs, XFS, bcachefs) costs no space
until either side is written, and a write then touches only that side.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

from pipeline.base.digest import read_chunks

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(source: Path, target: Path) -> bool:
    """Make `target` a reflink of `source`; False (and `target` left empty) where the filesystem cannot."""
    with open(source, "rb") as reader, open(target, "wb") as writer:
        try:
            fcntl.ioctl(writer.fileno(), FICLONE, reader.fileno())
        except OSError:  # EOPNOTSUPP, EXDEV, EINVAL: a filesystem without shared extents
            return False
    return True


def copy_hashing(source: Path, target: Path) -> str:
    """Copy `source` to `target` and return the sha256 of the bytes written (one read of the source)."""
    digest = hashlib.sha256()
    with open(source, "rb", buffering=0) as reader, open(target, "wb") as writer:
        for chunk in read_chunks(reader):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def clone_hashing(source: Path, target: Path) -> str:
    """`target` as its own file with `source`'s bytes (reflink or copy); the sha256 of what `target` holds."""
    if reflink(source, target):
        digest = hashlib.sha256()
        with open(target, "rb", buffering=0) as reader:
            for chunk in read_chunks(reader):
                digest.update(chunk)
        return digest.hexdigest()
    return copy_hashing(source, target)
