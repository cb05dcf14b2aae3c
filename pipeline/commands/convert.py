"""`mm convert` (safetensors → GGUF) and `mm imatrix` (importance matrices for the low-bit types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.safe_names import REPO_ID_RE
from pipeline.base.units import format_size
from pipeline.commands.options import (
    JsonOpt,
    ModelArg,
    OfflineOpt,
    QuietOpt,
    RecipesDirOpt,
    RevisionOpt,
    ThreadsOpt,
    TokenOpt,
)
from pipeline.commands.registration import add_command
from pipeline.commands.render import counting, emit_json, note, work_bar
from pipeline.spec.recipe import DEFAULT_IMATRIX_CHUNKS, DEFAULT_IMATRIX_CTX, Outtype


def register(app: typer.Typer) -> None:
    add_command(app, "convert", convert_command)
    add_command(app, "imatrix", imatrix_command)


def convert_command(
    model: Annotated[
        str, typer.Argument(metavar="REPO|DIR", help="A Hub transformers repo (owner/name) or a local model folder.")
    ],
    outtype: Annotated[
        Outtype, typer.Option(help="GGUF type of the weights (auto: the checkpoint's own 16-bit type).")
    ] = "auto",
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a Hugging Face safetensors model to GGUF with llama.cpp's own convert_hf_to_gguf.py.

    Only the files conversion reads are pulled (verified, resumable, cached); the converter runs in its own
    environment under $MM_HOME/tools, made on first use (see `mm llama converter`).

    Example: mm convert meta-llama/Llama-3.2-1B --outtype bf16
    """
    from pipeline.base.errors import UsageError
    from pipeline.convert.converter import convert, local_snapshot, pull_snapshot
    from pipeline.convert.env import ensure_converter, find_converter

    folder = Path(model).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise UsageError(f"{model} is a local folder; --revision applies to Hub repos")
        snapshot = local_snapshot(folder)
    elif REPO_ID_RE.match(model):
        snapshot = pull_snapshot(model, revision or DEFAULT_REVISION, token=token, offline=offline)
    else:
        raise UsageError(f"{model}: no such folder, and not a Hub repository id (owner/name)")
    if find_converter() is None and not (quiet or as_json):
        note("setting up llama.cpp's converter environment (once; about 1.2 GB, see `mm llama converter`)...")
    env = ensure_converter()
    with work_bar(f"convert {snapshot.name}", "%", quiet or as_json) as bar:
        result = convert(snapshot, outtype, converter=env, progress=counting(bar))
    if as_json:
        emit_json(result)
        return
    record = result.record
    how = "up to date" if result.cached else f"converted in {record.seconds:.1f}s"
    typer.echo(f"{result.output} ({record.architecture}, {record.outtype}, {format_size(record.size_bytes)}; {how})")


def imatrix_command(
    model: ModelArg,
    text: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|REPO:FILE",
            help="Calibration text: a file, or owner/name:FILE[#member][@revision] in a Hub dataset "
            "(default: MM_CALIBRATION_TEXT, else WikiText-2's train split).",
        ),
    ] = None,
    chunks: Annotated[
        int, typer.Option(metavar="N", min=1, help="Chunks of text to read (llama-imatrix reads all by default).")
    ] = DEFAULT_IMATRIX_CHUNKS,
    ctx: Annotated[
        int, typer.Option("--ctx", "-c", metavar="N", min=16, help="Tokens per chunk (llama-imatrix's default).")
    ] = DEFAULT_IMATRIX_CTX,
    threads: ThreadsOpt = None,
    n_gpu_layers: Annotated[
        int | None, typer.Option("--n-gpu-layers", "-ngl", metavar="N", min=0, help="Layers to offload (GPU builds).")
    ] = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    recipes: RecipesDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute an importance matrix for MODEL with llama.cpp's llama-imatrix (cached by model, text, options).

    Use it with `mm quantize MODEL --to iq2_xxs --imatrix FILE`.

    Example: mm imatrix model-f16.gguf --text calibration.txt --chunks 100
    """
    from pipeline.llama.imatrix import ImatrixParams, calibration_text, make_imatrix
    from pipeline.resolve.model_ref import local_model_file, parse_model_arg
    from pipeline.resolve.texts import resolve_text

    path, _ = local_model_file(parse_model_arg(model, recipes), token=token, offline=offline)
    calibration = resolve_text(calibration_text(text), token=token, offline=offline)
    with work_bar("imatrix", "chunk", quiet or as_json) as bar:
        result = make_imatrix(
            path,
            calibration,
            ImatrixParams(chunks=chunks, ctx=ctx),
            threads=threads,
            n_gpu_layers=n_gpu_layers,
            progress=counting(bar),
        )
    if as_json:
        emit_json(result)
        return
    record = result.record
    how = "up to date" if result.cached else f"{record.chunks_done} chunks in {record.seconds:.1f}s"
    typer.echo(f"{result.output} ({record.n_entries} tensors; {how})")
