"""`mm push`: publish registry profiles (GGUF, profile document, model card) to a Hub repo."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.commands.options import JsonOpt, QuietOpt, TokenOpt
from pipeline.commands.registration import add_command
from pipeline.commands.render import emit_json, note, show_progress

RepoOpt = Annotated[str, typer.Option("--repo", metavar="OWNER/NAME", help="The Hub repo; created when missing.")]
BranchOpt = Annotated[
    str, typer.Option("--revision", "-r", metavar="BRANCH", help="Branch to commit to (created when missing).")
]


def push_command(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Profile names (`mm ls` lists them).")],
    repo: RepoOpt,
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing repo is kept as is).")
    ] = False,
    revision: BranchOpt = DEFAULT_REVISION,
    token: TokenOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish profiles to a Hub repo: each GGUF once (by sha256), profiles/NAME.json, and a README model card.

    Safe to re-run (only what the repo lacks is uploaded) and beside other pushers to the same repo.
    Needs a write token: HF_TOKEN or --token (never printed or stored).

    Example: mm push demo-q4_k_m demo-q8_0 --repo my-org/demo-GGUF
    """
    from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]  # lazily exported

    from pipeline.registry.push import push

    if not show_progress(quiet):
        disable_progress_bars()
    report = push(names, repo, revision=revision, private=private, token=token)
    if as_json:
        emit_json(report)
        return
    if report.commit is None:
        typer.echo(f"{report.repo}@{report.revision} already has {', '.join(report.profiles)}: nothing uploaded")
        return
    retried = f" after {report.conflicts} conflict(s)" if report.conflicts else ""
    typer.echo(f"pushed {', '.join(report.profiles)} to {report.url} (commit {report.commit[:12]}{retried})")
    for path in report.uploaded:
        note(f"  uploaded  {path}")
    for path in report.deleted:
        note(f"  removed   {path}")
    if report.unchanged:
        note(f"  {len(report.unchanged)} file(s) already there, not sent again")


def register(app: typer.Typer) -> None:
    add_command(app, "push", push_command)
