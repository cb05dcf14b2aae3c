"""`mm verify --repair`: a damaged or missing blob made again from what it came from, checked by its sha256.

A blob is content-addressed, so the only acceptable repair yields the same sha256 the profile names. Two
ways, cheapest first: copy a file on this machine that still holds those bytes (the quantize output, or
the source when the profile published it unquantized), or quantize the recorded source again with the
recorded parameters (llama.cpp's quantization is deterministic for one version). Each candidate is
re-hashed in full before it is used: a cached digest is what was trusted when the damage happened.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.digest import record_sha256, sha256_file
from pipeline.base.errors import MMError
from pipeline.base.home import locked, mm_home
from pipeline.registry.blobs import restore_blob
from pipeline.registry.profile import Profile
from pipeline.registry.store import LOCK, get_profile
from pipeline.registry.verify import verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repair:
    name: str  # the profile
    sha256: str  # of its blob, before and after
    how: str | None  # what restored it; None when nothing could
    problem: str | None = None  # why it could not be restored

    @property
    def ok(self) -> bool:
        return self.how is not None


def _holds(path: Path, sha256: str) -> bool:
    """Whether `path` holds these bytes, hashed now; a digest cached for it is replaced by the true one."""
    try:
        if not path.is_file():
            return False
        actual = sha256_file(path)
    except OSError:
        return False
    record_sha256(mm_home(), path, actual)  # rot that kept the stat must not pass for the old digest later
    return actual == sha256


def _copies_on_disk(profile: Profile) -> Iterator[Path]:
    """Files that may still hold the blob's bytes: its quantize output, or the file it was published from."""
    source = profile.provenance.source
    if profile.provenance.quantize is not None:
        from pipeline.llama.quantize import default_output_path

        yield default_output_path(Path(source.path), source.sha256, profile.provenance.quantize.type)
    elif source.sha256 == profile.blob.sha256:
        yield Path(source.path)


def _quantize_again(profile: Profile) -> Path:
    """The recorded source quantized again with the recorded parameters; raises MMError when it cannot be."""
    from pipeline.llama.quantize import QuantizeRequest, quantize

    source, params = profile.provenance.source, profile.provenance.quantize
    assert params is not None
    if not _holds(Path(source.path), source.sha256):
        raise MMError(f"its quantize source {source.path} is gone or changed")
    engine = profile.provenance.engine if profile.provenance.engine in ("api", "binary") else "api"
    result = quantize(QuantizeRequest(source=Path(source.path), params=params, source_ref=source, engine=engine))  # type: ignore[arg-type]
    if not _holds(result.output, profile.blob.sha256):
        raise MMError(f"quantizing {Path(source.path).name} again gave other bytes (another llama.cpp version?)")
    return result.output


def _restore(source: Path, sha256: str, size_bytes: int) -> None:
    with locked(mm_home(), LOCK):
        restore_blob(source, sha256, size_bytes)


def restore(profile: Profile) -> Repair:
    """Restore one profile's blob; the result says how, or why it could not."""
    sha, size = profile.blob.sha256, profile.blob.size_bytes
    for candidate in _copies_on_disk(profile):
        if _holds(candidate, sha):
            _restore(candidate, sha, size)
            return Repair(profile.name, sha, f"copied from {candidate}")
    if profile.provenance.quantize is None:
        hint = f"pull {profile.provenance.source.repo} again" if profile.provenance.source.repo else "publish it again"
        return Repair(profile.name, sha, None, f"no file on this machine holds its bytes; {hint}")
    try:
        output = _quantize_again(profile)
    except MMError as exc:
        return Repair(profile.name, sha, None, exc.message)
    _restore(output, sha, size)
    return Repair(profile.name, sha, f"quantized again from {profile.provenance.source.path}")


def repair(name: str | None = None) -> list[Repair]:
    """Restore every damaged blob (of one profile or all); each blob once, however many profiles share it."""
    report = verify(name)
    done: dict[str, Repair] = {}
    repairs = []
    for check in report.checked:
        if check.ok:
            continue
        if check.sha256 not in done:
            done[check.sha256] = restore(get_profile(check.name))
            log.info("blob %s: %s", check.sha256[:12], done[check.sha256].how or done[check.sha256].problem)
        first = done[check.sha256]
        repairs.append(Repair(check.name, first.sha256, first.how, first.problem))
    return repairs
