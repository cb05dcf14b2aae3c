"""What `mm build` tells its operator: the JSON report's models, and reporters with per-stage event hooks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from pipeline.base.home import atomic_write_text
from pipeline.base.provenance import utc_now

if TYPE_CHECKING:  # huggingface_hub loads with pipeline.hub.transfer: only when a transfer runs
    from pipeline.hub.transfer import ProgressFactory

SCHEMA_VERSION = 1

# would_run / would_build appear only in a --dry-run report.
# not_run: an earlier stage failed, so this one was never attempted.
StageStatus = Literal["ran", "skipped", "failed", "would_run", "not_run"]
RecipeStatus = Literal["built", "skipped", "failed", "would_build"]


class StageReport(BaseModel):
    name: str
    status: StageStatus
    reason: str  # why it ran ("never built", "new upstream commit", …) or why it was skipped
    seconds: float = 0.0
    outputs: list[str] = Field(default_factory=list)
    error: str | None = None


class RecipeReport(BaseModel):
    name: str
    path: str
    status: RecipeStatus
    reason: str = ""  # for a failed or skipped recipe: the one-line why
    seconds: float = 0.0
    stages: list[StageReport] = Field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "ran"]  # a dry run's would_run stages did not run


class BuildReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    started_at: str = Field(default_factory=utc_now)
    dry_run: bool = False
    seconds: float = 0.0
    recipes: list[RecipeReport] = Field(default_factory=list)

    @property
    def failed(self) -> list[RecipeReport]:
        return [r for r in self.recipes if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for recipe in self.recipes:
            counts[recipe.status] = counts.get(recipe.status, 0) + 1
        return counts


def write_report(report: BuildReport, path: Path) -> None:
    """The JSON report, written atomically (a nightly's log reader never sees half a file)."""
    atomic_write_text(path, report.model_dump_json(indent=2) + "\n")


WHY_WIDTH = 80  # the summary's why column; the JSON report keeps the whole text


def _short(text: str, width: int = WHY_WIDTH) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width and "\n" not in text else line[: width - 1] + "…"


def summary_rows(report: BuildReport) -> list[list[str]]:
    """One row per recipe for the human summary table: recipe, status, stages ran/skipped/not run, time, why."""
    rows = []
    for recipe in report.recipes:
        ran = len(recipe.ran)
        skipped = sum(1 for s in recipe.stages if s.status == "skipped")
        not_run = sum(1 for s in recipe.stages if s.status == "not_run")
        why = recipe.reason or next((s.reason for s in recipe.stages if s.status != "skipped"), "up to date")
        rows.append([recipe.name, recipe.status, str(ran), str(skipped), str(not_run), f"{recipe.seconds:.1f}",
                     _short(why)])  # fmt: skip
    return rows


SUMMARY_HEADERS = ["recipe", "status", "ran", "skipped", "not run", "seconds", "why"]


class Reporter:
    """Event hooks the runner calls (doit's reporter); this base ignores them all.

    `download_progress` / `quantize_progress`, when set, draw a bar per file downloaded (bytes) and per
    quantize (tensors): the console sets them when a person watches a terminal.
    """

    download_progress: ProgressFactory | None = None
    quantize_progress: ProgressFactory | None = None

    def recipe_started(self, recipe: str) -> None:
        """A recipe's lock is held and its stages are about to be checked."""

    def stage_started(self, recipe: str, stage: str, reason: str) -> None:
        """A stage is out of date and is running now (reason says why)."""

    def stage_skipped(self, recipe: str, stage: StageReport) -> None:
        """A stage is up to date (or would run, in a dry run)."""

    def stage_done(self, recipe: str, stage: StageReport) -> None:
        """A stage ran and succeeded; its stamp is recorded."""

    def stage_failed(self, recipe: str, stage: StageReport) -> None:
        """A stage raised; the recipe stops here and its published profiles stay as they were."""

    def recipe_done(self, report: RecipeReport) -> None:
        """A recipe finished (built, skipped or failed)."""


class ConsoleReporter(Reporter):
    """One line per event for a person watching (the CLI passes a stderr writer); safe across threads."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        verbose: bool = False,
        quiet: bool = False,
        download_progress: ProgressFactory | None = None,
        quantize_progress: ProgressFactory | None = None,
    ) -> None:
        self.download_progress = download_progress
        self.quantize_progress = quantize_progress
        self._write = write
        self._verbose = verbose
        self._quiet = quiet  # failures only
        self._lock = threading.Lock()

    def _line(self, text: str, *, failure: bool = False) -> None:
        if self._quiet and not failure:
            return
        with self._lock:
            self._write(text)

    def stage_started(self, recipe: str, stage: str, reason: str) -> None:
        self._line(f"{recipe}: {stage}: running ({reason})")

    def stage_skipped(self, recipe: str, stage: StageReport) -> None:
        if stage.status == "would_run":
            self._line(f"{recipe}: {stage.name}: would run ({stage.reason})")
        elif self._verbose:
            self._line(f"{recipe}: {stage.name}: up to date")

    def stage_done(self, recipe: str, stage: StageReport) -> None:
        self._line(f"{recipe}: {stage.name}: done in {stage.seconds:.1f}s")

    def stage_failed(self, recipe: str, stage: StageReport) -> None:
        self._line(f"{recipe}: {stage.name}: FAILED: {stage.error}", failure=True)

    def recipe_done(self, report: RecipeReport) -> None:
        stage_failed = any(s.status == "failed" for s in report.stages)  # its error was shown just before
        detail = f" ({report.reason})" if report.reason and not stage_failed else ""
        if report.status != "skipped" or report.reason or self._verbose:
            self._line(f"{report.name}: {report.status}{detail}", failure=report.status == "failed")
