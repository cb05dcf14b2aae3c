"""`mm fit` and `mm hw`: how a model fits a machine, and which machines mm knows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.base.errors import FitError, UsageError
from pipeline.base.units import format_size
from pipeline.commands.inspect import note_stub
from pipeline.commands.options import (
    HardwareOpt,
    JsonOpt,
    ModelArg,
    OfflineOpt,
    RamOpt,
    RecipesDirOpt,
    RunFlags,
    TokenOpt,
    VramOpt,
    parse_memory,
    run_options,
)
from pipeline.commands.registration import add_command
from pipeline.commands.render import emit_json, note, table

if TYPE_CHECKING:  # imported when a command runs, so `mm` starts fast
    from pipeline.fitting.fit import FitResult
    from pipeline.fitting.recommend import QuantCandidate, QuantReport


@run_options
def fit_command(
    run: RunFlags,
    model: ModelArg,
    hardware: HardwareOpt = None,
    vram: VramOpt = None,
    ram: RamOpt = None,
    quants: Annotated[
        str | None, typer.Option(metavar="TYPES", help="Compare quants: 'all' or e.g. q3_k_m,q4_k_m.")
    ] = None,
    min_tps: Annotated[float, typer.Option(metavar="X", help="Speed floor (tokens/s) for --quants.", min=0)] = 0.0,
    as_json: JsonOpt = False,
    recipes: RecipesDirOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """How much of MODEL fits the GPU, what stays in RAM, how fast it decodes, and what would fit.

    Works before `mm pull`: a Hub file is fitted from its header alone (fetched with Range requests).
    With --rpc (running workers, asked for their free memory) or -ts, the plan is per device, in llama.cpp's
    device order. Exits 8 when the model does not fit.

    Example: mm fit TheBloke/Llama-2-70B-chat-GGUF:llama-2-70b-chat.Q4_K_M.gguf --hardware rtx3060-12g -c 8192
    """
    from pipeline.fitting.fit_devices import fit_for
    from pipeline.resolve.model_ref import resolve_model, target_hardware

    if quants is not None:  # comparing quants asks llama.cpp and the registry: loaded only then
        from pipeline.fitting.recommend import parse_candidates, recommend_quant
        from pipeline.registry.measurements import measured_quality

    candidates = parse_candidates(quants) if quants is not None else None
    path, recipe, is_stub = resolve_model(model, recipes, token=token, offline=offline, allow_header_stub=True)
    note_stub(model, is_stub)
    target = target_hardware(hardware, parse_memory(vram, "--vram"), parse_memory(ram, "--ram"), recipe, recipes)
    if run.n_gpu_layers and not target.has_gpu:
        raise UsageError(f"--n-gpu-layers {run.n_gpu_layers}: {target.name} has no GPU", hint="drop it, or give --vram")
    settings = run.on(recipe.run if recipe else None)
    if candidates is not None:
        report = recommend_quant(path, target, candidates, settings, min_tps, measured_quality(path))
        emit_json(report) if as_json else _show_report(report)
        return
    result = fit_for(path, target, settings)
    emit_json(result) if as_json else _show_fit(result)
    if result.verdict == "does_not_fit":
        raise FitError(
            f"{model} does not fit {result.hardware}: needs {format_size(result.vram_bytes)} VRAM and "
            f"{format_size(result.ram_bytes)} RAM",
            hint="try the suggestions above, or a lower quant (--quants all)",
        )


def hw_command(
    as_json: JsonOpt = False,
    recipes: RecipesDirOpt = None,
    measure: Annotated[bool, typer.Option("--measure", help="Measure RAM bandwidth and CPU decode rates now.")] = False,
    save: Annotated[
        str | None, typer.Option("--save", metavar="NAME", help="Write the measurement as hardware class NAME.")
    ] = None,
    hardware_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Where --save writes (default: $XDG_CONFIG_HOME/mm/hardware.toml, read from any folder).",
        ),
    ] = None,
    threads: Annotated[
        str | None, typer.Option(metavar="N,N", help="Thread counts to measure, e.g. 1,2 (default: 1..cores).")
    ] = None,
    list_gpus: Annotated[
        bool, typer.Option("--gpus", help="List the GPU catalog (ids for hardware.toml's gpus).")
    ] = False,
) -> None:
    """This machine's GPUs, RAM and CPU, and the hardware classes mm can plan for.

    --gpus lists the GPU catalog a class can be built from (`gpus = ["rtx3090"]` in hardware.toml), each
    figure with its source.

    --measure times RAM reads and llama.cpp's decode of calibration models per thread count (about 15 s
    each); `mm fit` then predicts this machine from the measurement. --save NAME keeps it as a class.

    Example: mm hw --measure --save my-laptop
    """
    from pipeline.probe.local_machine import local_machine
    from pipeline.resolve.model_ref import hardware_file as hardware_toml

    if list_gpus:
        _show_gpus(as_json)
        return
    if measure or save or hardware_file or threads:
        from pipeline.commands.measure import measure_hardware

        measure_hardware(measure, save, hardware_file, threads, recipes, as_json)
        return

    machine = local_machine(hardware_toml(None, recipes))
    if as_json:
        emit_json(machine)
        return
    gpus = ", ".join(f"{g.name} ({format_size(g.free_bytes)} free of {format_size(g.total_bytes)})"
                     for g in machine.gpus) or (
        "none found" if machine.gpu_source == "none" else f"none found (asked {machine.gpu_source})"
    )  # fmt: skip
    typer.echo(f"GPUs: {gpus}\nRAM:  {format_size(machine.ram_bytes)}\nCPU:  {machine.cpu} x{machine.cpu_count}\n")
    rows = [(c.name, format_size(c.vram_bytes) if c.vram_bytes else "-", format_size(c.ram_bytes),
             f"{c.gpu_bandwidth_gbps:g}" if c.vram_bytes else "-", f"{c.ram_bandwidth_gbps:g}",
             "built-in" if c.builtin else "hardware.toml", c.description) for c in machine.classes]  # fmt: skip
    table(("class", "vram", "ram", "gpu GB/s", "ram GB/s", "from", "description"), rows)


def _show_gpus(as_json: bool) -> None:
    from pipeline.spec.gpus import gpu_catalog

    catalog = gpu_catalog()
    if as_json:
        emit_json(catalog)
        return
    rows = [(g.id, g.name, format_size(g.memory_bytes) + (" unified" if g.unified else ""), f"{g.bandwidth_gbps:g}",
             f"{g.fp16_tflops:g}", g.calibration, g.source) for g in catalog.gpus.values()]  # fmt: skip
    table(("id", "name", "memory", "GB/s", "fp16 TFLOPS", "calibration", "source"), rows)
    for key, text in catalog.sources.items():
        note(f"{key}: {text}")


def _settings_line(r: FitResult) -> str:
    s = r.settings
    forced = "" if s.n_gpu_layers is None else f", {r.n_gpu_layers} GPU layers forced"
    return (
        f"assuming ctx {s.n_ctx}, batch {s.n_batch}/{s.n_ubatch}, kv {s.kv_type}, "
        f"flash-attn {'on' if s.flash_attn else 'off'}, parallel {s.parallel}{forced}"
    )


def _show_fit(r: FitResult) -> None:
    verdicts = {"full_offload": "full offload", "partial_offload": "partial offload", "cpu_only": "CPU only",
                "does_not_fit": "does not fit"}  # fmt: skip
    spread = f" ± {r.tokens_per_second_spread:.2g}" if r.tokens_per_second_spread else ""
    speed = "" if r.verdict == "does_not_fit" else f", ~{r.tokens_per_second:g}{spread} tokens/s decode"
    if speed and r.prompt_tokens_per_second:
        speed += f", ~{r.prompt_tokens_per_second:g} tokens/s prompt"
    held = f", experts of {r.n_cpu_moe} in RAM" if r.n_cpu_moe else ""
    typer.echo(f"{verdicts[r.verdict]}: {r.n_gpu_layers}/{r.n_layers + 1} layers on GPU{held} ({r.hardware}){speed}")
    typer.echo(_settings_line(r))
    rows = [(name, *(format_size(getattr(d, f"{name}_bytes")) for d in (r.gpu, r.cpu)))
            for name in ("weights", "kv", "output", "compute", "overhead", "total")]  # fmt: skip
    table(("", "gpu", "cpu"), rows)
    if r.devices and r.split:
        table(("device", "layers", "weights", "kv", "compute", "total", "free", "fits"),
              [(d.name, f"{d.layers}{' + output' if d.output_layer else ''}", format_size(d.weights_bytes),
                format_size(d.kv_bytes), format_size(d.compute_bytes), format_size(d.total_bytes),
                format_size(d.free_bytes), "yes" if d.fits else "no") for d in r.devices])  # fmt: skip
        typer.echo(f"split: {' '.join(r.split.layout.llama_args())} ({r.split.split_reason})")
    if r.n_expert or r.n_gpu_layers:
        typer.echo(f"placement: {r.placement}" + (f" (--n-cpu-moe {r.n_cpu_moe})" if r.n_cpu_moe else ""))
    if r.n_expert:
        typer.echo(f"experts: {r.n_expert_used} of {r.n_expert} per token, {r.active_params / 1e9:.3g} B of "
                   f"{r.n_params / 1e9:.3g} B parameters active; a token reads {format_size(r.gpu_read_bytes)} "
                   f"on the GPU, {format_size(r.cpu_read_bytes)} in RAM")  # fmt: skip
    if r.alternatives:
        rows = [(a.label, str(a.n_gpu_layers), str(a.n_cpu_moe), format_size(a.vram_bytes), f"{a.tokens_per_second:g}")
                for a in r.alternatives]  # fmt: skip
        table(("placement", "gpu layers", "n-cpu-moe", "vram", "tokens/s"), rows)
        typer.echo(f"why: {r.placement_reason}")
    if not r.hardware_vram_bytes:
        fits_vram = "n/a (no GPU)"
    elif r.n_gpu_layers == 0 and r.gpu.total_bytes == 0:
        fits_vram = f"no layer fits in {format_size(r.hardware_vram_bytes)} (all on the CPU)"
    else:
        fits_vram = "yes" if r.fits_vram else "no"
    typer.echo(f"fits VRAM: {fits_vram}   fits RAM: {'yes' if r.fits_ram else 'no'}")
    for suggestion in r.suggestions:
        typer.echo(f"try {suggestion}")
    for warning in r.warnings:
        note(f"warning: {warning}")
    if r.speed_basis:
        note(f"speed rests on: decode {r.speed_basis}" + (f"; prompt {r.prompt_basis}" if r.prompt_basis else ""))
    for assumption in r.assumptions:
        note(f"assumes {assumption}")


def _candidate_note(c: QuantCandidate) -> str:
    notes = (["needs --imatrix"] if c.needs_imatrix else []) + ([c.note] if c.note else [])
    return "; ".join(notes)


def _show_report(r: QuantReport) -> None:
    moe = any(c.n_cpu_moe for c in r.candidates)  # experts in RAM: say for how many layers
    rows = [[c.type, format_size(c.file_bytes) + ("" if c.exact_sizes else " ~"),
             f"{c.n_gpu_layers}" + (f" (experts of {c.n_cpu_moe} layers in RAM)" if moe else ""),
             "-" if not c.fits else f"{c.tokens_per_second:g}" + (f" / {c.prompt_tokens_per_second:g}"
                                                                  if c.prompt_tokens_per_second else ""),
             "-" if c.ppl_delta is None else f"+{c.ppl_delta:g}",
             "yes" if c.fits else "no", _candidate_note(c)] for c in r.candidates]  # fmt: skip
    if any(c.measured_kld is not None for c in r.candidates):
        for row, c in zip(rows, r.candidates, strict=True):
            row.insert(5, "-" if c.measured_kld is None else f"KLD {c.measured_kld:.4f}, {c.measured_ppl_delta:+.4g}")
        table(("type", "file", "gpu layers", "tokens/s", "ppl (ref)", "measured", "fits", "note"), rows)
        texts = sorted({c.measured_text for c in r.candidates if c.measured_text})
        note(f"measured: `mm eval` of that type against this model (KLD, Δppl) on {', '.join(texts)}; "
             "ppl (ref): llama.cpp's reference figure for the type (Llama-3-8B), not this model")  # fmt: skip
    else:
        table(("type", "file", "gpu layers", "tokens/s", "ppl (ref)", "fits", "note"), rows)
    if any(c.prompt_tokens_per_second for c in r.candidates):
        note("tokens/s: decode (tg128) / prompt (pp512), predicted for the class's catalog GPUs")
    typer.echo(f"recommended: {r.recommended or 'none'} ({r.reason})")
    if any(not c.exact_sizes for c in r.candidates):
        note("~ sizes estimated from bits per weight (llama.cpp's quantize dry-run was not available)")


def register(app: typer.Typer) -> None:
    add_command(app, "fit", fit_command)
    add_command(app, "hw", hw_command)
