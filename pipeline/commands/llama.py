"""`mm llama`: build llama.cpp's tools and show which quantize engines are available."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.base.units import format_size
from pipeline.commands.options import JsonOpt, QuietOpt
from pipeline.commands.registration import add_command, add_group
from pipeline.commands.render import emit_json, note, table


def build_command(
    cmake_arg: Annotated[
        list[str],
        typer.Option(metavar="OPTION", help="Extra cmake option (repeatable), e.g. -DGGML_CUDA=ON or -DGGML_METAL=ON."),
    ] = [],  # noqa: B006  # typer reads the default; never mutated
    source: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="llama-cpp-python sdist (.tar.gz or unpacked) or a llama.cpp tree."),
    ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", metavar="N", min=1, help="Parallel compile jobs.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compile llama.cpp's tools from the source matching llama-cpp-python (cached per version + options).

    Example: mm llama build -j 8
    """
    from pipeline.llama.tools import TOOLS, build_llama_tools

    if not quiet and not as_json:
        note(f"building {', '.join(TOOLS)}; this takes several minutes...")
    built = build_llama_tools(cmake_arg, source, jobs=jobs)
    if as_json:
        emit_json(built)
        return
    how = "already built" if built.cached else f"built in {built.seconds:.0f}s"
    typer.echo(f"{built.bin_dir} ({how}; llama-cpp-python {built.version}): {', '.join(built.tools)}")


def info_command(as_json: JsonOpt = False) -> None:
    """Which quantize engines are available, their llama.cpp versions and build options.

    Example: mm llama info --json
    """
    from pipeline.llama.engines import engines_info

    engines = engines_info()
    if as_json:
        emit_json(engines)
        return
    table(
        ["engine", "available", "version", "path", "details"],
        [[e.name, "yes" if e.available else "no", e.version, e.path, e.detail] for e in engines],
    )


def converter_command(
    source: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="llama-cpp-python sdist (.tar.gz or unpacked) or a llama.cpp tree."),
    ] = None,
    architectures: Annotated[
        bool, typer.Option("--architectures", help="List the model architectures the converter supports.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Set up llama.cpp's safetensors → GGUF converter (torch CPU, transformers, sentencepiece) under $MM_HOME/tools.

    The converter is convert_hf_to_gguf.py from the llama.cpp source matching llama-cpp-python; its packages
    go into their own environment (about 1.2 GB), once per version. MM_CONVERT_TORCH picks torch's
    requirement (default torch==2.13.0); MM_CONVERT_PIP_ARGS adds pip options. `mm convert` does this itself
    on first use.

    Example: mm llama converter --architectures
    """
    from pipeline.convert.env import ensure_converter, find_converter, supported_architectures

    if find_converter() is None and not quiet and not as_json:
        note("installing the converter's packages (about 1.2 GB); this takes a minute or more...")
    env = ensure_converter(source)
    names = supported_architectures(env) if architectures else None
    if as_json:
        emit_json({"env": env, "architectures": names} if names is not None else env)
        return
    if names is not None:
        for name in names:
            typer.echo(name)
        return
    how = "ready" if env.cached else f"set up in {env.seconds:.0f}s"
    typer.echo(f"{env.root} ({how}; llama-cpp-python {env.version}; {format_size(env.size_bytes)})")


def register(app: typer.Typer) -> None:
    group = add_group(
        app,
        "llama",
        "llama.cpp: build its tools (quantize, imatrix, perplexity, bench, server and more), show the engines.",
    )
    add_command(group, "build", build_command)
    add_command(group, "info", info_command)
    add_command(group, "converter", converter_command)
