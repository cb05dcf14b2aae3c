"""`mm pull`: download a GGUF model (every shard) from the Hub into the cache, verified by sha256."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm

from pipeline.commands.options import JsonOpt, OfflineOpt, QuietOpt, RecipesDirOpt, RevisionOpt, TokenOpt
from pipeline.commands.render import emit_json, note, show_progress, table
from pipeline.errors import UsageError
from pipeline.units import format_size

if TYPE_CHECKING:  # the Hub client is imported when a pull runs, not on every `mm` start
    from pipeline.download import PullTarget
    from pipeline.transfer import Progress

FileOpt = Annotated[
    str | None, typer.Option("--file", "-f", help="The GGUF file in the repo (for split models: any shard).")
]


def _bar(label: str, total: int, initial: int) -> Progress:
    bar: Progress = tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr
    )
    return bar


def _choose_file(target: PullTarget, token: str | None) -> str:
    """No file named: list the repo's GGUF files; ask on a terminal, else say to pass --file."""
    from pipeline import hub

    files = hub.list_gguf_files(target.repo, target.revision, token=token)
    if len(files) == 1:
        note(f"{target.repo}: pulling its only GGUF file, {files[0][0]}")
        return files[0][0]
    if not files or not sys.stdin.isatty():
        raise UsageError(f"{target.repo}: choose a file with --file; {hub.describe_gguf_files(files)}")
    table(["#", "file", "size"], [(i, name, format_size(size)) for i, (name, size) in enumerate(files, start=1)])
    choice: int = typer.prompt("pull which file (#)", type=int)
    if not 1 <= choice <= len(files):
        raise UsageError(f"choose a number from 1 to {len(files)}")
    return files[choice - 1][0]


def pull(
    model: Annotated[str, typer.Argument(help="owner/name:FILE.gguf, owner/name (with --file), or a recipe.")],
    file: FileOpt = None,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    recipes: RecipesDirOpt = None,
) -> None:
    """Download a GGUF model from the Hub into the mm home, resumably, and verify its sha256.

    Example: mm pull TheBloke/Llama-2-7B-GGUF:llama-2-7b.Q4_K_M.gguf
    """
    from pipeline import download

    target = download.pull_target(model, filename=file, revision=revision, recipes_folder=recipes)
    filename = target.filename or _choose_file(target, token)
    files = download.pull(
        target.repo,
        filename,
        target.revision,
        token=token,
        offline=offline,
        expected_sha256=target.sha256,
        progress=_bar if show_progress(quiet) else None,
    )
    if json_output:
        emit_json(files)
        return
    note(f"{target.repo}@{target.revision} is commit {files[0].commit}; sha256 verified")
    table(
        ["file", "size", "sha256", "path"],
        [(f.filename, format_size(f.size_bytes), f.sha256[:16], f.path) for f in files],
    )


def register(app: typer.Typer) -> None:
    """Add `mm pull` to the root app."""
    app.command("pull")(pull)
