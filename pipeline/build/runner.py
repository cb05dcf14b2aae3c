"""The `mm build` runner: pick recipes, decide which stages are stale and why, run them, record stamps."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from pipeline.base.errors import LockTimeoutError, MMError, UsageError
from pipeline.base.home import BUILDS_LEASE, Home, atomic_write_text, lease, locked, mm_home
from pipeline.base.provenance import utc_now
from pipeline.build.report import BuildReport, RecipeReport, Reporter, StageReport
from pipeline.build.shard_env import AUTO, shard_from_environment
from pipeline.build.stage import Stage, StageEnv, StageOutcome, check_output, fingerprint
from pipeline.build.stages import recipe_stages
from pipeline.llama.quantize_inputs import requantize_problem
from pipeline.spec.recipe import find_recipe, list_recipe_paths, load_recipe

log = logging.getLogger(__name__)

STAMP_SCHEMA_VERSION = 1
# Why a changed input makes a stage run, by input key; other keys are the recipe's own fields.
KEY_REASONS = {
    "commit": "new upstream commit",
    "llama_cpp": "llama.cpp upgraded",
    "hardware": "hardware class changed",
    "stage_version": "mm's build stage changed",
    "mm": "mm upgraded",
}
# Keys that only carry an upstream stage's result: the reason is that stage's reason.
DERIVED_KEYS = {"source_sha256", "model_sha256", "fit_sha256", "source", "profile_sha256", "snapshot", "text_sha256"}
DERIVED_KEYS |= {"imatrix_sha256"}


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    dry_run: bool = False
    keep_going: bool = False
    jobs: int = 1
    no_wait: bool = False
    token: str | None = None
    offline: bool = False
    push: bool = False


class Stamp(BaseModel):
    """A stage's record of success: the fingerprint of the inputs it ran with and what it produced."""

    schema_version: int = STAMP_SCHEMA_VERSION
    recipe: str
    stage: str
    fingerprint: str
    inputs: dict[str, Any]
    outcome: StageOutcome
    seconds: float
    finished_at: str = Field(default_factory=utc_now)


def stamp_path(home: Home, recipe: str, stage: str) -> Path:
    return home.stamps / recipe / f"{stage.replace(':', '-')}.json"


def read_stamp(home: Home, recipe: str, stage: str) -> Stamp | None:
    """The stage's stamp; a missing, unreadable or old-format stamp means "never built"."""
    path = stamp_path(home, recipe, stage)
    try:
        stamp = Stamp.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError):
        log.warning("%s: unreadable stamp, the stage will run again", path)
        return None
    return stamp if stamp.schema_version == STAMP_SCHEMA_VERSION else None


def write_stamp(home: Home, stamp: Stamp) -> None:
    atomic_write_text(stamp_path(home, stamp.recipe, stamp.stage), stamp.model_dump_json(indent=1) + "\n")


# --- choosing recipes ----------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` with 1 ≤ K ≤ N: this machine builds the K-th of N disjoint parts; `auto`: the scheduler's job
    index (pipeline/build/shard_env.py)."""
    if text.strip().lower() == AUTO:
        return shard_from_environment()
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"shard {text!r}: expected K/N, e.g. 1/4", param="shard") from None
    if not 1 <= k <= n:
        raise UsageError(f"shard {text!r}: K must be between 1 and N", param="shard")
    return k, n


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """A stable hash of the recipe's name, so a recipe stays on its machine when others are added."""
    k, n = shard
    return zlib.crc32(name.encode()) % n == k - 1


def select_recipes(
    names: Sequence[str], *, all_recipes: bool, folder: Path, shard: tuple[int, int] | None = None
) -> list[Path]:
    """Recipe files to build: the named ones, or every recipe in the folder; then this shard's part."""
    if names and all_recipes:
        raise UsageError("give recipe names or ask for all recipes, not both", param="all_recipes")
    if not names and not all_recipes:
        raise UsageError("name the recipes to build, or ask for all of them", param="all_recipes")
    paths = list_recipe_paths(folder) if all_recipes else [find_recipe(n, folder) for n in names]
    if shard is not None:
        paths = [p for p in paths if in_shard(p.stem, shard)]
    return paths


# --- running ---------------------------------------------------------------------------------------


def build(
    paths: Sequence[Path],
    options: BuildOptions,
    reporter: Reporter | None = None,
    *,
    stages_for: Callable[[Any, StageEnv], list[Stage]] = recipe_stages,
) -> BuildReport:
    """Build each recipe (in parallel with jobs > 1); without keep_going, the first failure stops the rest."""
    reporter = reporter or Reporter()
    env = StageEnv(
        home=mm_home(), token=options.token, offline=options.offline,
        download_progress=reporter.download_progress, quantize_progress=reporter.quantize_progress, push=options.push,
    )  # fmt: skip
    started = time.perf_counter()
    stop = threading.Event()

    def one(path: Path) -> RecipeReport:
        if stop.is_set():
            return RecipeReport(
                name=path.stem, path=str(path), status="skipped", reason="not started: an earlier recipe failed"
            )
        report = build_recipe(path, options, env, reporter, stages_for=stages_for)
        if report.status == "failed" and not options.keep_going:
            stop.set()
        return report

    if options.jobs > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="mm-build") as pool:
            recipes = list(pool.map(one, paths))
    else:
        recipes = [one(p) for p in paths]
    return BuildReport(dry_run=options.dry_run, seconds=time.perf_counter() - started, recipes=recipes)


def build_recipe(
    path: Path,
    options: BuildOptions,
    env: StageEnv,
    reporter: Reporter,
    *,
    stages_for: Callable[[Any, StageEnv], list[Stage]] = recipe_stages,
) -> RecipeReport:
    """Load, lock and build one recipe; every failure ends up in the report, not as an exception."""
    started = time.perf_counter()
    try:
        recipe = load_recipe(path)
    except MMError as exc:
        report = RecipeReport(name=path.stem, path=str(path), status="failed", reason=str(exc))
        reporter.recipe_done(report)
        return report
    report = RecipeReport(name=recipe.name, path=str(path), status="skipped")
    problem = requantize_problem(recipe) if options.dry_run else None  # a real build fails at quantize
    if problem is not None:
        report.status, report.reason = "failed", problem
        reporter.recipe_done(report)
        return report
    try:
        if options.dry_run:  # read-only: no lock, no stamps
            report.stages = _run_stages(recipe.name, stages_for(recipe, env), env, options, reporter)
        else:
            with (
                lease(env.home, BUILDS_LEASE),  # gc leaves quantize outputs alone while any build runs
                locked(env.home, f"build-{recipe.name}", wait=not options.no_wait),
            ):
                reporter.recipe_started(recipe.name)
                report.stages = _run_stages(recipe.name, stages_for(recipe, env), env, options, reporter)
    except LockTimeoutError:
        report.reason = "another mm build is building it (not waiting for it)"
    except MMError as exc:  # e.g. an unknown hardware class found while listing stages
        report.status, report.reason = "failed", str(exc)
    else:
        report.status = _recipe_status(report.stages, options.dry_run)
        failed = next((s for s in report.stages if s.status == "failed"), None)
        if failed is not None:
            report.reason = f"{failed.name}: {failed.error}"
    report.seconds = time.perf_counter() - started
    reporter.recipe_done(report)
    return report


def _recipe_status(stages: list[StageReport], dry_run: bool) -> Any:
    statuses = {s.status for s in stages}
    if "failed" in statuses:
        return "failed"
    if "ran" in statuses:
        return "built"
    return "would_build" if dry_run and "would_run" in statuses else "skipped"


def _run_stages(
    recipe: str, stages: list[Stage], env: StageEnv, options: BuildOptions, reporter: Reporter
) -> list[StageReport]:
    """Each stage in order: skip when up to date, else run and stamp; stop at the first failure."""
    upstream: dict[str, StageOutcome] = {}
    reasons: dict[str, str] = {}  # stages that ran (or would run) in this build → why
    reports: list[StageReport] = []
    for index, stage in enumerate(stages):
        stamp = read_stamp(env.home, recipe, stage.name)
        pending = [d for d in stage.deps if d in reasons and d not in upstream]
        if pending:  # dry run: an upstream stage would run, so its outputs are unknown yet
            planned = _dry_run_reason(env.home, recipe, stage, stamp, upstream, reasons, options.force)
            report = StageReport(name=stage.name, status="would_run", reason=planned)
            reasons[stage.name] = report.reason
            reports.append(report)
            reporter.stage_skipped(recipe, report)
            continue
        started = time.perf_counter()
        try:
            inputs = stage.inputs(upstream)
            fp = fingerprint(inputs)
            if stage.volatile:  # the check is the work: run it, then compare what it found
                outcome = stage.action(upstream)
                reason = _why_volatile(stage, stamp, fp, inputs, outcome, options.force)
            else:
                reason = _why_stale(env.home, stamp, fp, inputs, stage.deps, reasons, options.force)
                outcome = stamp.outcome if (reason is None and stamp is not None) else StageOutcome()
        except MMError as exc:
            report = _failed(stage.name, "checking for changes", exc, started)
            reporter.stage_failed(recipe, report)
            return [*reports, report, *_not_run(stages[index + 1 :], stage.name)]
        if reason is None:
            upstream[stage.name] = outcome
            report = StageReport(name=stage.name, status="skipped", reason="up to date", outputs=_paths(outcome))
            reports.append(report)
            reporter.stage_skipped(recipe, report)
            continue
        reasons[stage.name] = reason
        if options.dry_run:
            if stage.volatile:
                upstream[stage.name] = outcome
            report = StageReport(name=stage.name, status="would_run", reason=reason)
            reports.append(report)
            reporter.stage_skipped(recipe, report)
            continue
        reporter.stage_started(recipe, stage.name, reason)
        try:
            if not stage.volatile:
                outcome = stage.action(upstream)
        except Exception as exc:
            if not isinstance(exc, MMError):
                log.exception("%s: %s: unexpected error", recipe, stage.name)
            report = _failed(stage.name, reason, exc, started)
            reporter.stage_failed(recipe, report)
            return [*reports, report, *_not_run(stages[index + 1 :], stage.name)]
        seconds = time.perf_counter() - started
        write_stamp(
            env.home,
            Stamp(recipe=recipe, stage=stage.name, fingerprint=fp, inputs=inputs, outcome=outcome, seconds=seconds),
        )
        upstream[stage.name] = outcome
        report = StageReport(name=stage.name, status="ran", reason=reason, seconds=seconds, outputs=_paths(outcome))
        reports.append(report)
        reporter.stage_done(recipe, report)
    return reports


def _dry_run_reason(
    home: Home, recipe: str, stage: Stage, stamp: Stamp | None, upstream: dict[str, StageOutcome],
    reasons: dict[str, str], force: bool,
) -> str:  # fmt: skip
    """What the real run would say for a stage below one that would run: its own reason (never built, recipe
    changed) from its inputs as they would be if the upstream stages made what they made last time; else
    the upstream's reason (the real run names it when only the upstream's outputs change)."""
    inherited = next(reasons[d] for d in stage.deps if d in reasons and d not in upstream)
    if force or stamp is None:
        return "forced" if force else "never built"
    assumed = dict(upstream)
    for dep in stage.deps:
        if dep not in assumed:
            old = read_stamp(home, recipe, dep)
            if old is None:
                return inherited
            assumed[dep] = old.outcome
    try:
        inputs = stage.inputs(assumed)
    except Exception:  # what the inputs read is not there yet: the upstream's reason is all that is known
        return inherited
    deps_reasons = [reasons[d] for d in stage.deps if d in reasons]
    return _why_unstamped(stamp, fingerprint(inputs), inputs, deps_reasons, force) or inherited


def _why_unstamped(
    stamp: Stamp | None, fp: str, inputs: dict[str, Any], upstream_reasons: list[str], force: bool
) -> str | None:
    """The reasons every stage shares: forced, never built, or inputs changed (named by what changed)."""
    if force:
        return "forced"
    if stamp is None:
        return "never built"
    if stamp.fingerprint != fp:
        return _changed_reason(stamp.inputs, inputs, upstream_reasons)
    return None


def _why_stale(
    home: Home,
    stamp: Stamp | None,
    fp: str,
    inputs: dict[str, Any],
    deps: tuple[str, ...],
    reasons: dict[str, str],
    force: bool,
) -> str | None:
    """None when the stage is up to date; cheap checks first (fingerprint, then output stat + cache)."""
    reason = _why_unstamped(stamp, fp, inputs, [reasons[d] for d in deps if d in reasons], force)
    if reason is not None or stamp is None:
        return reason
    for output in stamp.outcome.outputs:
        problem = check_output(home, output)
        if problem is not None:
            return problem
    return None


def _why_volatile(
    stage: Stage, stamp: Stamp | None, fp: str, inputs: dict[str, Any], outcome: StageOutcome, force: bool
) -> str | None:
    reason = _why_unstamped(stamp, fp, inputs, [], force)
    if reason is not None or stamp is None:
        return reason
    return None if stamp.outcome.values == outcome.values else stage.changed_reason


def _changed_reason(old: dict[str, Any], new: dict[str, Any], upstream_reasons: list[str]) -> str:
    changed = {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    for key, reason in KEY_REASONS.items():
        if key in changed:
            return reason
    if changed - DERIVED_KEYS:
        return "recipe changed"
    if upstream_reasons:
        return upstream_reasons[0]
    return f"input changed ({', '.join(sorted(changed))})"


def _failed(name: str, reason: str, exc: BaseException, started: float) -> StageReport:
    error = str(exc) if isinstance(exc, MMError) else f"{type(exc).__name__}: {exc}"
    return StageReport(name=name, status="failed", reason=reason, seconds=time.perf_counter() - started, error=error)


def _not_run(stages: Sequence[Stage], failed: str) -> list[StageReport]:
    return [StageReport(name=s.name, status="not_run", reason=f"not run: {failed} failed") for s in stages]


def _paths(outcome: StageOutcome) -> list[str]:
    return [o.path for o in outcome.outputs]
