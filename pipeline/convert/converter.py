"""`mm convert`: a Hugging Face transformers model (safetensors) → one GGUF, by llama.cpp's own converter.

The snapshot comes through mm's verified, resumable Hub code — only the files conversion reads (config,
tokenizer, safetensors and their index) — or from a local folder. The converter (`convert_env`) writes
into a temporary file beside the output; the result is renamed into place only after it parses as GGUF
with the file type asked for, and its record (`<file>.mm.json`: the snapshot's repo, commit and file
digests, the converter, the outtype) is written after that. The output is cached by (snapshot, converter
version, outtype): the same commit converted again is a lookup.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from pipeline.base.child import describe_exit, run_child
from pipeline.base.constants import DEFAULT_REVISION, HF_OFFLINE_ENV, env_value
from pipeline.base.digest import file_sha256, record_sha256, sha256_file
from pipeline.base.disk_space import disk_full, require_space
from pipeline.base.errors import ConvertError, ModelFormatError, UsageError
from pipeline.base.home import atomic_path, locked, mm_home, remove_stale_temps
from pipeline.base.provenance import KeyedRecord, SourceRef, keyed_record, made_from, write_record
from pipeline.convert.env import ConverterEnv, ensure_converter
from pipeline.gguf.header import GGUFHeader, read_header
from pipeline.gguf.quant_types import FLOAT_FILE_TYPES
from pipeline.hub import api as hub
from pipeline.hub.transfer import ProgressFactory
from pipeline.spec.recipe import Outtype

log = logging.getLogger(__name__)

OUTTYPES: tuple[str, ...] = get_args(Outtype)
MAX_CONFIG_BYTES = 4 << 20  # the largest config.json on the Hub is well under 1 MiB
MAX_CONFIG_DEPTH = 32  # real configs nest 3-4 levels (text_config.rope_scaling...)
_ARCH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CHILD_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
# general.file_type the converter writes for each --outtype (gguf-py's LlamaFileType); auto picks a float.
FILE_TYPES: dict[str, tuple[int, ...]] = {
    "f32": (0,),
    "f16": (1,),
    "bf16": (32,),
    "q8_0": (7,),
    "auto": tuple(sorted(FLOAT_FILE_TYPES)),
}
# What convert_hf_to_gguf.py reads from a model folder (ModelBase: hparams, tensors, vocab, chat template).
CONVERT_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
_WRITING_RE = re.compile(r"^Writing:\s+(\d+)%")
_UNSUPPORTED_RE = re.compile(r"Model (\S+) is not supported")

ConvertProgress = Callable[[int, int], None]  # (percent written, 100)


class SnapshotFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str
    size_bytes: int


class Snapshot(BaseModel):
    """A transformers model folder and where it came from: a Hub repo at a commit, or a local folder."""

    model_config = ConfigDict(extra="forbid")

    folder: Path
    kind: Literal["hub", "local"]
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: list[SnapshotFile]

    @property
    def name(self) -> str:
        return self.repo.split("/")[-1] if self.repo else self.folder.name

    @property
    def identity(self) -> str:
        """What the conversion depends on: the commit of a Hub snapshot, the file digests of a folder."""
        if self.kind == "hub":
            return f"{self.repo}@{self.commit}"
        listing = json.dumps([f.model_dump() for f in self.files], sort_keys=True)
        return "local:" + hashlib.sha256(listing.encode()).hexdigest()


def wanted(name: str) -> bool:
    """A top-level file the converter reads (sub-folders hold other formats, e.g. original/ or onnx/)."""
    return "/" not in name and any(fnmatch.fnmatch(name, pattern) for pattern in CONVERT_FILES)


def pull_snapshot(
    repo: str,
    revision: str = DEFAULT_REVISION,
    *,
    token: str | None = None,
    offline: bool = False,
    progress: ProgressFactory | None = None,
) -> Snapshot:
    """The files conversion needs from `repo` at `revision`, each pulled and verified like `mm pull`."""
    from pipeline.hub import cache as hub_cache
    from pipeline.hub.download import pull

    commit = hub.resolve_commit(repo, revision, token=token, offline=offline)
    if hub.offline_mode(offline):
        folder = hub_cache.snapshot_path(repo, commit, "config.json").parent
        names = sorted(p.name for p in folder.iterdir() if wanted(p.name)) if folder.is_dir() else []
    else:
        names = sorted(f.path for f in hub.list_repo_files(repo, commit, token=token) if wanted(f.path))
    _check_model_files(names, f"{repo}@{commit[:12]}")
    files = []
    folder = hub_cache.snapshot_path(repo, commit, "config.json").parent
    for name in sorted(names, key=lambda n: n != "config.json"):  # its shape is checked before the weights come
        (pulled,) = pull(repo, name, commit, token=token, offline=offline, progress=progress)
        files.append(SnapshotFile(name=name, sha256=pulled.sha256, size_bytes=pulled.size_bytes))
        if name == "config.json":
            read_config(folder)
    files.sort(key=lambda f: f.name)
    return Snapshot(folder=folder, kind="hub", repo=repo, revision=revision, commit=commit, files=files)


def local_snapshot(folder: Path) -> Snapshot:
    """A model folder on disk; its files are hashed once (then remembered by stat) to key the output."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and wanted(p.name))
    _check_model_files(names, str(folder))
    read_config(folder)
    home = mm_home()
    files = [
        SnapshotFile(name=n, sha256=file_sha256(home, folder / n), size_bytes=(folder / n).stat().st_size)
        for n in names
    ]
    return Snapshot(folder=folder.resolve(), kind="local", files=files)


def _check_model_files(names: list[str], where: str) -> None:
    if "config.json" not in names:
        raise ConvertError(f"{where}: no config.json; not a Hugging Face transformers model")
    if not any(n.endswith(".safetensors") for n in names):
        raise ConvertError(
            f"{where}: no *.safetensors weights",
            hint="mm converts safetensors checkpoints (pytorch_model.bin is not fetched: unpickling runs code)",
        )


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as the converter will read it, its shape checked first: one ConvertError naming the field
    instead of the converter's traceback (a list document, a string `architectures`, nesting past Python's
    recursion limit)."""
    path = folder / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConvertError(f"{path}: {path.stat().st_size} bytes; a config.json is at most {MAX_CONFIG_BYTES}")
        config = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise ConvertError(f"{path}: cannot read: {str(exc)[:200]}") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: the document is a {type(config).__name__}, not an object of hyperparameters")
    if (field := _too_deep(config, MAX_CONFIG_DEPTH)) is not None:
        raise ConvertError(f"{path}: {field}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    names = config.get("architectures")
    if names is not None and not (
        isinstance(names, list) and names and all(isinstance(n, str) and _ARCH_RE.fullmatch(n) for n in names)
    ):
        raise ConvertError(f'{path}: architectures: expected a list of class names such as ["LlamaForCausalLM"]')
    for field in ("text_config", "vision_config"):
        if field in config and not isinstance(config[field], dict | None):
            raise ConvertError(f"{path}: {field}: expected an object")
    return config


def _too_deep(value: Any, budget: int, at: str = "(document)") -> str | None:
    """The first field nested deeper than `budget` levels, or None."""
    if budget < 0:
        return at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in children:
        if (found := _too_deep(item, budget - 1, f"{at}.{key}" if at != "(document)" else str(key))) is not None:
            return found
    return None


def architecture(snapshot: Snapshot) -> str:
    """config.json's first `architectures` entry (the converter's registry key), or "unknown"."""
    names = read_config(snapshot.folder).get("architectures") or []
    return str(names[0]) if names else "unknown"


def converter_env() -> dict[str, str]:
    """The converter child's whole environment: what a Python process needs, offline, and nothing else (no
    HF_TOKEN or other secrets of the parent)."""
    kept = {name: value for name in CHILD_ENV_KEEP if (value := env_value(name)) is not None}
    return {**kept, HF_OFFLINE_ENV: "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip


class ConvertRecord(KeyedRecord):
    """Written beside each converted GGUF once the file is complete and checked."""

    file_type: int | None
    n_tensors: int
    architecture: str
    outtype: str
    snapshot: Snapshot
    converter: str  # convert_hf_to_gguf.py's source version and environment

    def source_ref(self) -> SourceRef:
        """The converted file as a quantize source, naming the repo and commit it was converted from."""
        snap = self.snapshot
        return made_from(
            Path(self.output_path), kind=snap.kind, repo=snap.repo, revision=snap.revision, commit=snap.commit
        )


class ConvertResult(BaseModel):
    record: ConvertRecord
    output: Path
    cached: bool
    log_path: Path | None = None


def convert_key(snapshot: Snapshot, converter_version: str, outtype: str) -> str:
    canonical = json.dumps({"snapshot": snapshot.identity, "converter": converter_version, "outtype": outtype})
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def output_path(snapshot: Snapshot, key: str, outtype: str) -> Path:
    return mm_home().converted / f"{snapshot.name}-{key[:12]}.{outtype}.gguf"


def convert(
    snapshot: Snapshot,
    outtype: str = "auto",
    *,
    converter: ConverterEnv | None = None,
    progress: ConvertProgress | None = None,
) -> ConvertResult:
    """The GGUF of `snapshot` in `outtype`, converted now unless an up-to-date one is there."""
    if outtype not in OUTTYPES:
        raise UsageError(f"output type {outtype}: not one of {', '.join(OUTTYPES)}", param="outtype")
    arch = architecture(snapshot)
    env = converter or ensure_converter()
    key = convert_key(snapshot, env.version, outtype)
    output = output_path(snapshot, key, outtype)
    home = mm_home()
    with locked(home, f"convert-{key}"):
        done = keyed_record(output, ConvertRecord, key)
        if done is not None:
            return ConvertResult(record=done, output=output, cached=True)
        remove_stale_temps(output)
        require_space(output.parent, estimated_bytes(snapshot, outtype), f"converting {snapshot.name} to {outtype}")
        log_path = home.ensure(home.logs) / f"convert-{output.name}.log"
        started = time.monotonic()
        with atomic_path(output) as tmp:
            _run_converter(env, snapshot, tmp, outtype, log_path, progress)
            header = _check_output(tmp, outtype)
            sha256 = sha256_file(tmp)  # not cached: the temp name is gone after the rename
        record_sha256(home, output, sha256)
        record = ConvertRecord(
            output_path=str(output),
            sha256=sha256,
            size_bytes=output.stat().st_size,
            file_type=header.file_type,
            n_tensors=len(header.tensors),
            architecture=arch,
            outtype=outtype,
            snapshot=snapshot,
            key=key,
            converter=env.label,
            seconds=round(time.monotonic() - started, 3),
        )
        write_record(record)
        return ConvertResult(record=record, output=output, cached=False, log_path=log_path)


def estimated_bytes(snapshot: Snapshot, outtype: str) -> int:
    """The GGUF's size from the checkpoint's: checkpoints are mostly 16-bit, so f32 doubles them and q8_0
    (8.5 bits per weight, ggml's block of 32 int8 and one f16 scale) takes 17/32 of them."""
    weights = sum(f.size_bytes for f in snapshot.files if f.name.endswith(".safetensors"))
    return {"f32": 2 * weights, "q8_0": weights * 17 // 32}.get(outtype, weights)


def _run_converter(
    env: ConverterEnv, snapshot: Snapshot, tmp: Path, outtype: str, log_path: Path, progress: ConvertProgress | None
) -> None:
    def on_line(line: str) -> None:
        match = _WRITING_RE.match(line)
        if match and progress is not None:
            progress(int(match[1]), 100)

    argv = [str(env.python), str(env.script), str(snapshot.folder), "--outfile", str(tmp), "--outtype", outtype]
    # Offline (transformers can reach for the network for some tokenizers), without NO_LOCAL_GGUF (the
    # converter uses the gguf-py of its own tree), without tokens.
    status, tail = run_child(argv, log_path, on_line, env=converter_env())
    if status == 0:
        return
    text = "\n".join(tail)
    if "No space left on device" in text:
        raise disk_full(tmp.parent)
    unsupported = _UNSUPPORTED_RE.search(text)
    if unsupported:
        raise ConvertError(
            f"{snapshot.name}: architecture {unsupported[1]} is not supported by llama.cpp's converter ({env.label})",
            hint="`mm llama converter --architectures` lists what it converts",
        )
    detail = next((line for line in reversed(tail) if "Error" in line or "error" in line), tail[-1] if tail else "")
    raise ConvertError(f"llama.cpp's converter {describe_exit(status)}: {detail}", hint=f"full log: {log_path}")


def _check_output(path: Path, outtype: str) -> GGUFHeader:
    try:
        header = read_header(path)
    except ModelFormatError as exc:
        raise ConvertError(f"the converter's output is not a valid GGUF: {exc}") from None
    if not header.tensors:
        raise ConvertError("the converter's output has no tensors")
    if header.file_type not in FILE_TYPES[outtype]:
        raise ConvertError(f"the converter's output has general.file_type {header.file_type}; asked for {outtype}")
    return header
