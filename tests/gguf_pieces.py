"""Take a GGUF apart into raw pieces (with gguf-py's own reader, independent of mm's) and put it back.

For tests that need malformed headers: replace one key's bytes, lie about a count, drop the tensors,
then `assemble()` — the data region and its alignment are carried over unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf

STRING, ARRAY = 8, 9
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def encode_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: int, value: object) -> bytes:
    """A value's bytes after its type id: scalars, strings, or (element type, items) for arrays."""
    if vtype == STRING:
        assert isinstance(value, str | bytes)
        return encode_string(value)
    if vtype == ARRAY:
        etype, items = value  # type: ignore[misc]
        body = b"".join(encode_value(etype, item) for item in items)
        return struct.pack("<IQ", etype, len(items)) + body
    return struct.pack(SCALAR_FORMATS[vtype], value)


def encode_kv(key: str, vtype: int, value: object) -> bytes:
    return encode_string(key) + struct.pack("<I", vtype) + encode_value(vtype, value)


@dataclass
class Part:
    """One field of the header: its raw bytes, and where its length/count words sit inside them."""

    name: str
    raw: bytes
    words: list[int] = field(default_factory=list)  # offsets (in raw) of its u64s: lengths, counts, dims


@dataclass
class Pieces:
    version: int
    kvs: list[Part]
    tensors: list[Part]
    data: bytes
    alignment: int

    def assemble(self, *, n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
        head = struct.pack(
            "<4sIQQ",
            b"GGUF",
            self.version,
            len(self.tensors) if n_tensors is None else n_tensors,
            len(self.kvs) if n_kv is None else n_kv,
        )
        body = head + b"".join(p.raw for p in self.kvs) + b"".join(p.raw for p in self.tensors)
        return body + b"\0" * (-len(body) % self.alignment) + self.data

    def replace_kv(self, key: str, vtype: int, value: object) -> None:
        """Set `key` (in place if present, else appended) to `value` of GGUF value type `vtype`."""
        part = Part(key, encode_kv(key, vtype, value))
        if any(p.name == key for p in self.kvs):
            self.kvs = [part if p.name == key else p for p in self.kvs]
        else:
            self.kvs = [*self.kvs, part]

    def index(self, key: str) -> int:
        return next(i for i, p in enumerate(self.kvs) if p.name == key)


def take_apart(path: Path) -> Pieces:
    raw = path.read_bytes()
    reader = gguf.GGUFReader(path)
    kvs = []
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        kvs.append(_part(raw, name, fld))
    tensors = [_part(raw, t.name, t.field) for t in reader.tensors]
    alignment = int(reader.alignment)
    return Pieces(int(reader.fields["GGUF.version"].parts[0][0]), kvs, tensors, raw[reader.data_offset :], alignment)


def _part(raw: bytes, name: str, fld: gguf.ReaderField) -> Part:
    words, offset = [], 0
    for piece in fld.parts:
        if piece.dtype == "uint64":
            words += [offset + 8 * i for i in range(piece.size)]
        offset += piece.nbytes
    return Part(name, raw[fld.offset : fld.offset + offset], words)
