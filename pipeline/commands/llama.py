"""`mm llama`: build llama.cpp's tools and show which quantize engines are available."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands.options import JsonOpt, QuietOpt
from pipeline.commands.render import emit_json, note, table

llama_app = typer.Typer(
    help="llama.cpp: build its tools (quantize, imatrix, perplexity, bench, server...), show the engines.",
    no_args_is_help=True,
)


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
    """Compile llama.cpp's tools from the source matching llama-cpp-python (cached per version + options).

    Example: mm llama build -j 8
    """
    from pipeline.llama_build import TOOLS, build_llama_tools

    if not quiet and not json_:
        note(f"building {', '.join(TOOLS)}; this takes several minutes...")
    built = build_llama_tools(cmake_arg, source, jobs=jobs)
    if json_:
        emit_json(built)
        return
    how = "already built" if built.cached else f"built in {built.seconds:.0f}s"
    typer.echo(f"{built.bin_dir} ({how}; llama-cpp-python {built.version}): {', '.join(built.tools)}")


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
