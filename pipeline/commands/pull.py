"""`mm pull`: download a GGUF model (every shard) from the Hub into the cache, verified by sha256."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import UsageError
from pipeline.base.units import format_size
from pipeline.commands.options import (
    HardwareOpt,
    JsonOpt,
    OfflineOpt,
    QuietOpt,
    RecipesDirOpt,
    RevisionOpt,
    TokenOpt,
)
from pipeline.commands.registration import INTERRUPTED_EXIT, add_command
from pipeline.commands.render import byte_bar, emit_json, note, show_progress, table

if TYPE_CHECKING:  # the Hub client is imported when a pull runs, not on every `mm` start
    from pipeline.resolve.model_ref import PullTarget

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", metavar="NAME", help="Install this profile a repo published with `mm push` (GGUF + settings)."
    ),
]
ListProfilesOpt = Annotated[bool, typer.Option("--list-profiles", help="List the profiles the repo offers.")]
ReplaceOpt = Annotated[
    bool, typer.Option("--force", help="With --profile: replace a local profile of that name with other content.")
]
LocalNameOpt = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help="Local name for the installed profile (with --profile).")
]


def _ask(files: list[tuple[str, int]]) -> str:
    """Ask until the answer is a listed number or file name (Ctrl-D gives up)."""
    names = [name for name, _ in files]
    while True:
        try:
            answer = str(typer.prompt("pull which file (# or name)")).strip()
        except typer.Abort:
            raise UsageError("no file chosen") from None
        if answer.isdigit() and 1 <= int(answer) <= len(files):
            return names[int(answer) - 1]
        if answer in names:
            return answer
        note(f"{answer!r} is not one of the files: type a number from 1 to {len(files)}, or a file name")


def _choose_file(target: PullTarget, token: str | None) -> str:
    """No file named: list the repo's GGUF files; ask on a terminal, else say to name one."""
    from pipeline.hub import api as hub

    files = hub.list_gguf_files(target.repo, target.revision, token=token)
    if len(files) == 1:
        note(f"{target.repo}: pulling its only GGUF file, {files[0][0]}")
        return files[0][0]
    if not files or not sys.stdin.isatty():
        raise UsageError(
            f"{target.repo}: name a file (mm pull {target.repo} FILE, or --file FILE); {hub.describe_gguf_files(files)}"
        )
    table(["#", "file", "size"], [(i, name, format_size(size)) for i, (name, size) in enumerate(files, start=1)])
    return _ask(files)


def pull_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="owner/name:FILE.gguf, owner/name (then FILE or a choice), a Hub URL, or a recipe.",
        ),
    ],
    file_arg: Annotated[
        str | None, typer.Argument(metavar="[FILE]", help="The GGUF file in the repo, as `hf download REPO FILE`.")
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", metavar="FILE", help="The GGUF file in the repo (for split models: any shard)."),
    ] = None,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    recipes: RecipesDirOpt = None,
    profile: ProfileOpt = None,
    list_profiles: ListProfilesOpt = False,
    hardware: HardwareOpt = None,
    name: LocalNameOpt = None,
    force: ReplaceOpt = False,
) -> None:
    """Download a GGUF model from the Hub into the mm home, resumably, and verify its sha256.

    Ctrl-C keeps what was downloaded: the same command resumes it. With --profile, install a profile that
    `mm push` published: its GGUF (verified), settings and provenance, fit-checked for this machine or
    --hardware; --list-profiles shows what a repo offers.

    Example: mm pull TheBloke/Llama-2-7B-GGUF llama-2-7b.Q4_K_M.gguf
    """
    from pipeline.hub import download
    from pipeline.resolve.hub_ref import model_text_from_url
    from pipeline.resolve.model_ref import pull_target

    if profile is not None or list_profiles:
        from pipeline.registry.push import target_repo

        if file is not None or file_arg is not None:
            raise UsageError("--profile and --list-profiles take a repo (OWNER/NAME), not a file")
        repo = target_repo(model_text_from_url(model), "MODEL", param="profile")
        return _pull_profile(repo, profile, revision, token, hardware, name, force, recipes, as_json, quiet)
    if hardware is not None or name is not None or force:
        raise UsageError("--hardware, --name and --force go with --profile (installing a published profile)")
    if file is not None and file_arg is not None:
        raise UsageError(f"the file is named twice ({file_arg} and --file {file}); give it once")
    target = pull_target(model, filename=file or file_arg, revision=revision, recipes_folder=recipes)
    try:
        filename = target.filename or _choose_file(target, token)
        files = download.pull(
            target.repo, filename, target.revision, token=token, offline=offline, expected_sha256=target.sha256,
            progress=byte_bar if show_progress(quiet) else None,
        )  # fmt: skip
    except KeyboardInterrupt:
        note("\ninterrupted: what was downloaded is kept; rerun the same command to resume")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if as_json:
        emit_json(files)
        return
    note(f"{target.repo}@{target.revision} is commit {files[0].commit}; sha256 verified")
    table(
        ["file", "size", "sha256", "path"],
        [(f.filename, format_size(f.size_bytes), f.sha256[:16], f.path) for f in files],
    )


def _pull_profile(
    repo: str, profile: str | None, revision: str | None, token: str | None, hardware: str | None,
    name: str | None, force: bool, recipes: Path | None, as_json: bool, quiet: bool,
) -> None:  # fmt: skip
    """`mm pull OWNER/REPO --list-profiles` and `--profile NAME` (pipeline/registry/install.py does the work)."""
    from pipeline.registry.install import install_profile, list_repo_profiles
    from pipeline.resolve.model_ref import target_hardware

    if profile is None:
        offered = list_repo_profiles(repo, revision or DEFAULT_REVISION, token=token)
        if as_json:
            emit_json([d.profile for d in offered])
            return
        table(
            ["profile", "quant", "size", "hardware", "gpu layers", "tok/s", "file"],
            [
                (p.name, p.quant, format_size(p.blob.size_bytes), p.hardware,
                 f"{p.run.n_gpu_layers}/{p.prediction.n_layers + 1}", f"{p.prediction.tokens_per_second:.1f}", d.file)
                for d in offered
                for p in [d.profile]
            ],
        )  # fmt: skip
        return
    target = target_hardware(hardware, None, None, None, recipes)
    report = install_profile(
        repo, profile, target, revision=revision or DEFAULT_REVISION, token=token, rename=name, force=force,
        progress=byte_bar if show_progress(quiet) else None,
    )  # fmt: skip
    if report.warning:
        note(f"warning: {report.warning}")
    if as_json:
        emit_json(report)
        return
    p, check = report.profile, report.check
    typer.echo(
        f"installed {p.name} from {repo}@{report.commit[:12]} ({p.quant}, {format_size(p.blob.size_bytes)}, sha256 "
        f"verified); on {check.hardware}: {check.verdict}, ~{check.tokens_per_second:.1f} tok/s — `mm run {p.name}`"
    )


def register(app: typer.Typer) -> None:
    add_command(app, "pull", pull_command)
