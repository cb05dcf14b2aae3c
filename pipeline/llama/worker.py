"""One call of llama.cpp's `llama_model_quantize` through llama-cpp-python's ctypes bindings.

Run as `python -m pipeline.llama.worker` (the job and its log file as one JSON line on stdin) for a real
quantize, so an abort or a crash inside llama.cpp only ends this child: mm's parent process watches it,
keeps its log and removes the partial output. Dry runs (which read the header alone) may call `run_job` in-process.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import struct
import sys
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.base.constants import PARENT_PID_ENV, env_value

if TYPE_CHECKING:
    import numpy as np


GGML_TYPE_COUNT = 43  # ggml.h's GGML_TYPE_COUNT: "no override" for output/token-embedding types
KV_OVERRIDE_INT, KV_OVERRIDE_STR = 0, 3  # llama.h's llama_model_kv_override_type


@dataclass(frozen=True)
class QuantizeJob:
    """Everything one llama_model_quantize call needs, in llama.cpp's own terms (ids, not names).

    A plain dataclass sent as JSON: the child starts faster without pydantic.
    """

    source: str
    output: str
    ftype: int
    only_copy: bool = False
    nthread: int = 0  # <= 0: llama.cpp uses every hardware thread
    allow_requantize: bool = False
    quantize_output_tensor: bool = True
    pure: bool = False
    dry_run: bool = False
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None
    tensor_types: tuple[tuple[str, int], ...] = ()  # (regex pattern, ggml type id)
    imatrix: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> QuantizeJob:
        fields = json.loads(text)
        fields["tensor_types"] = tuple((str(p), int(t)) for p, t in fields.get("tensor_types", ()))
        return cls(**fields)

    def replace(self, **changes: Any) -> QuantizeJob:
        return replace(self, **changes)


def load_imatrix(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """Per-tensor importance values and the chunk count, as tools/quantize/quantize.cpp's load_imatrix.

    Reads both formats llama-imatrix writes: GGUF (`<name>.in_sum2` / `<name>.counts`, normalized by
    counts per expert) and the legacy `.dat` (sums already scaled by ncall).
    """
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"GGUF":
        return _load_imatrix_gguf(path)
    return _load_imatrix_legacy(path)


def _load_imatrix_gguf(path: Path) -> tuple[dict[str, np.ndarray], int]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name.removesuffix(".in_sum2")] = data
        elif tensor.name.endswith(".counts"):
            counts[tensor.name.removesuffix(".counts")] = data
    if not sums or sums.keys() != counts.keys():
        raise ValueError(f"{path}: not an importance matrix (mismatched or missing in_sum2/counts tensors)")
    result: dict[str, np.ndarray] = {}
    for name, total in sums.items():
        per = counts[name]
        rows = total.reshape(len(per), -1)
        values = np.where(per[:, None] > 0, rows / np.maximum(per[:, None], 1e-30), 1.0)
        result[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
    field = reader.fields.get("imatrix.chunk_count")
    chunks = int(field.parts[field.data[0]][0]) if field is not None else 0
    return result, chunks


def _load_imatrix_legacy(path: Path) -> tuple[dict[str, np.ndarray], int]:
    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ValueError(f"{path}: truncated importance matrix")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values[0] if len(values) == 1 else values

    n_entries = take("<i")
    if n_entries < 1:
        raise ValueError(f"{path}: not an importance matrix (no entries)")
    result: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        length = take("<i")
        if length < 0 or pos + length > len(data):
            raise ValueError(f"{path}: truncated importance matrix")
        name = data[pos : pos + length].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<i"), take("<i")
        if nval < 1 or pos + 4 * nval > len(data):
            raise ValueError(f"{path}: truncated importance matrix")
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        result[name] = sums / ncall if ncall > 0 else sums
    chunks = int(take("<i")) if pos + 4 <= len(data) else 0
    return result, chunks


def _params(job: QuantizeJob, keep: list[Any]) -> Any:
    """The ctypes params struct; `keep` holds every buffer the struct points into until the call returns."""
    import llama_cpp.llama_cpp as llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = job.ftype
    params.nthread = job.nthread
    params.allow_requantize = job.allow_requantize
    params.quantize_output_tensor = job.quantize_output_tensor
    params.only_copy = job.only_copy
    params.pure = job.pure
    params.dry_run = job.dry_run
    params.output_tensor_type = GGML_TYPE_COUNT if job.output_tensor_type is None else job.output_tensor_type
    params.token_embedding_type = GGML_TYPE_COUNT if job.token_embedding_type is None else job.token_embedding_type
    if job.tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(job.tensor_types) + 1))()
        for i, (pattern, type_id) in enumerate(job.tensor_types):
            overrides[i].pattern = pattern.encode()
            overrides[i].type = type_id
        overrides[len(job.tensor_types)].pattern = None
        overrides[len(job.tensor_types)].type = GGML_TYPE_COUNT
        keep.append(overrides)
        params.tt_overrides = overrides
    if job.imatrix:
        entries, chunks = load_imatrix(Path(job.imatrix))
        table = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(entries.items()):
            keep.append(values)
            table[i].name = name.encode()
            table[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            table[i].size = values.size
        keep.append(table)
        params.imatrix = table
        kvs = _imatrix_kv_overrides(job.imatrix, len(entries), chunks)
        keep.append(kvs)
        params.kv_overrides = kvs
    return params


def _imatrix_kv_overrides(imatrix: str, n_entries: int, chunks: int) -> Any:
    """The `quantize.imatrix.*` keys llama-quantize writes, so both engines produce the same metadata."""
    import llama_cpp.llama_cpp as llama_cpp

    items: list[tuple[str, int, str | int]] = [
        ("quantize.imatrix.file", KV_OVERRIDE_STR, imatrix),
        ("quantize.imatrix.entries_count", KV_OVERRIDE_INT, n_entries),
    ]
    if chunks > 0:
        items.append(("quantize.imatrix.chunks_count", KV_OVERRIDE_INT, chunks))
    kvs = (llama_cpp.llama_model_kv_override * (len(items) + 1))()
    for i, (key, tag, value) in enumerate(items):
        kvs[i].key = key.encode()
        kvs[i].tag = tag
        slot: Any = kvs[i].value  # llama_cpp types it as the Python value, not the ctypes union
        if isinstance(value, str):
            slot.val_str = value.encode()[:127]
        else:
            slot.val_i64 = value
    kvs[len(items)].key = b""
    return kvs


def run_job(job: QuantizeJob) -> int:
    """Call llama_model_quantize; llama.cpp's status (0 = success). Logs go wherever llama.cpp logs."""
    import llama_cpp.llama_cpp as llama_cpp

    keep: list[Any] = []
    params = _params(job, keep)
    return int(llama_cpp.llama_model_quantize(job.source.encode(), job.output.encode(), ctypes.byref(params)))


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _log_to_stderr(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    if text:
        sys.stderr.buffer.write(text)
        sys.stderr.buffer.flush()


def _die_with_parent() -> None:
    """SIGKILL this process when mm dies (Linux), so a killed mm never leaves a writer behind."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).prctl(1, 9)  # prctl(PR_SET_PDEATHSIG, SIGKILL)
    if str(os.getppid()) != (env_value(PARENT_PID_ENV) or str(os.getppid())):
        os._exit(1)  # mm died before the call took effect


def _bindings_only() -> Any:
    """llama-cpp-python's ctypes bindings without its package __init__ (the high-level Llama class, jinja2
    chat templates): the child then starts in ~0.06 s instead of ~0.35 s."""
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("llama-cpp-python is not installed")
        package = types.ModuleType("llama_cpp")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["llama_cpp"] = package
    import llama_cpp.llama_cpp as bindings

    return bindings


def main() -> int:
    """Child entry: load libllama first (while the parent does its checks), then take one job from stdin.

    The job comes with the log file; llama.cpp's every line goes there. An empty stdin means "cancelled".
    """
    _die_with_parent()
    try:
        llama_cpp = _bindings_only()
        llama_cpp.llama_backend_init()
        failure: Exception | None = None
    except (ImportError, OSError) as exc:
        failure = exc
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    request = json.loads(line)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if failure is not None:
        sys.stderr.write(f"mm: error: cannot load llama-cpp-python: {failure}\n")
        return 3
    job = QuantizeJob.from_json(json.dumps(request["job"]))
    llama_cpp.llama_log_set(_log_to_stderr, ctypes.c_void_p(0))
    try:
        status = run_job(job)
    except (OSError, ValueError) as exc:  # an unreadable or malformed imatrix
        sys.stderr.write(f"mm: error: {exc}\n")
        return 2
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
