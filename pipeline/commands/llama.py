"""`mm llama`: build llama.cpp's quantize tool and show which quantize engines are available."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands.options import JsonOpt, QuietOpt
from pipeline.commands.render import emit_json, note, table

llama_app = typer.Typer(help="llama.cpp: build llama-quantize, show the quantize engines.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(llama_app, name="llama")


@llama_app.command("build")
def build_command(
    cmake_arg: Annotated[
        list[str], typer.Option(help="Extra cmake option (repeatable), e.g. -DGGML_CUDA=ON or -DGGML_METAL=ON.")
    ] = [],  # noqa: B006
    source: Annotated[
        Path | None, typer.Option(help="llama-cpp-python sdist (.tar.gz or unpacked) or a llama.cpp tree.")
    ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Parallel compile jobs.")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compile llama-quantize from the llama.cpp matching llama-cpp-python (cached per version + options)."""
    from pipeline.llama_build import build_llama_quantize

    if not quiet and not json_:
        note("building llama-quantize (only that target); this takes a few minutes...")
    tool = build_llama_quantize(cmake_arg, source, jobs=jobs)
    if json_:
        emit_json(tool)
        return
    how = "already built" if tool.cached else f"built in {tool.seconds:.0f}s"
    typer.echo(f"{tool.binary} ({how}; llama-cpp-python {tool.version})")


@llama_app.command("info")
def info_command(json_: JsonOpt = False) -> None:
    """Which quantize engines are available, their llama.cpp versions and build options."""
    from pipeline.llama_build import engines_info

    engines = engines_info()
    if json_:
        emit_json(engines)
        return
    table(
        ["engine", "available", "version", "path", "details"],
        [[e.name, "yes" if e.available else "no", e.version, e.path, e.detail] for e in engines],
    )
