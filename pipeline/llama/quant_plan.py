"""A quantize planned by llama.cpp's own dry run (header only, milliseconds): the llama.cpp job for given
parameters, and the exact type and size of every tensor it would write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel

from pipeline.base.errors import ModelFormatError, QuantizeError, UsageError
from pipeline.base.home import mm_home
from pipeline.base.provenance import QuantParams
from pipeline.gguf.format import DEFAULT_ALIGNMENT
from pipeline.gguf.ggml_types import ggml_type_id, tensor_bytes
from pipeline.gguf.header import GGUFHeader, TensorInfo, read_model
from pipeline.gguf.quant_types import QuantType, parse_quant_type
from pipeline.llama.engines import QuantizeLog, dry_run_in_process, require_llama_quantize, run_quantize
from pipeline.llama.worker import QuantizeJob


class PlannedTensor(NamedTuple):
    name: str
    type: str  # ggml type name, upper case (as gguf-py spells it: "Q4_K")
    n_bytes: int


class QuantPlan(BaseModel):
    """What a quantize would produce, from llama.cpp's dry run: exact tensor sizes and types."""

    type: str
    file_bytes: int  # exact: the header llama-quantize writes and every tensor, padded
    tensors: list[PlannedTensor]
    needs_imatrix: bool
    fallbacks: int
    fallback_note: str | None = None
    source_bytes: int
    bits_per_weight: float  # as llama.cpp reports it (bits_per_weight below)

    @property
    def tensor_types(self) -> dict[str, int]:
        """ggml type -> how many tensors get it, most common first."""
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.type] = counts.get(tensor.type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def quantize_job(source: Path, output: Path, qtype: QuantType, params: QuantParams, threads: int | None) -> QuantizeJob:
    """The llama.cpp call for these parameters; bad tensor types or patterns are usage errors here."""
    tensor_types = []
    for pattern, type_name in params.tensor_types.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(
                f"tensor type override {pattern}={type_name}: invalid pattern: {exc}", param="tensor_types"
            ) from None
        tensor_types.append((pattern, ggml_type_id(type_name)))
    return QuantizeJob(
        source=str(source),
        output=str(output),
        ftype=qtype.ftype,
        only_copy=qtype.name == "copy",
        nthread=threads or 0,
        allow_requantize=params.allow_requantize,
        quantize_output_tensor=not params.leave_output_tensor,
        pure=params.pure,
        output_tensor_type=ggml_type_id(params.output_tensor_type) if params.output_tensor_type else None,
        token_embedding_type=ggml_type_id(params.token_embedding_type) if params.token_embedding_type else None,
        tensor_types=tuple(tensor_types),
        imatrix=params.imatrix_path,
    )


def read_source(path: Path) -> GGUFHeader:
    """The source's header; a split model's shards merged into one (llama.cpp reads them all)."""
    headers = read_model(path)
    if not any(h.tensors for h in headers):
        raise ModelFormatError(f"{path}: the GGUF has no tensors: there is nothing to quantize")
    if len(headers) == 1:
        return headers[0]
    first = headers[0]
    return GGUFHeader(
        first.path,
        first.version,
        first.metadata,
        [t for h in headers for t in h.tensors],
        first.data_offset,
        sum(h.file_size for h in headers),
        first.kv_sizes,  # llama.cpp copies the first shard's metadata (llama-quant.cpp gguf_set_kv)
    )


# What llama-quantize writes beside the source's metadata (src/llama-quant.cpp, llama_model_quantize_impl): it
# sets these two u32 keys and removes the split keys; a GGUF key-value pair is a u64 length, the key, a u32 type
# and the value (ggml/src/gguf.cpp).
_SET_U32_KEYS = ("general.quantization_version", "general.file_type")
_REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")
_PREFIX_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, key-value count


def _output_header_bytes(header: GGUFHeader, alignment: int) -> int:
    """The exact size of the header llama-quantize writes for `header`'s model, padded to the alignment."""
    kv = {key: size for key, size in header.kv_sizes.items() if key not in _REMOVED_KEYS}
    kv |= {key: 8 + len(key.encode()) + 4 + 4 for key in _SET_U32_KEYS}
    # a tensor info: name (u64 length + bytes), n_dims (u32), one u64 per dimension, type (u32), offset (u64)
    infos = sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in header.tensors)
    return _pad(_PREFIX_BYTES + sum(kv.values()) + infos, alignment)


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def bits_per_weight(tensor_bytes: int, n_elements: int) -> float:
    """As llama.cpp's loader reports it (print_info "file size = ... (x BPW)", llama-model-loader.cpp): tensor
    data only, without the header and padding, per weight."""
    return round(tensor_bytes * 8 / (n_elements or 1), 2)


def file_bits_per_weight(tensors: list[TensorInfo]) -> float:
    """bits_per_weight of a written file's tensors (its header's)."""
    return bits_per_weight(sum(t.n_bytes for t in tensors), sum(t.n_elements for t in tensors))


def plan(
    source: Path, params: QuantParams, *, engine: Literal["api", "binary"] = "api", llama_quantize: Path | None = None
) -> QuantPlan:
    """llama.cpp's dry run for `params`: per-tensor types and sizes, and whether an imatrix is needed.

    Requantizing is assumed permitted: the plan says what the result would be, `quantize` says whether
    it may be made.
    """
    qtype = parse_quant_type(params.type)
    header = read_source(source)
    job = quantize_job(source, source.with_name(".mm-dry-run.gguf"), qtype, params, None)
    job = job.replace(dry_run=True, allow_requantize=True)
    if engine == "api":
        parsed = dry_run_in_process(job)
    else:
        logs = mm_home().ensure(mm_home().logs)
        parsed = run_quantize(
            job,
            engine="binary",
            type_name=qtype.name,
            log_path=logs / "dry-run.log",
            binary=require_llama_quantize(llama_quantize),
        )
    return _plan_from_log(header, qtype, parsed)


def _plan_from_log(header: GGUFHeader, qtype: QuantType, parsed: QuantizeLog) -> QuantPlan:
    tensors = []
    for info in header.tensors:
        new_type = parsed.tensor_types.get(info.name)
        if new_type is None:
            raise QuantizeError(f"{header.path}: llama.cpp's dry run did not report tensor {info.name}")
        tensors.append(PlannedTensor(info.name, new_type, tensor_bytes(new_type, info.shape)))
    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)  # checked by the header reader
    data = sum(_pad(t.n_bytes, alignment) for t in tensors)  # each tensor padded (llama-quant.cpp zeros())
    n_elements = sum(t.n_elements for t in header.tensors)
    return QuantPlan(
        type=qtype.canonical,
        file_bytes=_output_header_bytes(header, alignment) + data,
        tensors=tensors,
        needs_imatrix=parsed.needs_imatrix,
        fallbacks=len(parsed.fallbacks),
        fallback_note=parsed.fallback_note(),
        source_bytes=header.file_size,
        bits_per_weight=bits_per_weight(sum(t.n_bytes for t in tensors), n_elements),
    )
