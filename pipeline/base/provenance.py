"""Where a model file came from and how it was made: the records later stages (registry, build) read.

One way to describe a source (`source_ref`: every shard's sha256, the Hub repo and commit when the file is
in the Hub cache; `made_from` for a file mm made from a snapshot) and one digest check (`check_sha256`),
whose IntegrityError carries path, expected and actual for the callers that report them.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.base.digest import file_sha256
from pipeline.base.errors import IntegrityError, ModelFormatError
from pipeline.base.home import atomic_write_text, mm_home
from pipeline.base.mix_record import MixRecord
from pipeline.base.shards import shard_paths

SCHEMA_VERSION = 1


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SourceRef(BaseModel):
    """A model file's origin: a local path, or a Hub repo at a resolved commit."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "hub"]
    path: str  # where the bytes are on this machine (first shard for split models)
    sha256: str  # of the first (or only) file
    size_bytes: int  # all shards together
    repo: str | None = None
    revision: str | None = None  # as asked (branch/tag/commit)
    commit: str | None = None  # resolved 40-hex commit
    file: str | None = None  # path in the repo (first shard)
    shards: list[str] = Field(default_factory=list)  # every shard's local path, split models only
    shard_sha256: list[str] = Field(default_factory=list)  # every shard's sha256, in order, split models only

    def same_bytes(self, other: SourceRef) -> bool:
        """Whether both describe the same content: every shard's digest, not just the first's."""
        return self.sha256 == other.sha256 and self.shard_sha256 == other.shard_sha256


# A file in the Hub cache: <cache>/models--<owner>--<name>/snapshots/<commit>/<file in the repo>
_HUB_SNAPSHOT = re.compile(
    r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/(?P<file>.+)$"
)


def source_ref(path: Path, *, revision: str | None = None) -> SourceRef:
    """The provenance of a model file (any shard of a split one names them all), hashed through the digest
    cache. A Hub cache snapshot path records its repo, commit and file; `revision` is the one asked for."""
    shards = shard_paths(path)
    home = mm_home()
    digests = [file_sha256(home, shard) for shard in shards]
    split = len(shards) > 1
    local = SourceRef(
        kind="local",
        path=str(shards[0]),
        sha256=digests[0],
        size_bytes=sum(shard.stat().st_size for shard in shards),
        shards=[str(s) for s in shards] if split else [],
        shard_sha256=digests if split else [],
    )
    in_cache = shards[0].absolute().is_relative_to(home.hub)
    match = _HUB_SNAPSHOT.search(shards[0].as_posix()) if in_cache else None
    if match is None:
        return local
    return local.model_copy(
        update={
            "kind": "hub",
            "repo": f"{match['owner']}/{match['name']}",
            "revision": revision,
            "commit": match["commit"],
            "file": match["file"],
        }
    )


def made_from(
    path: Path, *, kind: Literal["local", "hub"], repo: str | None, revision: str | None, commit: str | None
) -> SourceRef:
    """A file mm made from a model folder or Hub snapshot (convert's GGUF): its own bytes (`source_ref`),
    the origin's repo and commit, so a quantize of it names where the weights came from."""
    return source_ref(path).model_copy(update={"kind": kind, "repo": repo, "revision": revision, "commit": commit})


def check_sha256(path: str, actual: str | None, expected: str | None, *, against: str, hint: str) -> None:
    """The one digest check: `actual` must be `expected` (None expected: nothing to check).

    `against` names where the expectation comes from (the recipe's pin, the Hub's LFS sha256, a record).
    """
    if expected and actual != expected:
        raise IntegrityError(
            f"{path}: sha256 {actual} does not match {against} {expected}",
            path=path,
            expected=expected,
            actual=actual,
            hint=hint,
        )


PIN = "the recipe's pin (source.sha256)"
PIN_HINT = "the file changed upstream: check it, then update the pin (or pin the revision to a commit)"


class QuantParams(BaseModel):
    """Every quantize parameter that changes the output (threads do not, and are recorded apart)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    allow_requantize: bool = False
    imatrix_path: str | None = None
    imatrix_sha256: str | None = None
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: dict[str, str] = Field(default_factory=dict)
    pure: bool = False
    leave_output_tensor: bool = False


class FileRecord(BaseModel):
    """A file's digest and size when it was made: what every record of a produced file starts with."""

    sha256: str
    size_bytes: int


class SidecarRecord(FileRecord):
    """Written beside a file mm made (`<file>.mm.json`) once the file is complete and checked: which file,
    how long making it took, and when. Quantize, convert and imatrix records extend it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    output_path: str
    seconds: float
    created_at: str = Field(default_factory=utc_now)


class KeyedRecord(SidecarRecord):
    """A sidecar of a cached output (convert, imatrix): `key` fingerprints the inputs it was made from."""

    key: str


class QuantRecord(SidecarRecord):
    """Written beside each quantize output once the output is complete and checked."""

    file_type: int  # general.file_type of the output
    n_tensors: int
    source: SourceRef
    params: QuantParams
    engine: Literal["api", "binary"]
    llama_cpp_version: str  # llama-cpp-python version and llama.cpp build, e.g. "0.3.36 (b6xxx)"
    threads: int | None = None
    # Made because the user asked for this file (`mm quantize`), not as a step of a build: gc keeps it unless --all.
    requested: bool = False
    mix: MixRecord | None = None  # `mm quantize --budget`: the mix and its measured figures (added once judged)


def quantize_lock_name(output: Path) -> str:
    """The lock quantize holds while it makes `output`; gc takes it too, so it never removes work in progress."""
    return "quantize-" + hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]


def record_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".mm.json")


_Keyed = TypeVar("_Keyed", bound=KeyedRecord)


def keyed_record(output: Path, model: type[_Keyed], key: str) -> _Keyed | None:
    """The `model` record beside `output` (convert, imatrix) when it was made from the inputs `key` names and
    the file still has the recorded size; None when either is missing, unreadable or stale: make it again."""
    record_file = record_path_for(output)
    if not output.is_file() or not record_file.is_file():
        return None
    try:
        record = model.model_validate_json(record_file.read_text())
    except ValidationError:
        return None
    return record if (record.key, record.size_bytes) == (key, output.stat().st_size) else None


def write_record(record: SidecarRecord) -> Path:
    """The record beside its output, written whole (temp + rename)."""
    path = record_path_for(Path(record.output_path))
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n")
    return path


def read_record(output: Path) -> QuantRecord | None:
    """The record beside a quantize output, or None when there is none; a broken one is an error."""
    path = record_path_for(output)
    if not path.is_file():
        return None
    try:
        return QuantRecord.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ModelFormatError(f"{path}: not a valid quantize record ({exc.error_count()} problem(s))") from None
