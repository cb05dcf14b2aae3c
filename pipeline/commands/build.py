"""`mm build` (staged, incremental recipe builds for nightly runs) and `mm demo` (the whole job, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.base.constants import HOME_ENV, env_value
from pipeline.base.errors import BuildError
from pipeline.build.report import SUMMARY_HEADERS, ConsoleReporter, summary_rows, write_report
from pipeline.commands.options import JsonOpt, OfflineOpt, QuietOpt, RecipesDirOpt, TokenOpt, writable_target
from pipeline.commands.registration import add_command
from pipeline.commands.render import byte_bar, emit_json, note, show_progress, table, tensor_bar
from pipeline.spec.recipe import recipes_dir


def build_command(
    recipes: Annotated[
        list[str] | None, typer.Argument(metavar="[RECIPE]...", help="Recipe names or .toml paths.")
    ] = None,
    all_recipes: Annotated[bool, typer.Option("--all", help="Every recipe in the recipes folder.")] = False,
    folder: RecipesDirOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show which stages would run and why.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run every stage even when up to date.")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="A failing recipe doesn't stop the others.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", min=1, help="Recipes built in parallel.")] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N|auto",
            help="Build only part K of N, e.g. 2/4; auto: the job index of a Slurm array, Kubernetes Indexed Job "
            "or GitHub Actions matrix (MM_JOB_INDEX/MM_JOB_TOTAL).",
        ),
    ] = None,
    report_file: Annotated[
        Path | None, typer.Option("--report", metavar="FILE", help="Write the JSON report here.")
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Skip recipes another mm build holds, instead of waiting.")
    ] = False,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    push: Annotated[
        bool, typer.Option("--push", help="Push each recipe's profiles to its [publish] repo (needs a write token).")
    ] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build recipes: resolve → download → verify → quantize → fit → publish [→ push], skipping what is up to date.

    In a terminal, downloads and quantizes show progress bars. Exits 10 when any recipe failed.

    Example: mm build --all --keep-going --report cache/nightly-report.json
    """
    from pipeline.build.runner import BuildOptions, build, parse_shard, select_recipes

    writable_target(report_file, "--report")
    if push and (as_json or not show_progress(quiet)):
        from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]  # lazily exported

        disable_progress_bars()  # the uploads' bars

    paths = select_recipes(
        recipes or [],
        all_recipes=all_recipes,
        folder=folder or recipes_dir(),
        shard=parse_shard(shard) if shard else None,
    )
    options = BuildOptions(
        force=force, dry_run=dry_run, keep_going=keep_going, jobs=jobs, no_wait=no_wait, token=token, offline=offline,
        push=push,
    )  # fmt: skip
    bars = show_progress(quiet) and not as_json and jobs == 1
    reporter = ConsoleReporter(note, verbose=dry_run, quiet=quiet, download_progress=byte_bar if bars else None,
                               quantize_progress=tensor_bar if bars else None)  # fmt: skip
    report = build(paths, options, reporter)
    if report_file is not None:
        write_report(report, report_file)
    if as_json:
        emit_json(report)
    elif not quiet:
        table(SUMMARY_HEADERS, summary_rows(report))
    if report.failed:
        names = ", ".join(r.name for r in report.failed)
        raise BuildError(f"{len(report.failed)} of {len(report.recipes)} recipe(s) failed: {names}")


def demo_command(quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Make a small model, build a bundled recipe from it (quantize → fit → publish), generate a few tokens.

    Offline; seconds on 2 cores (the first run also builds llama.cpp's tools when they are not there yet).
    The model has random weights, so its words are gibberish by design: the demo shows the pipeline working,
    not a model talking. `make demo` runs it with MM_HOME=./cache.

    Example: MM_HOME=./cache mm demo
    """
    from pipeline.build.demo import run_demo

    result = run_demo(progress=None if quiet or as_json else note)
    if as_json:
        emit_json(result)
        return
    table(SUMMARY_HEADERS, summary_rows(result.build))
    typer.echo(f"\nprofile {result.profile}: {result.prompt!r} → {result.text!r}  (random weights: gibberish)")
    home = f"{HOME_ENV}={env_value(HOME_ENV)} " if env_value(HOME_ENV) else ""
    typer.echo(f"try it:  {home}mm run {result.profile} -p 'hello'   ({home}mm ls lists the profiles)")


def register(app: typer.Typer) -> None:
    add_command(app, "build", build_command)
    add_command(app, "demo", demo_command)
