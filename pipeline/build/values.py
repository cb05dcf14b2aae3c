"""What each build stage hands on, typed: the stages read and write these models, never string-keyed dicts.

A stage's value is stored in its stamp as JSON (`StageOutcome.values`, fields left out when None), so the
stored form is the model's dump and an old stamp still reads. Results of the heavier libraries (a fit, an
evaluation, a bench run) are kept as their JSON documents here and validated by the stage that uses them,
so a no-op build imports neither fit nor llama.cpp.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.base.provenance import SourceRef


class StageValue(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resolved(StageValue):
    """resolve: the commit a Hub revision names, a local file's digest, or a local safetensors snapshot."""

    commit: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    snapshot: dict[str, Any] | None = None  # convert.Snapshot's JSON


class Downloaded(StageValue):
    """download: where the pulled GGUF came from."""

    source_ref: SourceRef


class SnapshotFiles(StageValue):
    """download of a safetensors repo: the snapshot's files (convert.Snapshot's JSON)."""

    snapshot: dict[str, Any]


class ModelFile(StageValue):
    """A model file a stage made or checked (verify, convert, imatrix, quantize); a source carries its origin."""

    path: str
    sha256: str
    source_ref: SourceRef | None = None


class Text(StageValue):
    """A calibration or evaluation text, local and verified."""

    path: str
    text_sha256: str
    source: str  # the path, or repo:file@commit


class Fitted(StageValue):
    fit: dict[str, Any]  # fit.FitResult's JSON


class Evaluated(StageValue):
    eval: dict[str, Any]  # evaluate.EvalResult's JSON


class Benched(StageValue):
    bench: dict[str, Any]  # bench.BenchResult's JSON


class Published(StageValue):
    profile: str


class Pushed(StageValue):
    repo: str
    commit: str | None = None  # None when the repo already had everything
    uploaded: list[str]  # paths written by the push's commit
