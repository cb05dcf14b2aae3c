"""`mm inspect`, `mm fit` and `mm hw`: what a model is, how it fits a machine, and which machines mm knows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.commands.options import (
    CpuMoeOpt,
    HardwareOpt,
    JsonOpt,
    NCpuMoeOpt,
    OfflineOpt,
    RecipesDirOpt,
    TokenOpt,
)
from pipeline.commands.render import emit_json, note, table
from pipeline.units import format_size, parse_size

if TYPE_CHECKING:  # imported when a command runs, so `mm` starts fast
    from pipeline.fit import (
        FitResult,
        QuantCandidate,
        QuantReport,
    )

ModelArg = Annotated[str, typer.Argument(help="A .gguf path, a pulled owner/name:FILE.gguf[@revision], or a recipe.")]


def _size(text: str | None, what: str) -> int | None:
    return None if text is None else parse_size(text, what=what)


def _note_stub(model: str, is_stub: bool) -> None:
    if is_stub:
        note(f"{model}: not pulled; answered from its GGUF header (fetched with Range requests)")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""

    @app.command("inspect")
    def inspect_cmd(
        model: ModelArg,
        json: JsonOpt = False,
        recipes: RecipesDirOpt = None,
        token: TokenOpt = None,
        offline: OfflineOpt = False,
    ) -> None:
        """Architecture, size and shape of a GGUF, read from its header alone (fast on any size).

        A Hub file that is not pulled is inspected from its header, fetched with HTTP Range requests.

        Example: mm inspect TheBloke/Llama-2-70B-chat-GGUF:llama-2-70b-chat.Q4_K_M.gguf
        """
        from pipeline.model_info import resolve_model, summarize_model

        resolved = resolve_model(model, recipes, token=token, offline=offline, allow_header_stub=True)
        _note_stub(model, resolved.is_stub)
        summary = summarize_model(resolved.path)
        if json:
            emit_json(summary)
            return
        s = summary
        swa = f"{s.sliding_window} tokens on {s.swa_layers}/{s.n_layers} layers" if s.sliding_window else "none"
        rows = [
            ("architecture", s.architecture), ("name", s.name), ("parameters", f"{s.n_params / 1e9:.3g} B"),
            ("layers", s.n_layers), ("context length", s.context_length), ("embedding", s.n_embd),
            ("heads / kv heads", f"{s.n_head} / {s.n_head_kv} (head dim {s.head_dim})"), ("ffn", s.n_ff),
            ("vocabulary", s.n_vocab), ("sliding window", swa), ("file type", s.file_type),
            ("tensor types", ", ".join(f"{k} x{v}" for k, v in s.tensor_types.items())),
            ("size", f"{format_size(s.size_bytes)} in {s.shards} file(s)"),
            ("bits per weight", f"{s.bits_per_weight:.2f}"),
        ]  # fmt: skip
        if s.n_expert:
            rows[5:5] = [
                ("experts", f"{s.n_expert}, {s.n_expert_used} used per token"
                            + (f", {s.n_expert_shared} shared" if s.n_expert_shared else "")),
                ("expert ffn", s.n_ff_exp), ("leading dense layers", s.n_dense_layers),
                ("active parameters", f"{s.active_params / 1e9:.3g} B per token of {s.n_params / 1e9:.3g} B"),
            ]  # fmt: skip
        table(("field", "value"), rows)

    @app.command("fit")
    def fit_cmd(
        model: ModelArg,
        hardware: HardwareOpt = None,
        vram: Annotated[str | None, typer.Option(help="GPU memory, e.g. 12G; 0 = CPU only.")] = None,
        ram: Annotated[str | None, typer.Option(help="System RAM, e.g. 64G.")] = None,
        ctx: Annotated[int | None, typer.Option(help="Context length (tokens).", min=16)] = None,
        kv_type: Annotated[str | None, typer.Option(help="KV cache type: f16, q8_0 or q4_0.")] = None,
        flash_attn: Annotated[
            bool | None, typer.Option("--flash-attn/--no-flash-attn", help="Flash attention.")
        ] = None,
        batch: Annotated[int | None, typer.Option(help="Logical batch (n_batch).", min=1)] = None,
        ubatch: Annotated[int | None, typer.Option(help="Physical batch (n_ubatch).", min=1)] = None,
        parallel: Annotated[int | None, typer.Option(help="Parallel sequences (n_seq_max).", min=1)] = None,
        n_gpu_layers: Annotated[int | None, typer.Option(help="Force this many layers on the GPU.", min=0)] = None,
        n_cpu_moe: NCpuMoeOpt = None,
        cpu_moe: CpuMoeOpt = False,
        quants: Annotated[str | None, typer.Option(help="Compare quants: 'all' or e.g. q3_k_m,q4_k_m.")] = None,
        min_tps: Annotated[float, typer.Option(help="Speed floor (tokens/s) for --quants.", min=0)] = 0.0,
        json: JsonOpt = False,
        recipes: RecipesDirOpt = None,
        token: TokenOpt = None,
        offline: OfflineOpt = False,
    ) -> None:
        """How much of MODEL fits the GPU, what stays in RAM, how fast it decodes, and what would fit.

        Works before `mm pull`: a Hub file is fitted from its header alone (fetched with Range requests).

        Example: mm fit TheBloke/Llama-2-70B-chat-GGUF:llama-2-70b-chat.Q4_K_M.gguf --hardware rtx3060-12g
        """
        from pipeline.fit import FitSettings, fit_model, parse_candidates, recommend_quant
        from pipeline.model_info import resolve_model, target_hardware

        path, recipe, is_stub = resolve_model(model, recipes, token=token, offline=offline, allow_header_stub=True)
        _note_stub(model, is_stub)
        target = target_hardware(hardware, _size(vram, "--vram"), _size(ram, "--ram"), recipe, recipes)
        settings = FitSettings.for_recipe(
            recipe, ctx=ctx, kv_type=kv_type, flash_attn=flash_attn, batch=batch, ubatch=ubatch,
            parallel=parallel, n_gpu_layers=n_gpu_layers, n_cpu_moe=n_cpu_moe, cpu_moe=cpu_moe or None,
        )  # fmt: skip
        if quants is not None:
            report = recommend_quant(path, target, parse_candidates(quants), settings, min_tps)
            emit_json(report) if json else _show_report(report)
            return
        result = fit_model(path, target, settings)
        emit_json(result) if json else _show_fit(result)

    @app.command("hw")
    def hw_cmd(json: JsonOpt = False, recipes: RecipesDirOpt = None) -> None:
        """This machine's GPUs, RAM and CPU, and the hardware classes mm can plan for."""
        from pipeline.model_info import local_machine

        machine = local_machine(recipes)
        if json:
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


def _show_fit(r: FitResult) -> None:
    verdicts = {"full_offload": "full offload", "partial_offload": "partial offload", "cpu_only": "CPU only",
                "does_not_fit": "does not fit"}  # fmt: skip
    held = f", experts of {r.n_cpu_moe} in RAM" if r.n_cpu_moe else ""
    typer.echo(f"{verdicts[r.verdict]}: {r.n_gpu_layers}/{r.n_layers + 1} layers on GPU{held} ({r.hardware}), "
               f"~{r.tokens_per_second:g} tokens/s decode")  # fmt: skip
    rows = [(name, *(format_size(getattr(d, f"{name}_bytes")) for d in (r.gpu, r.cpu)))
            for name in ("weights", "kv", "output", "compute", "overhead", "total")]  # fmt: skip
    table(("", "gpu", "cpu"), rows)
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
    typer.echo(f"fits VRAM: {'yes' if r.fits_vram else 'no'}   fits RAM: {'yes' if r.fits_ram else 'no'}")
    for suggestion in r.suggestions:
        typer.echo(f"try {suggestion}")
    for assumption in r.assumptions:
        note(f"assumes {assumption}")


def _candidate_note(c: QuantCandidate) -> str:
    notes = (["needs --imatrix"] if c.needs_imatrix else []) + ([c.note] if c.note else [])
    return "; ".join(notes)


def _show_report(r: QuantReport) -> None:
    rows = [(c.type, format_size(c.file_bytes) + ("" if c.exact_sizes else " ~"), c.n_gpu_layers,
             f"{c.tokens_per_second:g}", "-" if c.ppl_delta is None else f"+{c.ppl_delta:g}",
             "yes" if c.fits else "no", _candidate_note(c)) for c in r.candidates]  # fmt: skip
    table(("type", "file", "gpu layers", "tokens/s", "ppl (ref)", "fits", "note"), rows)
    typer.echo(f"recommended: {r.recommended or 'none'} ({r.reason})")
    if any(not c.exact_sizes for c in r.candidates):
        note("~ sizes estimated from bits per weight (llama.cpp's quantize dry-run was not available)")
