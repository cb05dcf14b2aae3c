"""`mm publish|ls|show|rm|gc|verify|export` and `mm cache ls|rm`: runnable profiles and the files behind them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.base.errors import IntegrityError
from pipeline.base.plain_text import printable
from pipeline.base.units import format_size
from pipeline.commands.budget import show_mix
from pipeline.commands.options import (
    ChatFormatOpt,
    HardwareOpt,
    JsonOpt,
    ModelArg,
    NameArg,
    RecipesDirOpt,
    RunFlags,
    run_options,
)
from pipeline.commands.registration import add_command, add_group
from pipeline.commands.render import emit_json, note, table

if TYPE_CHECKING:
    from pipeline.registry.profile import Profile
    from pipeline.registry.repair import Repair

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")]


@run_options
def publish_command(
    run: RunFlags,
    model: ModelArg,
    hardware: HardwareOpt = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Profile name (default MODEL-QUANT@HARDWARE).")
    ] = None,
    chat_format: ChatFormatOpt = None,
    as_json: JsonOpt = False,
    recipes: RecipesDirOpt = None,
) -> None:
    """Store MODEL once by content and write a profile that runs it on HARDWARE (fit decides the layers).

    With --rpc / -ts the profile records the device layout fit planned (workers and layers per device);
    `mm run` then runs it through llama-server across those workers.

    Example: mm publish ~/.cache/mm/quant/abc-llama.q4_k_m.gguf --hardware rtx3060-12g -c 8192 -fa on
    """
    from pipeline.fitting.fit_devices import fit_for
    from pipeline.registry.store import publish
    from pipeline.resolve.model_ref import resolve_model, target_hardware

    path, recipe, _ = resolve_model(model, recipes)
    target = target_hardware(hardware, None, None, recipe, recipes)
    settings = run.on(recipe.run if recipe else None).with_flags(chat_format=chat_format)
    fit = fit_for(path.resolve(), target, settings)
    profile = publish(path, target, fit, name=name, recipe=recipe, threads=settings.n_threads)
    if as_json:
        emit_json(profile)
        return
    p = profile.prediction
    typer.echo(
        f"published {profile.name}: {profile.quant}, {format_size(profile.blob.size_bytes)}, "
        f"{profile.run.n_gpu_layers}/{p.n_layers + 1} layers on GPU, ~{p.tokens_per_second:.1f} tok/s ({p.verdict})"
        + (f"; {p.placement}" if profile.run.n_cpu_moe else "")
    )


def ls_command(as_json: JsonOpt = False) -> None:
    """List profiles: name, quant, size, hardware, layers on GPU, predicted tok/s, created; then what `mm bench`
    measured, each under the machine it ran on beside the prediction for that machine.

    Example: mm ls --json
    """
    from pipeline.registry.store import list_profiles, profile_summary

    profiles, errors = list_profiles()
    if as_json:
        emit_json({"profiles": [profile_summary(p) for p in profiles], "errors": [str(e) for e in errors]})
        return
    rows = [
        (p.name, _quant_cell(p), format_size(p.blob.size_bytes), p.hardware,
         f"{p.run.n_gpu_layers}/{p.prediction.n_layers + 1}", f"{p.prediction.tokens_per_second:.1f}",
         p.created_at.replace("T", " ")[:16])
        for p in profiles
    ]  # fmt: skip
    if rows:
        table(("name", "quant", "size", "hardware", "gpu layers", "predicted tok/s", "created"), rows)
    elif not errors:
        note("no profiles yet; `mm publish MODEL --hardware CLASS` makes one")
    benched = [(p.name, b) for p in profiles for b in p.measured.benches]
    if benched:
        from pipeline.spec.results import machine_label

        typer.echo("\nMeasured by mm bench, on the machine named (not on the profile's hardware):")
        table(("name", "measured on", "tok/s", "predicted there", "prompt tok/s", "measured"),
              [(name, machine_label(b.machine), _figure(b.tg.median_ts if b.tg else None), _figure(b.predicted_tg_ts),
                _figure(b.pp.median_ts if b.pp else None), b.measured_at.replace("T", " ")[:16])
               for name, b in benched])  # fmt: skip
    for error in errors:
        note(printable(f"error: {error}", keep_newlines=True))


def _figure(value: float | None) -> str:
    return f"{value:.1f}" if value else "-"


def show_command(name: NameArg, as_json: JsonOpt = False) -> None:
    """Everything about one profile: blob, provenance, settings, prediction, command lines.

    Example: mm show llama2-70b-chat-q2_k@rtx3060-12g
    """
    from pipeline.registry.store import get_profile

    profile = get_profile(name)
    if as_json:
        emit_json(profile)
        return
    src, run, p = profile.provenance.source, profile.run, profile.prediction
    origin = f"{src.repo}@{src.commit} {src.file}" if src.kind == "hub" else src.path
    rows = [
        ("name", profile.name), ("model", f"{profile.model} ({profile.architecture})"),
        ("quant", profile.quant_label()), ("hardware", profile.hardware), ("blob", profile.blob.path),
        ("size", format_size(profile.blob.size_bytes)), ("sha256", profile.blob.sha256),
        ("source", f"{origin} (sha256 {src.sha256[:12]}…)"), ("recipe", profile.provenance.recipe or "-"),
        ("llama.cpp", profile.provenance.llama_cpp_version or "-"),
        ("settings", f"ngl {run.n_gpu_layers}, ctx {run.n_ctx}, batch {run.n_batch}/{run.n_ubatch}, "
                     f"kv {run.kv_type}, flash-attn {'on' if run.flash_attn else 'off'}"
                     + (f", n-cpu-moe {run.n_cpu_moe}" if run.n_cpu_moe else "")),
        ("placement", p.placement or "-"),
        (f"prediction for {profile.hardware}",
         f"{p.verdict}, VRAM {format_size(p.vram_bytes)}, RAM {format_size(p.ram_bytes)}, "
         f"~{p.tokens_per_second:.1f} tok/s"),
        ("llama-server", profile.llama_server), ("llama-cli", profile.llama_cli), ("created", profile.created_at),
    ]  # fmt: skip
    rows += _measured_rows(profile)
    mix = profile.provenance.mix
    if mix is not None:
        rows.append(("budget mix", f"{mix.label()}: chosen on {mix.calibration_text}, judged on "
                     f"{mix.evaluation_text}, ctx {mix.n_ctx}; {mix.evals} runs in {mix.seconds:.0f} s"))  # fmt: skip
    table(("field", "value"), rows)
    if mix is not None:
        show_mix(mix)


def _quant_cell(profile: Profile) -> str:
    """`mm ls`'s quant column: the type, or a budget mix's label and bits per weight."""
    mix = profile.provenance.mix
    return f"{profile.quant_label()} {mix.measured.bits_per_weight:.2f}bpw" if mix else profile.quant


def _measured_rows(profile: Profile) -> list[tuple[str, str]]:
    """What `mm bench` and `mm eval` measured, each under the machine it ran on (the prediction above is the
    profile's hardware class's; a measurement is compared only with the prediction for its own machine)."""
    from pipeline.spec.results import machine_label

    rows = []
    for bench in profile.measured.benches:
        figures = ", ".join(f"{f.test} {f.median_ts:.1f} tok/s (±{f.stdev_ts:.1f})" for f in (bench.pp, bench.tg) if f)
        there = f"; predicted there {bench.predicted_tg_ts:.1f} tok/s" if bench.predicted_tg_ts else ""
        rows.append((f"measured on {machine_label(bench.machine)}",
                     f"{figures}{there}; {bench.threads} thread(s), {bench.measured_at[:16]} (mm bench)"))  # fmt: skip
    for e in profile.measured.evals:
        rows.append((f"quality measured on {machine_label(e.machine)}", f"KLD {e.kld_mean:.6f}, PPL {e.ppl:.4f} vs "
                     f"{e.ppl_ref:.4f}, same top {100 * e.same_top_rate:.1f}% against {e.ref_path} on {e.text} "
                     "(mm eval)"))  # fmt: skip
    return rows


def rm_command(name: NameArg, as_json: JsonOpt = False) -> None:
    """Remove a profile (its blob is freed by `mm gc` once nothing else uses it).

    Example: mm rm llama2-70b-chat-q2_k@rtx3060-12g && mm gc
    """
    from pipeline.registry.store import remove_profile

    remove_profile(name)
    if as_json:
        emit_json({"removed": name})
        return
    note(f"removed {name}; `mm gc` frees blobs no profile uses")


def gc_command(
    dry_run: DryRunOpt = False,
    everything: Annotated[
        bool, typer.Option("--all", help="Also remove unpublished `mm quantize` outputs (kept by default).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove blobs, build leftovers and records that no profile references; --dry-run lists what it would free.

    Files you made with `mm quantize` stay until --all. Downloaded Hub files are not touched: `mm cache ls`
    lists them, `mm cache rm` removes them.

    Example: mm gc --dry-run
    """
    from pipeline.hub.inventory import cache_files
    from pipeline.registry.gc import gc

    report = gc(dry_run=dry_run, everything=everything)
    hub = cache_files()
    if as_json:
        emit_json({**report.model_dump(mode="json"), "hub_bytes": hub.size_bytes, "hub_files": len(hub.files)})
        return
    verb = "would remove" if dry_run else "removed"
    for item in report.removed:
        typer.echo(f"{verb} {item.kind:6} {format_size(item.size_bytes):>10}  {item.path}")
    typer.echo(f"{verb} {len(report.removed)} file(s), {'would free' if dry_run else 'freed'} "
               f"{format_size(report.freed_bytes)}; {report.kept_blobs} blob(s) in use")  # fmt: skip
    if report.builds_running:
        note("an `mm build` is running: quantize outputs were left alone (run gc again when it is done)")
    if report.kept_requested:
        size = format_size(sum(p.size_bytes for p in report.kept_requested))
        note(f"kept {len(report.kept_requested)} unpublished `mm quantize` output(s) ({size}); --all removes them")
    if report.kept_partials:
        size = format_size(sum(p.size_bytes for p in report.kept_partials))
        note(f"kept {len(report.kept_partials)} resumable partial download(s) ({size}); gc removes them after a day")
    if hub.files:
        note(f"the Hub cache holds {format_size(hub.size_bytes)} in {len(hub.files)} file(s), kept: "
             "`mm cache ls` lists them, `mm cache rm REPO[:FILE]` removes them")  # fmt: skip


def verify_command(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="One profile (default: all).")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Restore damaged blobs from their source (copy or quantize again).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every blob; exits 5 naming the corrupted profiles. --repair restores them first.

    A blob is restored only to the sha256 its profile names: from the quantize output or published file
    when it still holds those bytes, else by quantizing the recorded source again.

    Example: mm verify --repair
    """
    from pipeline.registry.verify import verify

    repairs = _repair(name, as_json) if repair else []
    report = verify(name)
    if as_json:
        fixed = [{"name": r.name, "sha256": r.sha256, "how": r.how, "problem": r.problem} for r in repairs]
        emit_json({**report.model_dump(mode="json"), "ok": report.ok, "corrupted": report.corrupted, "repaired": fixed})
    else:
        for check in report.checked:
            problem = f"  ({check.problem})" if check.problem else ""
            typer.echo(f"{'ok     ' if check.ok else 'CORRUPT'}  {check.name}{problem}")
        for broken in report.broken_files:
            typer.echo(f"BROKEN   {printable(broken)}")
    if not report.ok:
        bad = list(report.corrupted)
        if report.broken_files:
            bad.append(f"{len(report.broken_files)} unreadable profile file(s)")
        hint = "`mm verify --repair` restores damaged blobs from their source" if report.corrupted else None
        if repair or not report.corrupted:
            hint = "`mm rm` the profile and publish or pull it again"
        raise IntegrityError(f"verify failed: {', '.join(bad)}", hint=hint)


def _repair(name: str | None, quiet: bool) -> list[Repair]:
    from pipeline.registry.repair import repair

    repairs = repair(name)
    for done in repairs if not quiet else []:
        note(f"repaired {done.name}: {done.how}" if done.ok else f"cannot repair {done.name}: {done.problem}")
    return repairs


def export_command(
    name: NameArg,
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="ollama, llama-server or json.")] = "ollama",
    chat_format: ChatFormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a profile as an Ollama Modelfile, a llama-server command line, or JSON.

    The Modelfile's FROM is `$MM_HOME/exports/<sha256>.gguf`, a link to the blob (Ollama 0.5.5 wants the
    .gguf extension); it is for Ollama 0.5.5 and later. Both answer in the chat format `mm run` uses: a GGUF
    without a template of its own gets llama-server's --chat-template, or a Modelfile TEMPLATE and stop lines.

    Example: mm export llama2-70b-chat-q2_k@rtx3060-12g > Modelfile && ollama create llama2-70b -f Modelfile
    """
    from pipeline.registry.export import export
    from pipeline.registry.store import get_profile

    format = format.strip().lower()  # spelled as the user likes, as quant types are (Ollama, ollama)
    text = export(get_profile(name), format, chat_format)
    if as_json:
        emit_json({"profile": name, "format": format, "text": text})
        return
    typer.echo(text, nl=False)


def cache_ls_command(as_json: JsonOpt = False) -> None:
    """List the Hub files in the cache (repo, commit, branch, file, size), as `hf cache ls` does.

    Example: mm cache ls
    """
    from pipeline.hub.inventory import cache_files

    report = cache_files()
    if as_json:
        emit_json(report)
        return
    rows = [(f.repo, f.revision[:12], ",".join(f.refs) or "-", f.filename, format_size(f.size_bytes))
            for f in report.files]  # fmt: skip
    if rows:
        table(("repo", "commit", "refs", "file", "size"), rows)
    note(f"{report.cache_dir}: {format_size(report.size_bytes)} in {len(report.files)} file(s)")


def cache_rm_command(
    targets: Annotated[
        list[str], typer.Argument(metavar="REPO[:FILE[@COMMIT]]...", help="What to remove (`mm cache ls` lists it).")
    ],
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove downloaded Hub files from the cache (a whole repo, or one file), as `hf cache rm` does.

    Example: mm cache rm TheBloke/Llama-2-7B-GGUF:llama-2-7b.Q4_K_M.gguf
    """
    from pipeline.hub.inventory import remove_cached

    removed = remove_cached(targets, dry_run=dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    for f in removed:
        typer.echo(f"{verb} {f.repo}:{f.filename}@{f.revision[:12]} ({format_size(f.size_bytes)})")


def register(app: typer.Typer) -> None:
    add_command(app, "publish", publish_command)
    add_command(app, "ls", ls_command)
    add_command(app, "show", show_command)
    add_command(app, "rm", rm_command)
    add_command(app, "gc", gc_command)
    add_command(app, "verify", verify_command)
    add_command(app, "export", export_command)
    cache = add_group(app, "cache", "The Hub cache: list and remove downloaded files (as `hf cache`).")
    add_command(cache, "ls", cache_ls_command)
    add_command(cache, "rm", cache_rm_command)
