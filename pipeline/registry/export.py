"""`mm export`: a profile in the forms other tools take — an Ollama Modelfile, a llama-server line, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.base.errors import RegistryError, UsageError
from pipeline.base.home import Home, atomic_symlink, mm_home
from pipeline.base.plain_text import has_control
from pipeline.gguf.chat_format import TEMPLATE_KEY, exported_format
from pipeline.registry.blobs import blob_path
from pipeline.registry.profile import Profile, llama_server_command
from pipeline.registry.run import chat_format_for

ExportFormat = Literal["ollama", "llama-server", "json"]
FORMATS: tuple[ExportFormat, ...] = ("ollama", "llama-server", "json")


# Ollama 0.5.5 (server/create.go, the JSON /api/create of ollama#7935) picks its importer by the FROM
# file's extension, .gguf or .bin; 0.5.6 (ollama#8428) also reads the GGUF magic. Earlier releases
# read the magic. A FROM path ending in .gguf works with all of them.
OLLAMA_VERSIONS = "Ollama 0.5.5 and later (earlier releases too: they detect GGUF by content)"


def gguf_link(home: Home, sha256: str) -> Path:
    """`$MM_HOME/exports/<sha256>.gguf`: a symlink to the blob with the extension other tools look for.

    Created atomically (a temporary link renamed over the name), so a reader sees the old or new one.
    """
    return atomic_symlink(home.root / "exports" / f"{sha256}.gguf", blob_path(home, sha256))


def modelfile(profile: Profile, chat_format: str | None = None) -> str:
    """An Ollama Modelfile in the chat format `mm run` uses: Ollama reads a GGUF's own template, so a GGUF with
    one gets none; without one (or with --chat-format) a TEMPLATE and its stop strings are written.

    Ollama sets flash attention and the KV cache type per server (environment), not per model: they
    are written as comments to copy into the server's environment. Ollama cannot keep a layer's experts
    in RAM apart from the rest of it (no --n-cpu-moe / -ot): such a profile is exported with whole-layer
    offload, which fits the same card but decodes slower, and says so.
    """
    run = profile.run
    blob = gguf_link(mm_home(), profile.blob.sha256)
    num_gpu = run.n_gpu_layers
    lines = [
        f"# mm profile {profile.name}: {profile.model} {profile.quant} for {profile.hardware}",
        f"# for {OLLAMA_VERSIONS}: ollama create NAME -f Modelfile",
        f"# sha256 {profile.blob.sha256}",
        f"# server settings: OLLAMA_FLASH_ATTENTION={int(run.flash_attn)} OLLAMA_KV_CACHE_TYPE={run.kv_type}",
    ]
    if run.n_cpu_moe or run.tensor_overrides:
        prediction = profile.prediction
        num_gpu = prediction.layers_only_n_gpu_layers if prediction.layers_only_n_gpu_layers is not None else 0
        speed = prediction.layers_only_tokens_per_second
        lines += [
            f"# Ollama cannot express this profile's placement ({prediction.placement}; llama.cpp "
            f"--n-cpu-moe {run.n_cpu_moe}, ~{prediction.tokens_per_second:g} tokens/s).",
            "# num_gpu below offloads whole layers instead"
            + (f" (~{speed:g} tokens/s predicted)." if speed is not None else ".")
            + " For the expert placement use: mm export --format llama-server",
        ]
    lines += [
        f"FROM {blob}",
        f"PARAMETER num_gpu {num_gpu}",
        f"PARAMETER num_ctx {run.n_ctx}",
        f"PARAMETER num_batch {run.n_batch}",
    ]
    if run.n_threads is not None:
        lines.append(f"PARAMETER num_thread {run.n_threads}")
    if not run.use_mmap:
        lines.append("PARAMETER use_mmap false")
    for line in lines:  # a newline inside a value would be a directive of its own (FROM, SYSTEM, ADAPTER)
        if has_control(line):
            raise RegistryError(f"profile {profile.name!r}: a value holds a control character; no Modelfile written",
                                hint="`mm show NAME --json` shows the profile; publish it again")  # fmt: skip
    return "\n".join(lines + _template_lines(profile, chat_format)) + "\n"


def _template_lines(profile: Profile, requested: str | None) -> list[str]:
    """The TEMPLATE and stop lines of the format `mm run` uses; mm's own constants (no profile text in them),
    so written after the control-character check. The template holds no triple quote (Modelfile's delimiter)."""
    chosen = chat_format_for(profile, requested).name
    if chosen is None:
        return [f"# chat template: Ollama reads the GGUF's own ({TEMPLATE_KEY}), as `mm run` does"]
    spelled = exported_format(chosen, "Ollama")
    return [
        f"# chat format {chosen}, as `mm run` uses it (the GGUF has no template of its own)",
        f'TEMPLATE """{spelled.ollama}"""',
        *(f'PARAMETER stop "{stop}"' for stop in spelled.stops),
    ]


def export(profile: Profile, fmt: str, chat_format: str | None = None) -> str:
    """The profile as text in format `fmt` (ollama | llama-server | json), in the chat format `mm run` would
    use (`chat_format`: another, as --chat-format names it)."""
    if fmt == "json":
        return profile.model_dump_json(indent=2) + "\n"
    if fmt == "ollama":
        return modelfile(profile, chat_format)
    chosen = chat_format_for(profile, chat_format).name
    if chosen is not None:
        exported_format(chosen, "llama-server")
        profile = profile.model_copy(update={"run": profile.run.model_copy(update={"chat_format": chosen})})
    if fmt == "llama-server":
        return llama_server_command(str(blob_path(mm_home(), profile.blob.sha256)), profile.run) + "\n"
    raise UsageError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")
