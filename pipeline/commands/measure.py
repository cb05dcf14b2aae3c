"""`mm bench`, `mm eval` and `mm hw --measure`: speed and quality measured on this machine."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.commands.options import (
    JsonOpt,
    OfflineOpt,
    QuietOpt,
    RecipesDirOpt,
    RunFlags,
    ThreadsOpt,
    TokenOpt,
    run_options,
)
from pipeline.commands.registration import add_command
from pipeline.commands.render import emit_json, note, table, work_bar

if TYPE_CHECKING:
    from pipeline.spec.hardware import HardwareClass

TargetArg = Annotated[
    str,
    typer.Argument(metavar="MODEL", help="A profile name (its exact settings), or a .gguf, Hub file or recipe."),
]
NoStoreOpt = Annotated[bool, typer.Option("--no-store", help="Do not record the result in the profile.")]


@run_options
def bench_command(
    run: RunFlags,
    target: TargetArg,
    n_prompt: Annotated[
        int, typer.Option("--n-prompt", "-p", metavar="N", min=0, help="Prompt tokens (pp test; 0 skips it).")
    ] = 512,
    n_gen: Annotated[
        int, typer.Option("--n-gen", "-n", metavar="N", min=0, help="Generated tokens (tg test; 0 skips it).")
    ] = 128,
    repetitions: Annotated[
        int, typer.Option("--repetitions", "-r", metavar="N", min=1, help="Timed runs per test.")
    ] = 5,
    no_store: NoStoreOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    recipes: RecipesDirOpt = None,
) -> None:
    """Prompt and decode tokens/s on this machine, as llama-bench measures them (pp512, tg128).

    Prints the median and spread of the timed runs, and fit's prediction for this machine beside the
    measurement; a profile's result is stored in it (`mm show`, `mm ls` print it, marked as measured).
    The device flags (--rpc, -ts, -sm, -mg, --device) are for fit, publish and run, not bench.

    Example: mm bench demo-q4_k_m -r 5
    """
    from pipeline.registry.measurements import bench
    from pipeline.spec.results import machine_label

    if "devices" in run.given:
        from pipeline.base.errors import UsageError

        raise UsageError("mm bench measures this machine's own devices: --rpc, -ts, -sm, -mg and --device are for "
                         "mm fit, publish and run", param="rpc")  # fmt: skip

    with work_bar("run", "run", quiet) as bar:

        def progress(test: str, done: int, total: int) -> None:
            bar.set_description(test)
            bar.total, bar.n = total, done
            bar.refresh()

        result = bench(target, recipes, flags=run.given, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                       store=not no_store, progress=progress)  # fmt: skip
    if as_json:
        emit_json(result.model_dump(mode="json") | {"prediction_error": result.prediction_error})
        return
    predicted = f"{result.predicted_tg_ts:g}" + (
        f" ± {result.predicted_tg_spread:.2g}" if result.predicted_tg_spread else ""
    )
    rows = [(f.test, f"{f.median_ts:.2f}", f"{f.min_ts:.2f} - {f.max_ts:.2f}", f"{f.stdev_ts:.2f}",
             f"{f.steady_ts:.2f}" if f.steady_ts else "-",
             predicted if f.test.startswith("tg") and result.predicted_tg_ts else _predicted(
                 result.predicted_pp_ts if f.test.startswith("pp") else None))
            for f in (result.pp, result.tg) if f is not None]  # fmt: skip
    table(("test", "tokens/s (median)", "min - max", "stdev", "steady", "predicted"), rows)
    error = result.prediction_error
    if error is not None and result.tg is not None:
        steady = result.tg.steady_ts or result.tg.median_ts
        typer.echo(f"decode: predicted {predicted}, measured {steady:.2f} tokens/s steady ({error:+.0%}; "
                   f"{result.tg.median_ts:.2f} by wall time per run) by {result.hardware}")  # fmt: skip
    note(
        f"on {machine_label(result.machine)}: {result.threads} thread(s), {result.repetitions} runs per test, "
        f"{result.seconds:.1f}s"
    )


def _predicted(value: float | None) -> str:
    return f"{value:g}" if value else "-"


def eval_command(
    target: TargetArg,
    ref: Annotated[
        str | None,
        typer.Option("--ref", metavar="SOURCE", help="The reference model (required): .gguf, Hub file or recipe."),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="A text file, or owner/name:FILE[#member][@revision] in a Hub dataset "
            "(default: WikiText-2 test, or MM_TEXT).",
        ),
    ] = None,
    chunks: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Score at most N chunks (bounds the cost).")
    ] = None,
    ctx: Annotated[
        int, typer.Option("--ctx", "-c", metavar="N", min=16, help="Tokens per chunk (llama-perplexity's -c).")
    ] = 512,
    threads: ThreadsOpt = None,
    no_store: NoStoreOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    recipes: RecipesDirOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Quality of a quant against its source: perplexity of both, mean KL-divergence, same top token.

    The figures `llama-perplexity --kl-divergence` reports, computed as it computes them (chunks of --ctx
    tokens, the second half of each scored). A profile's result is stored in it.

    Example: mm eval demo-q2_k --ref models/demo-f16.gguf --chunks 20
    """
    from pipeline.registry.measurements import eval_quant

    with work_bar("chunk", "chunk", quiet) as bar:

        def progress(phase: str, done: int, total: int) -> None:
            bar.set_description("reference" if phase == "ref" else "quant")
            bar.total, bar.n = total, done
            bar.refresh()

        result = eval_quant(target, ref, recipes, text=text, n_ctx=ctx, chunks=chunks, threads=threads,
                            store=not no_store, token=token, offline=offline, progress=progress)  # fmt: skip
    if as_json:
        emit_json(result)
        return
    rows = [("PPL(Q)", f"{result.ppl:.4f}"), ("PPL(ref)", f"{result.ppl_ref:.4f}"),
            ("ln(PPL(Q)/PPL(ref))", f"{result.ln_ppl_ratio:+.6f}"),
            ("mean KLD", f"{result.kld_mean:.6f} ± {result.kld_stdev:.6f}"),
            ("same top token", f"{100 * result.same_top_rate:.3f} %"),
            ("text", f"{result.text} (sha256 {result.text_sha256[:12]}…)"),
            ("scored", f"{result.tokens_scored} tokens in {result.chunks} chunk(s) of {result.n_ctx}")]  # fmt: skip
    table(("figure", "value"), rows)
    note(f"{result.seconds:.1f}s")


def measure_hardware(
    measure: bool,
    save: str | None,
    hardware_file: Path | None,
    threads: str | None,
    recipes: Path | None,
    as_json: bool,
) -> None:
    """`mm hw --measure [--save NAME]`: measure (or take the cached measurement), cache, save, show."""
    from pipeline.base.errors import HardwareError, UsageError
    from pipeline.measure.gpu import with_gpu
    from pipeline.measure.machine import cache_measurement, fewer_threads_note, measure_machine, save_class
    from pipeline.probe.local_machine import cached_measurement
    from pipeline.spec.hardware import user_hardware_file

    if save is not None and not re.match(r"^[a-z0-9][a-z0-9._-]*$", save):
        raise UsageError(f"--save {save!r}: a class name is lower-case letters, digits and . _ - (e.g. my-laptop)")
    if hardware_file is not None and not save:
        raise UsageError(f"--hardware-file {hardware_file}: only with --save NAME")
    if threads is not None and not measure:
        raise UsageError(f"--threads {threads}: only with --measure")
    if measure:
        try:
            counts = [int(t) for t in threads.split(",")] if threads else None
        except ValueError:
            raise UsageError(f"--threads {threads!r}: expected thread counts such as 1,2") from None
        if counts is not None and min(counts) < 1:
            raise UsageError(f"--threads {threads!r}: thread counts start at 1")
        measured = measure_machine(threads=counts, progress=lambda line: note(f"measuring {line}"))
        measured, skipped = with_gpu(measured, progress=lambda line: note(f"measuring {line}"))
        if skipped:
            note(f"GPU not measured: {skipped}")
        note(f"saved to {cache_measurement(measured)}; `mm fit` now predicts this machine from it")
    else:
        cached = cached_measurement()
        if cached is None:
            raise HardwareError("no measurement of this machine yet", hint="run `mm hw --measure --save NAME`")
        measured = cached
    if save:
        target = hardware_file or user_hardware_file()
        note(f"wrote class {save} to {save_class(measured, save, target)}")
    fewer = fewer_threads_note(measured)
    if fewer:
        note(f"warning: {fewer}")
    if as_json:
        emit_json(measured)
        return
    show_rates(measured)


def register(app: typer.Typer) -> None:
    add_command(app, "bench", bench_command)
    add_command(app, "eval", eval_command)


def show_rates(measured: HardwareClass) -> None:
    """Bandwidth and overhead per thread count, then one row per type: GFLOP/s ± spread per thread count."""
    counts = sorted(measured.cpu_rates)
    rates = [measured.cpu_rates[c] for c in counts]
    typer.echo(f"RAM read bandwidth: {measured.ram_bandwidth_gbps:g} GB/s")
    bandwidths = [
        f"{r.ram_bandwidth_gbps or measured.ram_bandwidth_gbps:g} ± {r.ram_bandwidth_spread:.0%}" for r in rates
    ]
    from pipeline.fitting.cpu_speed import overhead_per_op_us

    ops = [overhead_per_op_us(r) for r in rates]
    table(("threads", "RAM GB/s", "out-of-cache share", "overhead ms", "µs/node", "ns/vocab entry", "ns/SSM state"),
          [(c, bw, f"{r.ram_compute_share:.2f}", f"{r.token_overhead_ms:.3f}", f"{o:.2f}", f"{r.vocab_overhead_ns:.1f}",
            f"{r.state_overhead_ns:.1f}")
           for c, bw, r, o in zip(counts, bandwidths, rates, ops, strict=True)])  # fmt: skip
    kinds = sorted({k for r in rates for k in r.gflops})
    table(("type", *(f"{c} thread(s) GFLOP/s" for c in counts)),
          [(k, *(f"{r.gflops[k]:g} ± {r.spread.get(k, 0):.1%}" if k in r.gflops else "-" for r in rates))
           for k in kinds])  # fmt: skip
    spreads = [s for r in rates for s in r.spread.values()]
    errors = [e for r in rates for e in r.error.values()]
    if spreads and errors:
        typer.echo(f"repeatability: rates spread {statistics.median(spreads):.1%} (median), {max(spreads):.1%} "
                   f"(widest) between interleaved rounds; a repeat may move a rate by {statistics.median(errors):.1%} "
                   f"(median), {max(errors):.1%} (widest): the standard error of each median")  # fmt: skip
    note(measured.measured)
