"""The quantize stage: checks, one llama.cpp quantize into a temporary file, verification, provenance.

`quantize` refuses what would waste work or quality before starting (unknown type, missing imatrix,
requantize without permission, same type), asks llama.cpp's dry run first where it can refuse
(llama/quant_plan.py), writes under a temporary name, checks the result and only then renames it and
writes its `QuantRecord`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from pipeline.base.digest import file_sha256, record_sha256, sha256_handle
from pipeline.base.disk_space import SLACK_BYTES, disk_full, free_bytes, require_space
from pipeline.base.errors import ModelFormatError, QuantizeError, UsageError
from pipeline.base.home import atomic_path, locked, mm_home, remove_stale_temps
from pipeline.base.provenance import (
    QuantParams,
    QuantRecord,
    SourceRef,
    quantize_lock_name,
    read_record,
    source_ref,
    write_record,
)
from pipeline.base.shards import unsplit_stem
from pipeline.gguf.header import GGUFHeader, read_header
from pipeline.gguf.quant_types import QuantType, by_ftype, parse_quant_type
from pipeline.llama.engines import ApiWorker, TensorProgress, require_llama_quantize, run_quantize
from pipeline.llama.quant_plan import QuantPlan, file_bits_per_weight, plan, quantize_job, read_source
from pipeline.llama.tools import llama_cpp_version

log = logging.getLogger(__name__)

FLOAT_TYPES = {"F32", "F16", "BF16"}
IMATRIX_HINT = (
    "make one with `mm imatrix MODEL` (llama.cpp's llama-imatrix over calibration text), then give it to "
    'quantize; in a recipe, [quantize] imatrix = "auto" does both'
)


class QuantizeRequest(BaseModel):
    source: Path
    params: QuantParams
    source_ref: SourceRef | None = None
    engine: Literal["api", "binary"] = "api"
    threads: int | None = None
    output: Path | None = None
    llama_quantize: Path | None = None
    requested: bool = False  # the user asked for this file (QuantRecord.requested): gc keeps it


class QuantizeResult(BaseModel):
    record: QuantRecord | None
    output: Path
    skipped: str | None  # why no work was done, or None
    type: str
    source_bytes: int
    output_bytes: int
    bits_per_weight: float | None = None
    seconds: float = 0.0
    fallbacks: int = 0
    fallback_note: str | None = None
    warnings: list[str] = []
    log_path: Path | None = None


def default_output_path(source: Path, source_sha256: str, qtype: str) -> Path:
    """`$MM_HOME/quant/<source sha256[:12]>-<source stem>.<type>.gguf`: same source + type, same name.

    The output is one file, so a split source's `-00001-of-0000N` is left out of its name.
    """
    return mm_home().quant / f"{source_sha256[:12]}-{unsplit_stem(source.name)}.{qtype.lower()}.gguf"


def _quantized_type(header: GGUFHeader) -> str | None:
    """The name of a quantized source's type (e.g. "q4_k_m"), or None for an F32/F16/BF16 model."""
    if all(t.type_name in FLOAT_TYPES for t in header.tensors):
        return None
    known = by_ftype(header.file_type) if header.file_type is not None else None
    if known is not None and not known.is_float:
        return known.name
    return next(t.type_name.lower() for t in header.tensors if t.type_name not in FLOAT_TYPES)


def _nothing_to_do(header: GGUFHeader, qtype: QuantType, params: QuantParams) -> bool:
    """The source already is `qtype` and no override asks for anything else."""
    overrides = params.tensor_types or params.output_tensor_type or params.token_embedding_type or params.pure
    source_type = by_ftype(header.file_type) if header.file_type is not None else None
    return source_type is not None and source_type.name == qtype.canonical and not overrides


def requantize_refusal(header: GGUFHeader, qtype: QuantType, params: QuantParams) -> str | None:
    """Why quantizing the model of `header` to `qtype` must not run (an already-quantized source without
    allow_requantize), or None: a float source, `copy`, nothing to do, or re-quantizing allowed. One
    judgment for the quantize stage and for what `mm build --dry-run` / `mm recipe validate` report early."""
    current = _quantized_type(header)
    if current is None or qtype.name == "copy" or params.allow_requantize or _nothing_to_do(header, qtype, params):
        return None
    return (
        f"already quantized ({current}); re-quantizing it to {qtype.canonical} "
        "loses more quality than quantizing from an F16/BF16/F32 model"
    )


def check_request(request: QuantizeRequest, header: GGUFHeader, qtype: QuantType) -> tuple[str | None, list[str]]:
    """(why to skip, warnings) — or raise before any work for what must not run."""
    params = request.params
    if params.imatrix_path is not None and not Path(params.imatrix_path).is_file():
        raise UsageError(f"importance matrix {params.imatrix_path}: no such file", param="imatrix_path")
    if _nothing_to_do(header, qtype, params):
        return f"{request.source.name} is already {qtype.canonical}: nothing to do", []
    refusal = requantize_refusal(header, qtype, params)
    if refusal is not None:
        raise QuantizeError(
            f"{request.source} is {refusal}",
            hint="allow re-quantizing to do it anyway (recipe: allow_requantize = true)",
            param="allow_requantize",
        )
    current = _quantized_type(header)
    if current is not None and qtype.name != "copy":
        return None, [f"re-quantizing from {current}: expect lower quality than {qtype.canonical} made from F16/BF16"]
    return None, []


def needs_dry_run(qtype: QuantType, params: QuantParams) -> bool:
    """Whether llama.cpp's dry run must come first: to read the given imatrix (a broken one fails before
    any work), or because llama.cpp could refuse for want of an imatrix.

    The table's `needs_imatrix` matches llama.cpp's dry run for every type (a test holds it to that); an
    override to a type the table does not know is checked by the dry run too. Skipping the dry run when it
    cannot matter keeps `mm quantize` within a few percent of calling llama.cpp directly.
    """
    if params.imatrix_path:
        return True
    overrides = [*params.tensor_types.values(), params.output_tensor_type, params.token_embedding_type]
    for name in [qtype.name, *(o for o in overrides if o)]:
        try:
            if parse_quant_type(name).needs_imatrix:
                return True
        except UsageError:
            return True
    return False


def quantize(request: QuantizeRequest, progress: TensorProgress | None = None) -> QuantizeResult:
    """Produce (or find up to date) the quantized file for `request`; see the module docstring."""
    qtype = parse_quant_type(request.params.type)
    header = read_source(request.source)
    skip, warnings = check_request(request, header, qtype)
    if skip is not None:
        return QuantizeResult(
            record=None,
            output=request.source,
            skipped=skip,
            type=qtype.canonical,
            source_bytes=header.file_size,
            output_bytes=header.file_size,
        )
    binary = require_llama_quantize(request.llama_quantize) if request.engine == "binary" else None
    worker = ApiWorker() if request.engine == "api" else None  # warms up while the checks below run
    try:
        return _quantize(request, qtype, header, warnings, binary, worker, progress)
    finally:
        if worker is not None:
            worker.close()


def _quantize(
    request: QuantizeRequest,
    qtype: QuantType,
    header: GGUFHeader,
    warnings: list[str],
    binary: Path | None,
    worker: ApiWorker | None,
    progress: TensorProgress | None,
) -> QuantizeResult:
    predicted: QuantPlan | None = None
    if needs_dry_run(qtype, request.params):
        predicted = plan(request.source, request.params, engine=request.engine, llama_quantize=binary)
        if predicted.needs_imatrix and not request.params.imatrix_path:
            raise QuantizeError(
                f"{qtype.canonical} needs an importance matrix (imatrix) for this model",
                hint=IMATRIX_HINT,
                param="imatrix_path",
            )
    source = request.source_ref or source_ref(request.source.resolve())
    output = request.output or default_output_path(request.source, source.sha256, qtype.canonical)
    needed = _check_space(request, qtype, header, output, predicted, binary)
    home = mm_home()
    with locked(home, quantize_lock_name(output)):
        done = _up_to_date(output, source, request.params)
        if done is not None:
            if done.source != source or (request.requested and not done.requested):  # say where now, and who asked
                done = done.model_copy(update={"source": source, "requested": done.requested or request.requested})
                write_record(done)
            return _result(done, output, qtype, header, f"{output.name} is up to date", warnings, None)
        remove_stale_temps(output)
        log_path = home.ensure(home.logs) / f"quantize-{output.name}.log"
        started = time.monotonic()
        with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=1) as hasher, atomic_path(output) as tmp:
            job = quantize_job(request.source, tmp, qtype, request.params, request.threads)
            try:
                parsed = run_quantize(
                    job,
                    engine=request.engine,
                    type_name=qtype.name,
                    log_path=log_path,
                    binary=binary,
                    progress=progress,
                    worker=worker,
                )
            except QuantizeError:  # llama.cpp says "iostream error" for a full disk; say "disk"
                written = tmp.stat().st_size if tmp.exists() else 0
                if free_bytes(output.parent) < max(needed - written, 0) + SLACK_BYTES:
                    raise disk_full(output.parent, needed) from None
                raise
            checked = _verify_output(tmp, header, qtype)
            finished = stack.enter_context(open(tmp, "rb", buffering=0))  # opened before the rename
            digest = hasher.submit(sha256_handle, finished)  # hashes while atomic_path fsyncs and renames
        record_sha256(home, output, digest.result())
        record = QuantRecord(
            output_path=str(output),
            sha256=digest.result(),
            size_bytes=output.stat().st_size,
            file_type=checked.file_type if checked.file_type is not None else qtype.ftype,
            n_tensors=len(checked.tensors),
            source=source,
            params=request.params,
            engine=request.engine,
            llama_cpp_version=llama_cpp_version(),
            threads=request.threads,
            seconds=round(time.monotonic() - started, 3),
            requested=request.requested,
        )
        write_record(record)
        result = _result(record, output, qtype, header, None, warnings, log_path)
        return result.model_copy(update={"fallbacks": len(parsed.fallbacks), "fallback_note": parsed.fallback_note()})


def _check_space(
    request: QuantizeRequest,
    qtype: QuantType,
    header: GGUFHeader,
    output: Path,
    predicted: QuantPlan | None,
    binary: Path | None,
) -> int:
    """The output's size — from the type's bits per weight, or llama.cpp's dry run when space is tight."""
    if predicted is not None:
        estimate = predicted.file_bytes
    elif qtype.name == "copy":
        estimate = header.file_size
    else:
        estimate = int(sum(t.n_elements for t in header.tensors) * qtype.bits_per_weight / 8) + header.data_offset

    def exact() -> int:
        if predicted is not None:
            return predicted.file_bytes
        return plan(request.source, request.params, engine=request.engine, llama_quantize=binary).file_bytes

    return require_space(
        output.parent,
        estimate,
        f"the {qtype.canonical} output (llama.cpp's dry run)",
        exact=exact,
        hint="free some space, or write the output elsewhere (or point MM_HOME at a bigger disk)",
        param="output",
    )


def _result(
    record: QuantRecord,
    output: Path,
    qtype: QuantType,
    source: GGUFHeader,
    skipped: str | None,
    warnings: list[str],
    log_path: Path | None,
) -> QuantizeResult:
    written = read_header(output).tensors if output.is_file() else []
    return QuantizeResult(
        record=record,
        output=output,
        skipped=skipped,
        type=qtype.canonical,
        source_bytes=source.file_size,
        output_bytes=record.size_bytes,
        bits_per_weight=file_bits_per_weight(written),
        seconds=record.seconds,
        warnings=warnings,
        log_path=log_path,
    )


def _up_to_date(output: Path, source: SourceRef, params: QuantParams) -> QuantRecord | None:
    """The existing record when `output` was made from the same source bytes with the same parameters and
    still holds the bytes it recorded (a damaged output is made again, not taken as a new result)."""
    if not output.is_file():
        return None
    try:
        record = read_record(output)
    except ModelFormatError:
        return None
    if record is None or not record.source.same_bytes(source) or record.params != params:
        return None
    if output.stat().st_size != record.size_bytes:
        return None
    return record if file_sha256(mm_home(), output) == record.sha256 else None  # one stat when untouched


def _verify_output(path: Path, source: GGUFHeader, qtype: QuantType) -> GGUFHeader:
    """The output parses as GGUF, says the type asked for, and has every tensor of the source."""
    try:
        header = read_header(path)
    except ModelFormatError as exc:
        raise QuantizeError(f"llama.cpp's output is not a valid GGUF: {exc}") from None
    expected = source.file_type if qtype.name == "copy" else qtype.ftype
    if expected is not None and header.file_type != expected:
        raise QuantizeError(f"llama.cpp's output has general.file_type {header.file_type}, expected {expected}")
    if len(header.tensors) != len(source.tensors):
        raise QuantizeError(f"llama.cpp's output has {len(header.tensors)} tensors, the source {len(source.tensors)}")
    return header
