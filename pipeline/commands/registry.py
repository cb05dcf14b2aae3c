"""`mm publish|ls|show|rm|gc|verify|run|export`: the registry of runnable profiles."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipeline.commands.options import CpuMoeOpt, HardwareOpt, JsonOpt, NCpuMoeOpt, RecipesDirOpt
from pipeline.commands.render import emit_json, note, table
from pipeline.errors import IntegrityError
from pipeline.units import format_size

NameArg = Annotated[str, typer.Argument(help="Profile name (`mm ls` lists them).")]
ModelArg = Annotated[str, typer.Argument(help="A .gguf path, a pulled owner/name:FILE.gguf[@revision], or a recipe.")]


def _read_line() -> str | None:
    """One user turn for `mm run` chat; None at end of input (Ctrl-D) or `/bye`."""
    try:
        line = input("\n> ")
    except (EOFError, KeyboardInterrupt):
        return None
    return None if line.strip() in ("/bye", "/exit") else line


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""

    @app.command("publish")
    def publish_cmd(
        model: ModelArg,
        hardware: HardwareOpt = None,
        name: Annotated[str | None, typer.Option(help="Profile name (default MODEL-QUANT@HARDWARE).")] = None,
        ctx: Annotated[int | None, typer.Option(help="Context length (tokens).", min=16)] = None,
        kv_type: Annotated[str | None, typer.Option(help="KV cache type: f16, q8_0 or q4_0.")] = None,
        flash_attn: Annotated[
            bool | None, typer.Option("--flash-attn/--no-flash-attn", help="Flash attention.")
        ] = None,
        n_gpu_layers: Annotated[int | None, typer.Option(help="Force this many layers on the GPU.", min=0)] = None,
        threads: Annotated[int | None, typer.Option(help="CPU threads for generation.", min=1)] = None,
        n_cpu_moe: NCpuMoeOpt = None,
        cpu_moe: CpuMoeOpt = False,
        json: JsonOpt = False,
        recipes: RecipesDirOpt = None,
    ) -> None:
        """Store MODEL once by content and write a profile that runs it on HARDWARE (fit decides the layers)."""
        from pipeline.fit import FitSettings
        from pipeline.model_info import resolve_model, target_hardware
        from pipeline.registry import publish

        path, recipe, _ = resolve_model(model, recipes)
        target = target_hardware(hardware, None, None, recipe, recipes)
        settings = FitSettings.for_recipe(
            recipe, ctx=ctx, kv_type=kv_type, flash_attn=flash_attn, n_gpu_layers=n_gpu_layers,
            n_cpu_moe=n_cpu_moe, cpu_moe=cpu_moe or None,
        )  # fmt: skip
        profile = publish(path, target, name=name, settings=settings, recipe=recipe, threads=threads)
        if json:
            emit_json(profile)
            return
        p = profile.prediction
        typer.echo(
            f"published {profile.name}: {profile.quant}, {format_size(profile.blob.size_bytes)}, "
            f"{profile.run.n_gpu_layers}/{p.n_layers + 1} layers on GPU, ~{p.tokens_per_second:.1f} tok/s ({p.verdict})"
            + (f"; {p.placement}" if profile.run.n_cpu_moe else "")
        )

    @app.command("ls")
    def ls_cmd(json: JsonOpt = False) -> None:
        """List profiles: name, quant, size, hardware, layers on GPU, predicted tok/s, created."""
        from pipeline.registry import list_profiles, profile_summary

        profiles, errors = list_profiles()
        if json:
            emit_json({"profiles": [profile_summary(p) for p in profiles], "errors": [str(e) for e in errors]})
            return
        rows = [
            (p.name, p.quant, format_size(p.blob.size_bytes), p.hardware,
             f"{p.run.n_gpu_layers}/{p.prediction.n_layers + 1}", f"{p.prediction.tokens_per_second:.1f}",
             p.created_at.replace("T", " ")[:16])
            for p in profiles
        ]  # fmt: skip
        if rows:
            table(("name", "quant", "size", "hardware", "gpu layers", "tok/s", "created"), rows)
        elif not errors:
            note("no profiles yet; `mm publish MODEL --hardware CLASS` makes one")
        for error in errors:
            note(f"error: {error}")

    @app.command("show")
    def show_cmd(name: NameArg, json: JsonOpt = False) -> None:
        """Everything about one profile: blob, provenance, settings, prediction, command lines."""
        from pipeline.registry import get_profile

        profile = get_profile(name)
        if json:
            emit_json(profile)
            return
        src, run, p = profile.provenance.source, profile.run, profile.prediction
        origin = f"{src.repo}@{src.commit} {src.file}" if src.kind == "hub" else src.path
        rows = [
            ("name", profile.name), ("model", f"{profile.model} ({profile.architecture})"), ("quant", profile.quant),
            ("hardware", profile.hardware), ("blob", profile.blob.path),
            ("size", format_size(profile.blob.size_bytes)), ("sha256", profile.blob.sha256),
            ("source", f"{origin} (sha256 {src.sha256[:12]}…)"), ("recipe", profile.provenance.recipe or "-"),
            ("llama.cpp", profile.provenance.llama_cpp_version or "-"),
            ("settings", f"ngl {run.n_gpu_layers}, ctx {run.n_ctx}, batch {run.n_batch}/{run.n_ubatch}, "
                         f"kv {run.kv_type}, flash-attn {'on' if run.flash_attn else 'off'}"
                         + (f", n-cpu-moe {run.n_cpu_moe}" if run.n_cpu_moe else "")),
            ("placement", p.placement or "-"),
            ("prediction", f"{p.verdict}, VRAM {format_size(p.vram_bytes)}, RAM {format_size(p.ram_bytes)}, "
                           f"~{p.tokens_per_second:.1f} tok/s"),
            ("llama-server", profile.llama_server), ("llama-cli", profile.llama_cli), ("created", profile.created_at),
        ]  # fmt: skip
        table(("field", "value"), rows)

    @app.command("rm")
    def rm_cmd(name: NameArg) -> None:
        """Remove a profile (its blob is freed by `mm gc` once nothing else uses it)."""
        from pipeline.registry import remove_profile

        remove_profile(name)
        note(f"removed {name}; `mm gc` frees blobs no profile uses")

    @app.command("gc")
    def gc_cmd(
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
        json: JsonOpt = False,
    ) -> None:
        """Remove blobs, quantize outputs and records that no profile references."""
        from pipeline.registry import gc

        report = gc(dry_run=dry_run)
        if json:
            emit_json(report)
            return
        verb = "would remove" if dry_run else "removed"
        for item in report.removed:
            typer.echo(f"{verb} {item.kind:6} {format_size(item.size_bytes):>10}  {item.path}")
        typer.echo(f"{verb} {len(report.removed)} file(s), {'would free' if dry_run else 'freed'} "
                   f"{format_size(report.freed_bytes)}; {report.kept_blobs} blob(s) in use")  # fmt: skip

    @app.command("verify")
    def verify_cmd(name: Annotated[str | None, typer.Argument(help="One profile (default: all).")] = None,
                   json: JsonOpt = False) -> None:  # fmt: skip
        """Re-hash every blob; exits non-zero naming the corrupted profiles."""
        from pipeline.registry import verify

        report = verify(name)
        if json:
            emit_json({**report.model_dump(mode="json"), "ok": report.ok, "corrupted": report.corrupted})
        else:
            for check in report.checked:
                problem = f"  ({check.problem})" if check.problem else ""
                typer.echo(f"{'ok     ' if check.ok else 'CORRUPT'}  {check.name}{problem}")
            for broken in report.broken_files:
                typer.echo(f"BROKEN   {broken}")
        if not report.ok:
            bad = list(report.corrupted)
            if report.broken_files:
                bad.append(f"{len(report.broken_files)} unreadable profile file(s)")
            note(f"error: verify failed: {', '.join(bad)}")
            raise typer.Exit(IntegrityError.exit_code)

    @app.command("run")
    def run_cmd(
        name: NameArg,
        prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Complete this prompt and exit.")] = None,
        max_tokens: Annotated[int, typer.Option(help="Tokens to generate (per chat turn).", min=1)] = 256,
        verify: Annotated[bool, typer.Option("--verify", help="Re-hash the blob before loading.")] = False,
        server: Annotated[bool, typer.Option("--server", help="Serve an OpenAI-compatible API on 127.0.0.1.")] = False,
        port: Annotated[int, typer.Option(help="Port for --server.", min=1, max=65535)] = 8000,
        seed: Annotated[int | None, typer.Option(help="Sampling seed, for repeatable output.")] = None,
    ) -> None:
        """Generate with a profile's exact settings: -p PROMPT, an interactive chat, or --server."""
        from pipeline.registry import get_profile
        from pipeline.runner import chat, generate, serve

        profile = get_profile(name)
        if server:
            note(f"serving {profile.name} on http://127.0.0.1:{port}/v1 (Ctrl-C stops)")
            serve(profile, port=port, verify=verify)
        elif prompt is not None:
            result = generate(profile, prompt, max_tokens=max_tokens, on_token=_write, verify=verify, seed=seed)
            typer.echo("")
            note(f"{result.n_tokens} tokens in {result.seconds:.2f}s ({result.tokens_per_second:.1f} tok/s)")
        else:
            note(f"chatting with {profile.name}; Ctrl-D or /bye ends")
            chat(profile, _read_line, lambda piece: _write(piece), max_tokens=max_tokens, verify=verify)

    @app.command("export")
    def export_cmd(
        name: NameArg,
        format: Annotated[str, typer.Option("--format", "-f", help="ollama, llama-server or json.")] = "ollama",
    ) -> None:
        """Print a profile as an Ollama Modelfile, a llama-server command line, or JSON."""
        from pipeline.export import export
        from pipeline.registry import get_profile

        typer.echo(export(get_profile(name), format), nl=False)
