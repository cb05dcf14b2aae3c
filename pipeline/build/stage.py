"""The stage machinery: what a stage is, what it hands on, and how its inputs and outputs are fingerprinted.

Each stage declares the inputs its output depends on (fingerprinted by the runner as canonical JSON) and
an action that produces outputs; the stages themselves are in `pipeline/build/stages/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from pipeline.base.digest import cached_sha256, file_sha256, record_sha256
from pipeline.base.home import Home
from pipeline.base.provenance import FileRecord
from pipeline.build.values import Resolved, StageValue
from pipeline.llama.tools import llama_cpp_version

if TYPE_CHECKING:  # huggingface_hub loads with pipeline.hub.transfer: only when a transfer runs
    from pipeline.hub.transfer import Progress, ProgressFactory

# Bumped when a stage's action changes what it produces, so stamps of the old action are stale.
STAGE_VERSION = 1
V = TypeVar("V", bound=StageValue)


class OutputRecord(FileRecord):
    """A file a stage produced, with the digest it had when the stage finished."""

    path: str


class StageOutcome(BaseModel):
    """What a stage hands on: files it produced and its value (a stage_values model, stored as its JSON)."""

    outputs: list[OutputRecord] = Field(default_factory=list)
    values: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, value: StageValue, outputs: Sequence[OutputRecord] = ()) -> StageOutcome:
        return cls(outputs=list(outputs), values=value.model_dump(mode="json", exclude_none=True))

    def value(self, kind: type[V]) -> V:
        """The stage's value as the model it was written from (fails loudly if it is another kind)."""
        return kind.model_validate(self.values)


Upstream = Mapping[str, StageOutcome]


def resolved_commit(up: Upstream) -> str:
    """The commit the resolve stage found (a Hub source's stages run only after it named one)."""
    commit = up["resolve"].value(Resolved).commit
    assert commit is not None, "resolve names a commit for a Hub source"
    return commit


@dataclass(frozen=True)
class Stage:
    """One unit of work: `inputs(upstream)` is fingerprinted; `action(upstream)` does the work.

    A `volatile` stage (resolve) is itself the up-to-date check: it runs every time (cheap, read-only)
    and counts as skipped when its outcome is unchanged; `changed_reason` is what a changed outcome means.
    """

    name: str
    deps: tuple[str, ...]
    inputs: Callable[[Upstream], dict[str, Any]]
    action: Callable[[Upstream], StageOutcome]
    volatile: bool = False
    changed_reason: str = "result changed"


@dataclass(frozen=True)
class StageEnv:
    """What every stage of a build shares: the home, Hub access, and the llama.cpp in use."""

    home: Home
    token: str | None = None
    offline: bool = False
    push: bool = False  # `mm build --push`: recipes with [publish] repo push their profiles after publishing
    llama_cpp_version: str = field(default_factory=llama_cpp_version)
    download_progress: ProgressFactory | None = None  # a bar per file (bytes), when someone is watching
    quantize_progress: ProgressFactory | None = None  # a bar per quantize (tensors)

    @property
    def tool_versions(self) -> dict[str, Any]:
        """What a llama.cpp stage's output depends on besides its inputs: llama.cpp's version and the stages'."""
        return {"llama_cpp": self.llama_cpp_version, "stage_version": STAGE_VERSION}


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs' canonical JSON (sorted keys, no whitespace), as doit's config_changed."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def output_record(home: Home, path: Path, sha256: str | None = None) -> OutputRecord:
    """Describe a produced file; its digest is remembered so later checks need only a stat."""
    digest = sha256 or file_sha256(home, path)
    if sha256 is not None and cached_sha256(home, path) != sha256:
        record_sha256(home, path, sha256)
    return OutputRecord(path=str(path), size_bytes=path.stat().st_size, sha256=digest)


def check_output(home: Home, output: OutputRecord) -> str | None:
    """None when the file is still what the stage produced, else why not. Cheap first: stat, then cache.

    A file whose stat changed since its digest was recorded is re-hashed (touched is not changed).
    """
    path = Path(output.path)
    try:
        size = path.stat().st_size
    except OSError:
        return f"output missing: {path}"
    if size != output.size_bytes:
        return f"output changed: {path}"
    digest = cached_sha256(home, path) or file_sha256(home, path)
    return None if digest == output.sha256 else f"output changed: {path}"


@contextlib.contextmanager
def tensor_progress(factory: ProgressFactory | None, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """quantize's (done, total) callback drawn on a bar from `factory`, made once the total is known."""
    if factory is None:
        yield None
        return
    bar: list[Progress] = []
    last = [0]

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(factory(label, total, 0))
        bar[0].update(done - last[0])
        last[0] = done

    try:
        yield progress
    finally:
        if bar:
            bar[0].close()
