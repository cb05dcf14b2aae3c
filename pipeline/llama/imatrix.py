"""`mm imatrix`: an importance matrix for a model, by llama.cpp's `llama-imatrix` (built by `mm llama build`).

The types that spend 1–3 bits per weight (iq1_*, iq2_*, iq3_xxs/xs, q2_k_s) need one: it weighs each
weight by how strongly calibration text activates it. The output (GGUF, llama-imatrix's default format)
is written under a temporary name and renamed only after it parses as GGUF with importance data in it;
it is cached by (model sha256, text sha256, parameters), and its record (`<file>.mm.json`) says which
model, text and llama.cpp made it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.base.child import describe_exit, run_child
from pipeline.base.constants import CALIBRATION_ENV, env_value
from pipeline.base.digest import file_sha256, record_sha256, sha256_file
from pipeline.base.errors import LlamaError, ModelFormatError, UsageError
from pipeline.base.home import atomic_path, locked, mm_home, remove_stale_temps
from pipeline.base.provenance import KeyedRecord, keyed_record, write_record
from pipeline.gguf.header import read_header
from pipeline.gguf.quant_types import FLOAT_FILE_TYPES
from pipeline.llama.tools import llama_cpp_version, require_llama_tool
from pipeline.resolve.texts import WIKITEXT_COMMIT, ResolvedText, TextRef, parse_text, text_budget, text_within
from pipeline.spec.recipe import DEFAULT_IMATRIX_CHUNKS, DEFAULT_IMATRIX_CTX

log = logging.getLogger(__name__)

# WikiText-2's raw *train* split, from the same zip as mm eval's default (its test split), so the text a
# quant is calibrated on is never the text it is evaluated on. MM_CALIBRATION_TEXT (a path or
# owner/name:FILE[#member][@revision] in a Hub dataset) replaces it; so do --text and a recipe's [imatrix] text.
DEFAULT_CALIBRATION = f"ggml-org/ci:wikitext-2-raw-v1.zip#wikitext-2-raw/wiki.train.raw@{WIKITEXT_COMMIT}"
_CHUNKS_RE = re.compile(r"computing over (\d+) chunks")
_CHUNK_DONE_RE = re.compile(r"^\[(\d+)\](-?nan|-?inf|[0-9.]+)")
_FINAL_PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+)")

ImatrixProgress = Callable[[int, int], None]  # (chunks done, chunks in all)
# Types an importance matrix cannot change: ggml-quants.c's quantize_q8_0, quantize_tq1_0 and quantize_tq2_0
# ignore quant_weights, and float types are conversions. Every other type uses it (llama-quant.cpp).
IGNORES_IMATRIX = {"f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "copy"}


class ImatrixParams(BaseModel):
    """What changes the matrix: how much text is read and in what context length."""

    model_config = ConfigDict(extra="forbid")

    chunks: int | None = Field(default=DEFAULT_IMATRIX_CHUNKS, ge=1)  # None: every chunk of the text
    ctx: int = Field(default=DEFAULT_IMATRIX_CTX, ge=16)


class ImatrixRecord(KeyedRecord):
    """Written beside each importance matrix once it is complete and checked."""

    n_entries: int  # tensors with importance data
    chunks_done: int
    perplexity: float | None  # llama-imatrix's running estimate on the text, as it reports it
    model_path: str
    model_sha256: str
    text_source: str  # the path, or repo:file@commit
    text_sha256: str
    params: ImatrixParams
    llama_cpp_version: str


class ImatrixResult(BaseModel):
    record: ImatrixRecord
    output: Path
    cached: bool
    log_path: Path | None = None


def uses_imatrix(qtype: str) -> bool:
    """Whether quantizing to `qtype` reads an importance matrix (needs one, or is better with one)."""
    from pipeline.gguf.quant_types import parse_quant_type

    return parse_quant_type(qtype).canonical not in IGNORES_IMATRIX


def calibration_model(model: Path, threads: int | None = None) -> Path:
    """The model to run calibration text through: a 16/32-bit source is first quantized to q8_0, as
    llama.cpp's imatrix guidance advises for speed (half the bytes read per token of f16; the same
    activations within q8_0's error); anything already quantized is used as it is."""
    if read_header(model).file_type not in FLOAT_FILE_TYPES:
        return model
    from pipeline.base.provenance import QuantParams
    from pipeline.llama.quantize import QuantizeRequest, quantize

    return quantize(QuantizeRequest(source=model, params=QuantParams(type="q8_0"), threads=threads)).output


def calibration_text(text: str | None, base: Path | None = None) -> TextRef:
    """`--text` / a recipe's [imatrix] text, else MM_CALIBRATION_TEXT, else the pinned default."""
    return parse_text(text or env_value(CALIBRATION_ENV) or DEFAULT_CALIBRATION, base)


def imatrix_key(model_sha256: str, text_sha256: str, params: ImatrixParams) -> str:
    canonical = json.dumps({"model": model_sha256, "text": text_sha256, "params": params.model_dump()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_imatrix(
    model: Path,
    text: ResolvedText,
    params: ImatrixParams | None = None,
    *,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    binary: Path | None = None,
    progress: ImatrixProgress | None = None,
) -> ImatrixResult:
    """The importance matrix of `model` over `text`, computed now unless an up-to-date one is there."""
    params = params or ImatrixParams()
    if not model.is_file():
        raise UsageError(f"{model}: no such model file")
    home = mm_home()
    model_sha256 = file_sha256(home, model)
    key = imatrix_key(model_sha256, text.sha256, params)
    output = home.imatrix / f"{model_sha256[:12]}-{text.sha256[:12]}-{key[:8]}.imatrix.gguf"
    tool = require_llama_tool("llama-imatrix", binary)
    with locked(home, f"imatrix-{key}"):
        done = keyed_record(output, ImatrixRecord, key)
        if done is not None:
            return ImatrixResult(record=done, output=output, cached=True)
        remove_stale_temps(output)
        log_path = home.ensure(home.logs) / f"imatrix-{output.name}.log"
        started = time.monotonic()
        with atomic_path(output) as tmp, text_within(text.path, text_budget(params.chunks, params.ctx)) as path:
            reported, ppl = _run(tool, model, path, params, tmp, threads, n_gpu_layers, log_path, progress)
            n_entries, stored = _check_output(tmp)
            sha256 = sha256_file(tmp)  # not cached: the temp name is gone after the rename
        record_sha256(home, output, sha256)
        record = ImatrixRecord(
            output_path=str(output),
            sha256=sha256,
            size_bytes=output.stat().st_size,
            n_entries=n_entries,
            chunks_done=stored if stored is not None else reported,
            perplexity=ppl,
            model_path=str(model),
            model_sha256=model_sha256,
            text_source=text.source,
            text_sha256=text.sha256,
            params=params,
            key=key,
            llama_cpp_version=llama_cpp_version(),
            seconds=round(time.monotonic() - started, 3),
        )
        write_record(record)
        return ImatrixResult(record=record, output=output, cached=False, log_path=log_path)


def _run(
    tool: Path,
    model: Path,
    text: Path,
    params: ImatrixParams,
    tmp: Path,
    threads: int | None,
    n_gpu_layers: int | None,
    log_path: Path,
    progress: ImatrixProgress | None,
) -> tuple[int, float | None]:
    """Run llama-imatrix; returns (chunks done, final perplexity estimate)."""
    argv = [str(tool), "-m", str(model), "-f", str(text), "-o", str(tmp), "--output-format", "gguf"]
    argv += ["-c", str(params.ctx)]
    argv += ["--chunks", str(params.chunks)] if params.chunks else []
    argv += ["-t", str(threads)] if threads else []
    argv += ["-ngl", str(n_gpu_layers)] if n_gpu_layers is not None else []
    state = {"total": 0, "done": 0}
    final: list[float] = []

    def on_line(line: str) -> None:
        if match := _CHUNKS_RE.search(line):
            state["total"] = int(match[1])
        elif match := _CHUNK_DONE_RE.match(line):
            state["done"] = int(match[1])
            if progress is not None:
                progress(state["done"], state["total"])
        elif match := _FINAL_PPL_RE.search(line):
            final.append(float(match[1]))

    status, tail = run_child(argv, log_path, on_line, env=dict(os.environ, LC_ALL="C"), separators=b"\r\n,")
    if status != 0:
        detail = next((line for line in reversed(tail) if "need" in line or "error" in line.lower()), "")
        hint, param = f"full log: {log_path}", None
        if "you need at least" in detail:
            hint, param = f"give a longer text, or a smaller context (now {params.ctx}); {hint}", "ctx"
        raise LlamaError(
            f"llama-imatrix {describe_exit(status)}: {detail or 'no error message'}", hint=hint, param=param
        )
    return state["done"], final[-1] if final else None


def _check_output(path: Path) -> tuple[int, int | None]:
    """The matrix parses as GGUF and holds importance data (`<tensor>.in_sum2` entries): their count, and
    the chunks it says it holds. The file, not the progress lines, is what a record states: a chunk's
    line can read `-nan` or be lost to a log that is cut short."""
    try:
        header = read_header(path)
    except ModelFormatError as exc:
        raise LlamaError(f"llama-imatrix's output is not a valid GGUF: {exc}") from None
    entries = sum(1 for t in header.tensors if t.name.endswith(".in_sum2"))
    if entries == 0:
        raise LlamaError("llama-imatrix wrote no importance data (no tensor saw activations)")
    stored = header.metadata.get("imatrix.chunk_count")
    return entries, stored if isinstance(stored, int) else None
