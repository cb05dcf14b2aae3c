"""The narrow GGUF header reader: same facts as gguf.GGUFReader, and malformed files fail at once."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest

from pipeline.base.errors import ModelFormatError
from pipeline.gguf.header import ArraySummary, read_header, read_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec


def test_header_matches_gguf_reader(tiny_model: Path) -> None:
    header = read_header(tiny_model)
    reference = gguf.GGUFReader(str(tiny_model))
    expected = [(t.name, t.tensor_type.name, int(t.n_bytes), int(t.data_offset)) for t in reference.tensors]
    assert [(t.name, t.type_name, t.n_bytes, t.offset) for t in header.tensors] == expected
    assert header.architecture == "llama" and header.n_layers == 2
    assert header.get("attention.head_count_kv") == 2
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary) and len(tokens) == 320


def test_sliding_window_keys_are_read(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "g.gguf", TinySpec(arch="gemma3", n_layers=6, sliding_window=256))
    assert read_header(path).get("attention.sliding_window") == 256


def _corrupt(tmp_path: Path, source: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(source.read_bytes())
    raw[offset : offset + len(data)] = data
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(raw))
    return path


def test_wrong_magic_is_rejected(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        read_header(_corrupt(tmp_path, tiny_model, 0, b"GGML"))


def test_truncated_file_is_rejected(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_header(path)


def test_truncated_data_region_is_rejected(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(tiny_model.read_bytes()[:-4096])
    with pytest.raises(ModelFormatError, match="past the end"):
        read_header(path)


def test_absurd_counts_fail_fast_without_allocating(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(ModelFormatError, match="tensor count"):
        read_header(_corrupt(tmp_path, tiny_model, 8, struct.pack("<Q", 1 << 60)))
    with pytest.raises(ModelFormatError, match="metadata count"):
        read_header(_corrupt(tmp_path, tiny_model, 16, struct.pack("<Q", 1 << 62)))
    # the first key's length
    with pytest.raises(ModelFormatError, match="more than any model has"):
        read_header(_corrupt(tmp_path, tiny_model, 24, struct.pack("<Q", 1 << 40)))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="not a GGUF"):
        read_header(empty)
    with pytest.raises(ModelFormatError, match="cannot read"):
        read_header(tmp_path / "missing.gguf")


def test_split_model_reads_every_shard(tmp_path: Path, tiny_model: Path) -> None:
    for i in (1, 2):
        (tmp_path / f"m-{i:05d}-of-00002.gguf").write_bytes(tiny_model.read_bytes())
    headers = read_model(tmp_path / "m-00002-of-00002.gguf")
    assert [h.path.name for h in headers] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(ModelFormatError):
        read_model(tmp_path / "m-00001-of-00002.gguf")


def test_large_vocabulary_is_counted_not_decoded(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "v.gguf", TinySpec(n_vocab=20000, n_embd=32, n_head=2, n_head_kv=1, n_ff=32))
    header = read_header(path)
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 20000
    assert len(header.metadata["tokenizer.ggml.scores"]) == 20000
    assert header.tensors[-1].offset + header.tensors[-1].n_bytes <= path.stat().st_size
    # cut inside the token list: an error, not a hang
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ModelFormatError, match=r"truncated|corrupt"):
        read_header(cut)
