"""`mm pull`: download a GGUF model (every shard) from the Hub into the cache, verified by sha256."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.commands import add_command
from pipeline.commands.options import JsonOpt, OfflineOpt, QuietOpt, RecipesDirOpt, RevisionOpt, TokenOpt
from pipeline.commands.render import byte_bar, emit_json, note, show_progress, table
from pipeline.errors import UsageError
from pipeline.units import format_size

if TYPE_CHECKING:  # the Hub client is imported when a pull runs, not on every `mm` start
    from pipeline.download import PullTarget

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it


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
    from pipeline import hub

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
) -> None:
    """Download a GGUF model from the Hub into the mm home, resumably, and verify its sha256.

    Ctrl-C keeps what was downloaded: the same command resumes it.

    Example: mm pull TheBloke/Llama-2-7B-GGUF llama-2-7b.Q4_K_M.gguf
    """
    from pipeline import download
    from pipeline.hub_url import model_text_from_url

    if file is not None and file_arg is not None:
        raise UsageError(f"the file is named twice ({file_arg} and --file {file}); give it once")
    model = model_text_from_url(model)
    if "@" in model and ":" not in model:  # a repo URL at a revision
        model, url_revision = model.split("@", 1)
        revision = revision or url_revision
    target = download.pull_target(model, filename=file or file_arg, revision=revision, recipes_folder=recipes)
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


def register(app: typer.Typer) -> None:
    add_command(app, "pull", pull_command)
