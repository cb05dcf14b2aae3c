"""A fast, narrow GGUF header reader: metadata and tensor infos, never tensor data or vocabulary strings.

Why not `gguf.GGUFReader`: it memory-maps the file and builds a numpy view per field part, decoding every
string of the tokenizer arrays in Python (~10 s for a 262k-token vocabulary). mm only needs the counts
of those arrays, so this reader walks string lengths with one buffered read of the header region and
keeps small placeholders for big arrays. Its cost depends on the header size, not the file size.

Every count and length is bounded by the bytes left in the file before anything is allocated, and
capped at values no real model reaches (a header stub is a sparse file as large as the model, so the
bytes left prove little); the hyperparameters mm computes with are type- and range-checked. So a
malformed or hostile file fails at once with ModelFormatError instead of hanging, allocating
gigabytes or handing a negative head count to the fit. Names from the file are escaped in messages.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.base.errors import ModelFormatError
from pipeline.base.safe_names import printable
from pipeline.base.shards import shard_paths
from pipeline.gguf.format import DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS, SUPPORTED_VERSIONS, ValueType
from pipeline.gguf.ggml_types import GGMLType, ggml_type_by_id

# common/common.h LLM_FFN_EXPS_REGEX: the routed-expert tensors (and their biases) that --cpu-moe and
# --n-cpu-moe keep on the CPU (std::regex_search, so a suffix such as .weight or .bias still matches).
EXPERTS_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")

SMALL_ARRAY = 64  # arrays longer than this are summarised (their length and element type), not kept
_CHUNK = 1 << 20
# Caps no real model reaches (the largest today: ~2k tensors, ~60 KV pairs, 262k-token vocabularies,
# chat templates of a few hundred KB); each is far above those and far below what hurts to allocate.
MAX_TENSORS = 1 << 18
MAX_KV = 1 << 16
MAX_KEY_BYTES = 1 << 16  # the GGUF spec: keys are at most 65535 bytes
MAX_STRING_BYTES = 16 << 20
MAX_ARRAY_LENGTH = 1 << 24
MAX_TENSOR_NAME_BYTES = 63  # GGML_MAX_NAME (64) less the terminating NUL; gguf.cpp refuses longer names
MAX_ALIGNMENT = 1 << 20
MAX_ELEMENTS = (1 << 63) - 1  # gguf.cpp: the element count must stay below INT64_MAX
ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # llama-arch.cpp's names: "llama", "qwen3moe", "gemma3n"
# Hyperparameters (`{arch}.<key>`) mm computes with: an integer 0..cap, or a short per-layer array of them.
HPARAM_CAPS = {
    "block_count": 1 << 12,
    "context_length": 1 << 30,
    "embedding_length": 1 << 20,
    "feed_forward_length": 1 << 22,
    "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16,
    "attention.key_length": 1 << 16,
    "attention.value_length": 1 << 16,
    "attention.sliding_window": 1 << 30,
    "attention.sliding_window_pattern": 1 << 12,
    "vocab_size": 1 << 24,
    "expert_count": 1 << 16,
    "expert_used_count": 1 << 16,
    "ssm.conv_kernel": 1 << 16,
    "ssm.inner_size": 1 << 22,
    "ssm.state_size": 1 << 16,
    "ssm.group_count": 1 << 16,
    "wkv.head_size": 1 << 16,
    "token_shift_count": 1 << 8,
}


@dataclass(frozen=True)
class ArraySummary:
    """Placeholder for a big metadata array (e.g. tokenizer.ggml.tokens): its length and element type."""

    length: int
    element_type: str

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # ggml type name, e.g. "Q4_K"
    shape: tuple[int, ...]  # ggml order: ne0 (row width) first
    n_elements: int
    n_bytes: int
    offset: int  # absolute offset of the data in its file


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0
    # bytes of each metadata key-value pair as stored (key, type, value), for writers that copy them
    # (llama-quantize): with the tensor infos they give a written header's exact size
    kv_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return int(value) if isinstance(value, int) else None

    @property
    def n_layers(self) -> int:
        value = self.get("block_count")
        return int(value) if isinstance(value, int) else 0

    def get(self, key_suffix: str, default: Any = None) -> Any:
        """`{arch}.<key_suffix>`, e.g. get("attention.head_count")."""
        return self.metadata.get(f"{self.architecture}.{key_suffix}", default)


class _Buffer:
    """Sequential reads over a file, refilled in chunks; every read is checked against the file size."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size
        self.data = b""
        self.start = 0  # file offset of data[0]
        self.pos = 0  # file offset of the next byte

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining():
            raise ModelFormatError(
                f"{self.path}: truncated or corrupt GGUF header: {what} needs {n} bytes at offset {self.pos}, "
                f"only {self.remaining()} left in the file"
            )
        end = self.pos + n
        if end > self.start + len(self.data):
            self.handle.seek(self.pos)
            self.data = self.handle.read(max(n, _CHUNK))
            self.start = self.pos
        chunk = self.data[self.pos - self.start : end - self.start]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, min_item_bytes: int, cap: int) -> int:
        """A u64 count that must fit in the rest of the file at `min_item_bytes` each, and be at most `cap`."""
        n = int(self.unpack("<Q", what))
        if n > cap:
            raise ModelFormatError(
                f"{self.path}: corrupt GGUF header: {what} = {n} is more than any model has (at most {cap})"
            )
        if n * max(min_item_bytes, 1) > self.remaining():
            raise ModelFormatError(
                f"{self.path}: corrupt GGUF header: {what} = {n} cannot fit in the {self.remaining()} bytes left"
            )
        return n

    def skip_strings(self, n: int, what: str) -> None:
        """Walk n length-prefixed strings without decoding them: the hot loop of a 262k-token vocabulary."""
        unpack_from = struct.unpack_from
        done = 0
        while done < n:
            if self.start + len(self.data) - self.pos < 8 + _CHUNK // 2:  # refill: keep the loop on local data
                self.handle.seek(self.pos)
                self.data, self.start = self.handle.read(_CHUNK * 4), self.pos
                if len(self.data) < 8:
                    raise ModelFormatError(f"{self.path}: truncated GGUF header: {what} ends after {done} of {n}")
            data, local, limit = self.data, self.pos - self.start, len(self.data) - 8
            while done < n and local <= limit:
                length = unpack_from("<Q", data, local)[0]
                local += 8 + length
                done += 1
            self.pos = self.start + local
            if self.pos > self.size:
                raise ModelFormatError(
                    f"{self.path}: truncated or corrupt GGUF header: {what}[{done - 1}] runs past the end of the file"
                )

    def string(self, what: str, cap: int = MAX_STRING_BYTES) -> str:
        length = self.count(f"length of {what}", 1, cap)
        return self.take(length, what).decode("utf-8", errors="replace")


def _value_type(buf: _Buffer, what: str) -> ValueType:
    raw = buf.unpack("<I", what)
    try:
        return ValueType(raw)
    except ValueError:
        raise ModelFormatError(f"{buf.path}: corrupt GGUF header: {what} has unknown value type {raw}") from None


def _read_value(buf: _Buffer, vtype: ValueType, key: str) -> Any:
    if vtype == ValueType.STRING:
        return buf.string(f"value of {key}")
    if vtype == ValueType.ARRAY:
        etype = _value_type(buf, f"element type of {key}")
        if etype == ValueType.ARRAY:
            raise ModelFormatError(f"{buf.path}: {key}: nested arrays are not valid GGUF metadata")
        if etype == ValueType.STRING:
            n = buf.count(f"length of {key}", 8, MAX_ARRAY_LENGTH)
            if n <= SMALL_ARRAY:
                return [buf.string(f"{key}[{i}]") for i in range(n)]
            buf.skip_strings(n, key)
            return ArraySummary(n, etype.name.lower())
        fmt = SCALAR_FORMATS[etype]
        width = struct.calcsize(fmt)
        n = buf.count(f"length of {key}", width, MAX_ARRAY_LENGTH)
        raw = buf.take(n * width, f"value of {key}")
        if n <= SMALL_ARRAY:
            return list(struct.unpack(f"<{n}{fmt[1:]}", raw))
        return ArraySummary(n, etype.name.lower())
    return buf.unpack(SCALAR_FORMATS[vtype], f"value of {key}")


def _read_tensor_info(buf: _Buffer) -> tuple[str, tuple[int, ...], GGMLType, int]:
    name = printable(buf.string("tensor name", MAX_TENSOR_NAME_BYTES))
    n_dims = buf.unpack("<I", f"dimension count of {name}")
    if not 1 <= n_dims <= 4:
        raise ModelFormatError(f"{buf.path}: tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to 4)")
    shape = tuple(int(buf.unpack("<Q", f"shape of {name}")) for _ in range(n_dims))
    raw_type = buf.unpack("<I", f"type of {name}")
    qtype = ggml_type_by_id(raw_type)
    if qtype is None:
        raise ModelFormatError(f"{buf.path}: tensor {name!r} has unknown ggml type {raw_type}")
    offset = int(buf.unpack("<Q", f"offset of {name}"))
    return name, shape, qtype, offset


def read_header(path: Path) -> GGUFHeader:
    """Metadata and tensor infos of one GGUF file; raises ModelFormatError for anything malformed."""
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        buf = _Buffer(handle, path, size)
        magic = buf.take(4, "magic") if size >= 4 else b""
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        version = buf.unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            raise ModelFormatError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")
        n_tensors = buf.count("tensor count", 24, MAX_TENSORS)
        n_kv = buf.count("metadata count", 12, MAX_KV)
        metadata: dict[str, Any] = {}
        kv_sizes: dict[str, int] = {}
        for _ in range(n_kv):
            start = buf.pos
            key = buf.string("metadata key", MAX_KEY_BYTES)
            label = printable(key)  # the key as messages show it
            metadata[key] = _read_value(buf, _value_type(buf, f"type of {label}"), label)
            kv_sizes[key] = buf.pos - start
        raw = [_read_tensor_info(buf) for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not _is_int(alignment) or not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
            raise ModelFormatError(
                f"{path}: general.alignment = {printable(repr(alignment))} is not a power of two up to {MAX_ALIGNMENT}"
            )
        _check_hparams(path, metadata)
        data_offset = buf.pos + (-buf.pos % alignment)
    tensors = [_tensor(path, data_offset, size, *item) for item in raw]
    return GGUFHeader(path, version, metadata, tensors, data_offset, size, kv_sizes)


def _tensor(
    path: Path,
    data_offset: int,
    size: int,
    name: str,
    shape: tuple[int, ...],
    qtype: GGMLType,
    rel: int,
) -> TensorInfo:
    block, type_size = qtype.block_elements, qtype.block_bytes
    n_elements = 1
    for dim in shape:  # Python ints: exact, and checked before anything is sized from them
        n_elements *= dim
    if n_elements > MAX_ELEMENTS:
        raise ModelFormatError(f"{path}: tensor {name!r} has shape {shape}: more elements than ggml can index")
    if shape[0] % block:
        raise ModelFormatError(f"{path}: tensor {name!r}: row width {shape[0]} is not a multiple of {block}")
    n_bytes = n_elements // block * type_size
    if data_offset + rel + n_bytes > size:
        raise ModelFormatError(
            f"{path}: tensor {name!r} ({n_bytes} bytes at offset {data_offset + rel}) runs past the end of "
            f"the file ({size} bytes): truncated download?"
        )
    return TensorInfo(name, qtype.name, shape, n_elements, n_bytes, data_offset + rel)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hparams(path: Path, metadata: dict[str, Any]) -> None:
    """The architecture name and the hyperparameters mm computes with: right type, in range, or an error."""
    arch = metadata.get("general.architecture")
    if arch is None:
        return
    if not isinstance(arch, str) or not ARCH_RE.match(arch):
        raise ModelFormatError(f"{path}: general.architecture = {printable(repr(arch))} is not an architecture name")
    for suffix, cap in HPARAM_CAPS.items():
        key = f"{arch}.{suffix}"
        value = metadata.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, ArraySummary):
            ok = value.element_type.startswith(("uint", "int"))
        else:
            flags = suffix == "attention.sliding_window_pattern"  # per-layer booleans there
            ok = all((_is_int(v) or (flags and isinstance(v, bool))) and 0 <= v <= cap for v in items)
        if not ok:
            raise ModelFormatError(
                f"{path}: {key} = {printable(repr(value), 80)}: expected a whole number from 0 to {cap}"
                + (" (or one per layer)" if suffix != "block_count" else ""),
                hint="the file is damaged or was not written by a GGUF converter",
            )


_SPLIT_COUNT = "split.count"


def read_model(path: Path) -> list[GGUFHeader]:
    """Headers of every shard of a (possibly split) model, given any shard; missing shards are an error."""
    paths = shard_paths(path)
    missing = [shard.name for shard in paths if not shard.exists()]
    if len(paths) > 1 and missing:
        raise ModelFormatError(
            f"{path}: split model of {len(paths)} shards, missing {', '.join(missing)} "
            f"(every shard must sit beside the first, in {path.parent})"
        )
    headers = [read_header(shard) for shard in paths]
    declared = headers[0].metadata.get(_SPLIT_COUNT)
    if isinstance(declared, int) and declared > 1 and len(headers) != declared:
        raise ModelFormatError(f"{path}: declares {declared} shards but its name does not say how to find them")
    return headers


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def layer_of(tensor_name: str) -> int | None:
    """The repeating layer a tensor belongs to (`blk.N.`), or None for input/output tensors."""
    match = _BLOCK_RE.match(tensor_name)
    return int(match.group(1)) if match else None
