"""`mm quantize`: llama.cpp's quantize for one model and one or more target types."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from pipeline.base.errors import UsageError
from pipeline.base.units import format_size
from pipeline.commands.budget import FitFlags, quantize_to_budget
from pipeline.commands.options import (
    CtxOpt,
    HardwareOpt,
    JsonOpt,
    ModelArg,
    QuietOpt,
    RamOpt,
    RecipesDirOpt,
    ThreadsOpt,
    VramOpt,
    writable_target,
)
from pipeline.commands.registration import add_command
from pipeline.commands.render import counting, emit_json, note, table, work_bar

if TYPE_CHECKING:  # llama.cpp's bindings load when a command runs, so `mm` starts fast
    from pipeline.llama.quantize import QuantizeRequest, QuantizeResult


def quantize_command(
    model: ModelArg,
    to: Annotated[
        list[str],
        typer.Option(
            "--to", metavar="TYPE", help="Target type, e.g. q4_k_m (repeatable); an unknown one lists them all."
        ),
    ] = [],  # noqa: B006
    imatrix: Annotated[Path | None, typer.Option(metavar="FILE", help="Importance matrix from llama-imatrix.")] = None,
    allow_requantize: Annotated[
        bool, typer.Option("--allow-requantize", help="Allow re-quantizing an already quantized model.")
    ] = False,
    output_tensor_type: Annotated[str | None, typer.Option(metavar="TYPE", help="ggml type for output.weight.")] = None,
    token_embedding_type: Annotated[
        str | None, typer.Option(metavar="TYPE", help="ggml type for token_embd.weight.")
    ] = None,
    tensor_type: Annotated[
        list[str], typer.Option(metavar="PATTERN=TYPE", help="Per-tensor type override (repeatable).")
    ] = [],  # noqa: B006
    pure: Annotated[
        bool, typer.Option("--pure", help="No k-quant mixture: every tensor gets the target type.")
    ] = False,
    leave_output_tensor: Annotated[
        bool, typer.Option("--leave-output-tensor", help="Leave output.weight un(re)quantized.")
    ] = False,
    threads: ThreadsOpt = None,
    output: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Output file (default: $MM_HOME/quant/...).")
    ] = None,
    engine: Annotated[
        Literal["api", "binary"] | None,
        typer.Option(metavar="api|binary", help="api: libllama in a child process; binary: llama-quantize."),
    ] = None,
    llama_quantize: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH", exists=True, dir_okay=False, help="The llama-quantize binary (implies --engine binary)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report sizes and per-tensor types; write nothing.")
    ] = False,
    budget: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE|fit",
            help="Choose a type per tensor group by measured KL-divergence; the file stays within SIZE (e.g. 11G), "
            "or (fit) is the largest that --hardware/--vram/--ram/--ctx hold as `mm fit` places it.",
        ),
    ] = None,
    hardware: HardwareOpt = None,
    vram: VramOpt = None,
    ram: RamOpt = None,
    ctx: CtxOpt = None,
    text: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|REPO:FILE",
            help="With --budget: the text sensitivities are measured on (default: the imatrix calibration text).",
        ),
    ] = None,
    eval_text: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|REPO:FILE",
            help="With --budget: the text the result is judged on (default: --text's second half, unused to choose).",
        ),
    ] = None,
    max_evals: Annotated[
        int, typer.Option(metavar="N", min=2, help="With --budget: at most N measured runs to choose the mix.")
    ] = 48,
    bands: Annotated[
        int,
        typer.Option(
            metavar="N",
            min=1,
            max=16,
            help="With --budget: split each layer's groups into N layer bands (3: first, middle, last thirds), "
            "each its own type; one more measured run per band (when --max-evals leaves room for them).",
        ),
    ] = 1,
    recipes: RecipesDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Quantize MODEL to each --to TYPE with llama.cpp (a recipe's [quantize] section gives defaults), or to
    the best measured per-tensor mix within --budget.

    Example: mm quantize model-f16.gguf --to q4_k_m --to q2_k
    Example: mm quantize model-f16.gguf --budget 4.5G --text calibration.txt
    """
    from pipeline.llama.quant_plan import plan
    from pipeline.llama.quantize_inputs import QuantizeOptions, build_requests
    from pipeline.llama.quantize_preflight import check_before_work

    writable_target(output, "--output")
    if budget is not None:
        _no_flags_with_budget(to, tensor_type, output_tensor_type, token_embedding_type, pure, dry_run)
        target = FitFlags(hardware=hardware, vram=vram, ram=ram, ctx=ctx)
        return quantize_to_budget(
            model, budget, target, text=text, eval_text=eval_text, max_evals=max_evals, bands=bands, imatrix=imatrix,
            threads=threads, output=output, recipes=recipes, as_json=as_json, quiet=quiet,
        )  # fmt: skip
    if any(v is not None for v in (hardware, vram, ram, ctx)):
        raise UsageError("--hardware, --vram, --ram and --ctx size a --budget fit; give --budget fit, or drop them")
    if text is not None or eval_text is not None:
        raise UsageError("--text and --eval-text choose a --budget mix; give --budget SIZE, or drop them")
    if llama_quantize is not None and engine == "api":
        raise UsageError("--llama-quantize runs the binary engine; drop it or --engine api")
    engine = "binary" if llama_quantize is not None else engine

    options = QuantizeOptions(
        types=to,
        imatrix=imatrix,
        allow_requantize=True if allow_requantize else None,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        tensor_types=tensor_type,
        pure=True if pure else None,
        leave_output_tensor=True if leave_output_tensor else None,
        threads=threads,
        output=output,
        engine=engine,
        llama_quantize=llama_quantize,
    )
    requests = build_requests(model, options, recipes)
    if dry_run:
        plans = [plan(r.source, r.params, engine=r.engine, llama_quantize=r.llama_quantize) for r in requests]
        if as_json:
            emit_json(plans)
            return
        for p in plans:
            mix = ", ".join(f"{n} {k.lower()}" for k, n in p.tensor_types.items())
            typer.echo(
                f"{p.type}: {format_size(p.source_bytes)} -> {format_size(p.file_bytes)} "
                f"({p.bits_per_weight:.2f} bpw); tensors: {mix}"
            )
            if p.needs_imatrix:
                note(f"  {p.type} needs an importance matrix (--imatrix)")
            if p.fallback_note:
                note(f"  {p.fallback_note}")
        return
    check_before_work(requests)
    results = [_run_one(r, quiet) for r in requests]
    if as_json:
        emit_json(results)
        return
    table(
        ["type", "before", "after", "bpw", "seconds", "output"],
        [
            [r.type, format_size(r.source_bytes), format_size(r.output_bytes), r.bits_per_weight, r.seconds, r.output]
            for r in results
        ],
    )


def _no_flags_with_budget(to: list[str], *chosen: object) -> None:
    """--budget chooses every type itself: explicit types would contradict it."""
    if to or any(chosen):
        raise UsageError(
            "--budget chooses the type of every tensor group; it takes no --to, --tensor-type, --pure, "
            "--output-tensor-type, --token-embedding-type or --dry-run"
        )


def _run_one(request: QuantizeRequest, quiet: bool) -> QuantizeResult:
    from pipeline.llama.quantize import quantize

    with work_bar(request.params.type, "tensor", quiet) as bar:
        result = quantize(request, counting(bar))
    for line in ([result.skipped] if result.skipped else []) + result.warnings:
        note(f"{request.params.type}: {line}")
    if result.fallback_note:
        note(f"{request.params.type}: {result.fallback_note}")
    return result


def register(app: typer.Typer) -> None:
    add_command(app, "quantize", quantize_command)
