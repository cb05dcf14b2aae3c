"""`mm convert` (safetensors → GGUF) and `mm imatrix` (importance matrices for the low-bit types)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from pipeline.commands.options import JsonOpt, OfflineOpt, QuietOpt, RecipesDirOpt, RevisionOpt, TokenOpt
from pipeline.commands.render import emit_json, note, show_progress
from pipeline.units import format_size


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
    app.command("imatrix")(imatrix_command)


def _bar(label: str, unit: str, quiet: bool) -> tuple[tqdm[Any], Callable[[int, int], None]]:
    bar = tqdm(desc=label, unit=unit, disable=not show_progress(quiet), leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total or None
        bar.update(done - bar.n)

    return bar, progress


def convert_command(
    model: Annotated[str, typer.Argument(help="A Hub transformers repo (owner/name) or a local model folder.")],
    outtype: Annotated[
        str, typer.Option(help="f32 | f16 | bf16 | q8_0 | auto (auto: the checkpoint's own 16-bit type).")
    ] = "auto",
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a Hugging Face safetensors model to GGUF with llama.cpp's own convert_hf_to_gguf.py.

    Only the files conversion reads are pulled (verified, resumable, cached); the converter runs in its own
    environment under $MM_HOME/tools, made on first use (see `mm llama converter`).

    Example: mm convert meta-llama/Llama-3.2-1B --outtype bf16
    """
    from pipeline.convert import convert, local_snapshot, pull_snapshot
    from pipeline.convert_env import ensure_converter, find_converter
    from pipeline.errors import UsageError

    folder = Path(model).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise UsageError(f"{model} is a local folder; --revision applies to Hub repos")
        snapshot = local_snapshot(folder)
    else:
        snapshot = pull_snapshot(model, revision or "main", token=token, offline=offline)
    if find_converter() is None and not (quiet or json_):
        note("setting up llama.cpp's converter environment (once; about 1.2 GB, see `mm llama converter`)...")
    env = ensure_converter()
    bar, progress = _bar(f"convert {snapshot.name}", "%", quiet or json_)
    try:
        result = convert(snapshot, outtype, converter=env, progress=progress)
    finally:
        bar.close()
    if json_:
        emit_json(result)
        return
    record = result.record
    how = "up to date" if result.cached else f"converted in {record.seconds:.1f}s"
    typer.echo(f"{result.output} ({record.architecture}, {record.outtype}, {format_size(record.size_bytes)}; {how})")


def imatrix_command(
    model: Annotated[str, typer.Argument(help="A .gguf path, a pulled owner/name:FILE.gguf, or a recipe name.")],
    text: Annotated[
        str | None,
        typer.Option(help="Calibration text: a file, or owner/name:FILE[@revision] on the Hub (default: pinned)."),
    ] = None,
    chunks: Annotated[int | None, typer.Option(min=1, help="Chunks of text to process (default: all).")] = None,
    ctx: Annotated[int, typer.Option(min=16, help="Context length per chunk (llama-imatrix's default).")] = 512,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads (default: llama.cpp's).")] = None,
    n_gpu_layers: Annotated[int | None, typer.Option(min=0, help="Layers to offload to a GPU build.")] = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    recipes: RecipesDirOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute an importance matrix for MODEL with llama.cpp's llama-imatrix (cached by model, text, options).

    Use it with `mm quantize MODEL --to iq2_xxs --imatrix FILE`.

    Example: mm imatrix model-f16.gguf --text calibration.txt --chunks 100
    """
    from pipeline.imatrix import ImatrixParams, make_imatrix
    from pipeline.model_ref import local_model_file, parse_model_arg
    from pipeline.texts import default_calibration, local_text

    path, _ = local_model_file(parse_model_arg(model, recipes), token=token, offline=offline)
    calibration = local_text(text, default=default_calibration(), token=token, offline=offline)
    bar, progress = _bar("imatrix", "chunk", quiet or json_)
    try:
        result = make_imatrix(
            path,
            calibration,
            ImatrixParams(chunks=chunks, ctx=ctx),
            threads=threads,
            n_gpu_layers=n_gpu_layers,
            progress=progress,
        )
    finally:
        bar.close()
    if json_:
        emit_json(result)
        return
    record = result.record
    how = "up to date" if result.cached else f"{record.chunks_done} chunks in {record.seconds:.1f}s"
    typer.echo(f"{result.output} ({record.n_entries} tensors; {how})")
