"""The `Profile` document: one runnable model-on-hardware, with its blob, provenance, settings and commands.

A profile is what `mm publish` writes to `$MM_HOME/profiles/<name>.json` and what `mm run` and
`mm export` read. Everything a person needs to run the model elsewhere is in it: the exact llama.cpp
settings, ready-to-paste command lines and llama-cpp-python keyword arguments.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.base.errors import UsageError
from pipeline.base.mix_record import MixRecord
from pipeline.base.plain_text import require_plain
from pipeline.base.provenance import QuantParams, QuantRecord, SourceRef, source_ref, utc_now
from pipeline.base.shards import shard_names
from pipeline.fitting.fit import Verdict
from pipeline.gguf.chat_format import EXPORTED_FORMATS, TEMPLATE_KEY, choose_chat_format
from pipeline.gguf.header import GGUFHeader, read_header
from pipeline.gguf.quant_types import QUANT_TYPES, by_ftype
from pipeline.llama.tools import llama_cpp_version
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.recipe import Recipe
from pipeline.spec.results import BenchResult, EvalResult
from pipeline.spec.run_settings import RunSettings, check_for_model

if TYPE_CHECKING:
    from pipeline.base.errors import MMError
    from pipeline.fitting.fit import FitResult

# 2: MoE placement (run.n_cpu_moe, run.tensor_overrides); 3: run is the one run-settings model (n_threads for
# threads; cpu_moe, swa_full, kv_unified); 4: run.chat_format and provenance.mix, so an mm that predates them
# names the version it cannot read rather than an unknown field. Versions 1 to 3 still read (run_settings reads
# their spellings).
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
NEWER_SCHEMA = "newer_schema"  # the validation error type of a version above SCHEMA_VERSION
MIX_QUANT = "mix"  # a profile's quant when its file is a budget mix (per-tensor types), not one preset
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")
NAME_HELP = "letters, digits and . _ @ + - (at most 200, starting with a letter or digit)"


def check_name(name: str) -> str:
    """Profile names become file names: refuse anything that could escape the profiles folder."""
    if not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid profile name; use {NAME_HELP}")
    return name


class BlobRef(BaseModel):
    """The model file, stored once by content; its stat at publish time backs the cheap pre-run check."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    path: str
    mtime_ns: int
    inode: int


class Provenance(BaseModel):
    """Where every byte came from: the source file, how it was quantized, by which recipe."""

    model_config = ConfigDict(extra="forbid")

    source: SourceRef
    llama_cpp_version: str | None = None
    engine: str | None = None  # quantize engine ("api" | "binary"); None when not a quantize output
    quantize: QuantParams | None = None
    recipe: str | None = None
    recipe_sha256: str | None = None
    created_at: str = Field(default_factory=utc_now)
    mix: MixRecord | None = None  # a budget quant's mix and its measured figures (mm quantize --budget)


class Prediction(BaseModel):
    """fit's prediction for the hardware class the profile was published for."""

    model_config = ConfigDict(extra="forbid")

    vram_bytes: int
    ram_bytes: int
    tokens_per_second: float
    verdict: Verdict
    n_layers: int
    prompt_tokens_per_second: float | None = None  # pp512, where predicted
    speed_basis: str = ""  # what the figures rest on: measured class, calibrated catalog, datasheet only
    placement: str = ""  # where the layers and experts are, in words
    # For a MoE profile: how many whole layers fit with no expert in RAM (what tools that cannot place
    # experts, such as Ollama, can use instead), and its predicted speed.
    layers_only_n_gpu_layers: int | None = None
    layers_only_tokens_per_second: float | None = None


class Measured(BaseModel):
    """What was measured on a machine (`mm bench`, `mm eval`), kept beside the prediction."""

    model_config = ConfigDict(extra="forbid")

    benches: list[BenchResult] = Field(default_factory=list)  # one per machine (Machine.id), newest last
    evals: list[EvalResult] = Field(default_factory=list)  # one per (reference, text, n_ctx), newest kept

    @model_validator(mode="before")
    @classmethod
    def _one_bench(cls, data: Any) -> Any:
        """Schemas 1-3 kept a single `bench`: it is that machine's entry."""
        if isinstance(data, dict) and "bench" in data:
            data = dict(data)
            bench = data.pop("bench")
            data.setdefault("benches", [bench] if bench is not None else [])
        return data

    def with_bench(self, bench: BenchResult) -> Measured:
        """These measurements with `bench` as its machine's entry: a bench on another machine is kept beside it
        (figures from two machines are never one), a machine's earlier bench is replaced."""
        mine = bench.machine.id if bench.machine else None
        others = [b for b in self.benches if (b.machine.id if b.machine else None) != mine]
        return self.model_copy(update={"benches": [*others, bench]})


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    model: str  # a short model name (recipe, repo or file stem), for tables
    architecture: str
    quant: str  # quant type of the file, e.g. q4_k_m
    hardware: str
    blob: BlobRef
    provenance: Provenance
    run: RunSettings  # with the placement fit chose: n_gpu_layers, n_cpu_moe, tensor_overrides
    prediction: Prediction
    # Ready-to-paste command lines and llama_cpp.Llama(**llama_kwargs), for people and other tools: always
    # derived from the blob's path and `run` (a document's own copies are never what mm runs).
    llama_server: str
    llama_cli: str
    llama_kwargs: dict[str, Any]
    created_at: str = Field(default_factory=utc_now)
    measured: Measured = Field(default_factory=Measured)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        unsupported = f"schema version {value} is not supported (this mm reads {READABLE_VERSIONS})"
        if value > SCHEMA_VERSION:  # its own error type: a newer document's other fields are not this mm's to judge
            raise PydanticCustomError(NEWER_SCHEMA, f"{unsupported}; written by a newer mm")
        if value not in READABLE_VERSIONS:
            raise ValueError(unsupported)
        return value

    @field_validator("run")
    @classmethod
    def _placed(cls, run: RunSettings) -> RunSettings:
        if run.n_gpu_layers is None:
            raise ValueError("n_gpu_layers: a profile names its layer count")
        # schema 1 had no expert placement: nothing was kept in RAM apart from its layer
        return run if run.n_cpu_moe is not None else run.model_copy(update={"n_cpu_moe": 0})

    @model_validator(mode="after")
    def _plain_text(self) -> Profile:
        """Every string is one plain line: values reach Modelfiles, shell lines and terminals verbatim."""
        for field, text in _strings(self.model_dump(mode="json")):
            require_plain(text, field)
        return self

    @model_validator(mode="after")
    def _derived(self) -> Profile:
        for key, value in _commands(self.blob.path, self.run).items():
            self.__dict__[key] = value
        return self

    def quant_label(self) -> str:
        """The quant as tables name it: the type, or a budget mix with its budget (`mix@11G`)."""
        mix = self.provenance.mix
        return mix.label() if mix is not None and self.quant == MIX_QUANT else self.quant


def llama_kwargs(model_path: str, run: RunSettings) -> dict[str, Any]:
    """llama_cpp.Llama keyword arguments for these settings (the runner passes exactly these)."""
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "n_gpu_layers": run.n_gpu_layers,
        "n_ctx": run.n_ctx,
        "n_batch": run.n_batch,
        "n_ubatch": run.n_ubatch,
        "type_k": run.type_k,
        "type_v": run.type_v,
        "flash_attn": run.flash_attn,
        "use_mmap": run.use_mmap,
    }
    if run.n_threads is not None:
        kwargs["n_threads"] = run.n_threads
    layout = run.devices
    if layout is not None and not layout.is_default:  # local GPUs; RPC workers run through llama-server
        # include/llama.h enum llama_split_mode: NONE 0, LAYER 1, ROW 2
        kwargs |= {"split_mode": {"none": 0, "layer": 1, "row": 2}[layout.split_mode], "main_gpu": layout.main_gpu}
        if layout.tensor_split is not None:
            kwargs["tensor_split"] = layout.tensor_split
    return kwargs


def _common_flags(model_path: str, run: RunSettings) -> list[str]:
    # Flag spellings from llama.cpp's common/arg.cpp (vendored by llama-cpp-python 0.3.36).
    flags = [
        "-m", model_path,
        "--n-gpu-layers", str(run.n_gpu_layers),
        "--ctx-size", str(run.n_ctx),
        "--batch-size", str(run.n_batch),
        "--ubatch-size", str(run.n_ubatch),
        "--cache-type-k", run.kv_type,
        "--cache-type-v", run.kv_type,
        "--flash-attn", "on" if run.flash_attn else "off",
    ]  # fmt: skip
    if run.n_threads is not None:
        flags += ["--threads", str(run.n_threads)]
    if not run.use_mmap:
        # common/arg.cpp has no --no-mmap: --load-mode none is llama-cpp-python's use_mmap=False (llama.py)
        flags += ["--load-mode", "none"]
    if run.n_cpu_moe:
        flags += ["--n-cpu-moe", str(run.n_cpu_moe)]
    elif run.tensor_overrides:
        flags += ["--override-tensor", ",".join(run.tensor_overrides)]
    if run.devices is not None:
        flags += run.devices.llama_args()
    if run.chat_format in EXPORTED_FORMATS:  # another format is refused by `mm export` (chat_format.py)
        flags += ["--no-jinja", "--chat-template", EXPORTED_FORMATS[run.chat_format].llama_server]
    return flags


def llama_server_args(model_path: str, run: RunSettings, port: int = 8080) -> list[str]:
    """llama-server's arguments (without the program) for these settings on 127.0.0.1:`port`."""
    flags = [*_common_flags(model_path, run), "--parallel", str(run.parallel)]
    return [*flags, "--host", "127.0.0.1", "--port", str(port)]


def llama_server_command(model_path: str, run: RunSettings, port: int = 8080) -> str:
    return shlex.join(["llama-server", *llama_server_args(model_path, run, port)])


def llama_cli_command(model_path: str, run: RunSettings) -> str:
    # llama-cli chats by default; --conversation belongs to llama-completion only (common/arg.cpp)
    return shlex.join(["llama-cli", *_common_flags(model_path, run)])


# --- building a profile at publish time ------------------------------------------------------------

_QUANT_SUFFIX = re.compile(
    r"[-._](?:" + "|".join(sorted((re.escape(q.name) for q in QUANT_TYPES), key=len, reverse=True)) + r")$",
    re.IGNORECASE,
)


def model_name(model: Path, recipe: Recipe | None, record: QuantRecord | None) -> str:
    """A short name for tables and default profile names: the recipe, else the source file's stem."""
    if recipe is not None:
        return recipe.name
    stem = Path(record.source.file or record.source.path).stem if record else model.stem
    stem = _QUANT_SUFFIX.sub("", stem) or stem
    return re.sub(r"[^A-Za-z0-9._+-]", "-", stem).strip("-.") or "model"


def build_profile(
    model: Path,
    blob: BlobRef,
    hardware: HardwareClass,
    fit: FitResult,
    *,
    name: str | None,
    recipe: Recipe | None,
    record: QuantRecord | None,
    threads: int | None,
) -> Profile:
    """The profile document for a stored blob and its fit; raises UsageError for unusable settings."""
    if len(shard_names(model.name)) > 1:
        raise UsageError(f"{model}: split GGUF models cannot be published yet; merge them with llama-gguf-split")
    header = read_header(model)
    ftype = header.file_type
    qtype = by_ftype(ftype) if ftype is not None else None
    mixed = record is not None and record.params.pure and bool(record.params.tensor_types)  # mm quantize --budget
    quant = MIX_QUANT if mixed else qtype.name if qtype else (record.params.type if record else "unknown")
    if threads is None and recipe is not None:
        threads = recipe.run.n_threads
    run = fit.settings.placed(fit.n_gpu_layers, fit.n_cpu_moe, fit.tensor_overrides, threads)
    run = run.model_copy(update={"chat_format": stored_chat_format(header, run.chat_format)})
    if fit.split is not None:  # the split fit planned, as -ts layer counts
        run = run.model_copy(update={"devices": fit.split.layout})
    check_model(run, header, str(model), UsageError)
    short = model_name(model, recipe, record)
    try:
        chosen = check_name(name or f"{short}-{quant}@{hardware.name}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    provenance = Provenance(
        source=record.source if record else source_ref(model),
        llama_cpp_version=record.llama_cpp_version if record else llama_cpp_version(),
        engine=record.engine if record else None,
        quantize=record.params if record else None,
        recipe=recipe.name if recipe else None,
        recipe_sha256=recipe.content_sha256 if recipe else None,
        mix=record.mix if record else None,
    )
    layers_only = next((a for a in fit.alternatives if a.n_cpu_moe == 0), None) if fit.n_cpu_moe else None
    prediction = Prediction(
        vram_bytes=fit.vram_bytes, ram_bytes=fit.ram_bytes, tokens_per_second=fit.tokens_per_second,
        verdict=fit.verdict, n_layers=fit.n_layers, placement=fit.placement,
        prompt_tokens_per_second=fit.prompt_tokens_per_second, speed_basis=fit.speed_basis,
        layers_only_n_gpu_layers=layers_only.n_gpu_layers if layers_only else None,
        layers_only_tokens_per_second=layers_only.tokens_per_second if layers_only else None,
    )  # fmt: skip
    return Profile(
        name=chosen, model=short, architecture=header.architecture, quant=quant, hardware=hardware.name,
        blob=blob, provenance=provenance, run=run, prediction=prediction, **_commands(blob.path, run),
    )  # fmt: skip


def stored_chat_format(header: GGUFHeader, requested: str | None) -> str | None:
    """What a profile keeps as its chat format: the one asked for, else the architecture's for a GGUF without
    a template (so `mm run`, `mm show` and every export name the same one), else None (the GGUF's own)."""
    if requested is not None or TEMPLATE_KEY in header.metadata:
        return requested
    try:
        return choose_chat_format(header.metadata).name
    except UsageError:  # no template and no known format: `mm run` asks for one, --raw still works
        return None


def check_model(run: RunSettings, header: GGUFHeader, where: str, error: type[MMError]) -> RunSettings:
    """`run` if the model in `header` allows it (its trained context, its layers), else one `error`."""
    trained, layers = header.get("context_length"), header.get("block_count")
    return check_for_model(
        run, n_layers=layers if isinstance(layers, int) else 1 << 16,
        n_ctx_train=trained if isinstance(trained, int) and trained > 0 else None, where=f"{where}: run.", error=error,
        hint="publish the model again with settings it allows (`mm publish MODEL --ctx N ...`)",
    )  # fmt: skip


def _commands(path: str, run: RunSettings) -> dict[str, Any]:
    """The ready-to-paste command lines and keyword arguments: derived from the blob's path and the settings."""
    return {
        "llama_server": llama_server_command(path, run),
        "llama_cli": llama_cli_command(path, run),
        "llama_kwargs": llama_kwargs(path, run),
    }


def with_blob(profile: Profile, blob: BlobRef, **changes: Any) -> Profile:
    """`profile` pointing at another copy of its model (an installed or a published one): the blob and the
    commands derived from its path change, provenance, settings and prediction stay."""
    return profile.model_copy(update={**changes, "blob": blob, **_commands(blob.path, profile.run)})


def _strings(value: Any, at: str = "") -> list[tuple[str, str]]:
    """(dotted field, text) for every string in a JSON document, dictionary keys included."""
    if isinstance(value, str):
        return [(at or "(document)", value)]
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            found += [(f"{at}.{key}" if at else str(key), str(key))] if isinstance(key, str) else []
            found += _strings(item, f"{at}.{key}" if at else str(key))
        return found
    if isinstance(value, list):
        return [pair for index, item in enumerate(value) for pair in _strings(item, f"{at}.{index}")]
    return []
