"""Header reader bounds (issue 10): lengths and counts no model has, wrong types and impossible shapes
are one message each — fast, small, never a traceback or a fit of nonsense; names are printed escaped."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.gguf_pieces import STRING, Pieces, encode_string, take_apart
from tests.hub import LocalHub

Mm = Callable[..., Result]
SPEC = TinySpec(n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=260)


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> Pieces:
    return take_apart(write_tiny_model(tmp_path_factory.mktemp("factory") / "m.gguf", SPEC))


def write(tmp_path: Path, data: bytes, name: str = "m.gguf", apparent_size: int | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    if apparent_size is not None:
        with path.open("r+b") as handle:
            handle.truncate(apparent_size)  # sparse: a header stub of a big model looks like this
    return path


def changed(pieces: Pieces, key: str, vtype: int, value: object) -> bytes:
    copy = Pieces(pieces.version, list(pieces.kvs), pieces.tensors, pieces.data, pieces.alignment)
    copy.replace_kv(key, vtype, value)
    return copy.assemble()


def test_huge_name_length_in_a_sparse_stub_fails_at_once(mm: Mm, pieces: Pieces, tmp_path: Path) -> None:
    at = pieces.index("general.name")
    part = pieces.kvs[at]
    key_len = struct.unpack_from("<Q", part.raw)[0]
    raw = bytearray(part.raw)
    struct.pack_into("<Q", raw, 8 + key_len + 4, 1_500_000_000)  # the value's length
    copy = Pieces(pieces.version, list(pieces.kvs), pieces.tensors, pieces.data, pieces.alignment)
    copy.kvs[at] = type(part)(part.name, bytes(raw))
    path = write(tmp_path, copy.assemble(), apparent_size=8 << 30)
    started = time.monotonic()
    result = mm("inspect", str(path))
    assert time.monotonic() - started < 2
    assert result.exit_code == 6, result.output
    assert "value of general.name = 1500000000 is more than any model has" in result.stderr


@pytest.mark.parametrize("count", [2**26, 2**31, 2**32 - 1])
def test_absurd_block_count_is_refused_fast(mm: Mm, pieces: Pieces, tmp_path: Path, count: int) -> None:
    path = write(tmp_path, changed(pieces, "llama.block_count", 4, count))
    started = time.monotonic()
    result = mm("fit", str(path), "--vram", "0", "--ram", "8G")
    assert time.monotonic() - started < 2
    assert result.exit_code == 6, result.output
    assert f"llama.block_count = {count}: expected a whole number from 0 to 4096" in result.stderr


@pytest.mark.parametrize(
    ("key", "vtype", "value"),
    [
        ("llama.attention.sliding_window", STRING, "abc"),
        ("llama.attention.sliding_window", 6, math.nan),
        ("llama.context_length", 6, 4096.0),
        ("llama.attention.head_count_kv", 5, -7),
        ("llama.feed_forward_length", 9, (STRING, ["a", "b"])),
        ("llama.embedding_length", 7, True),
    ],
)
def test_wrongly_typed_hyperparameter_is_one_message(
    mm: Mm, pieces: Pieces, tmp_path: Path, key: str, vtype: int, value: object
) -> None:
    path = write(tmp_path, changed(pieces, key, vtype, value))
    for command in (["inspect", str(path)], ["fit", str(path), "--vram", "0", "--ram", "8G"]):
        result = mm(*command)
        assert result.exit_code == 6, result.output
        assert f"{key} = " in result.stderr and "expected a whole number" in result.stderr
        assert "fits" not in result.stdout


def test_zero_kv_heads_is_not_fitted(mm: Mm, pieces: Pieces, tmp_path: Path) -> None:
    path = write(tmp_path, changed(pieces, "llama.attention.head_count_kv", 4, 0))
    result = mm("fit", str(path), "--vram", "0", "--ram", "8G")
    assert result.exit_code == 8, result.output
    assert "not a model that can run: 4 attention heads and 0 KV heads" in result.stderr


def test_layers_without_tensors_are_not_fitted(mm: Mm, pieces: Pieces, tmp_path: Path) -> None:
    path = write(tmp_path, changed(pieces, "llama.block_count", 4, 40))
    result = mm("fit", str(path), "--vram", "0", "--ram", "8G")
    assert result.exit_code == 8, result.output
    assert "38 of its 40 layers have no tensors" in result.stderr


def test_model_without_tensors_neither_fits_nor_quantizes(mm: Mm, pieces: Pieces, tmp_path: Path) -> None:
    empty = Pieces(pieces.version, pieces.kvs, [], b"", pieces.alignment)
    path = write(tmp_path, empty.assemble())
    fit = mm("fit", str(path), "--vram", "0", "--ram", "8G")
    assert fit.exit_code == 8 and "it has no tensors" in fit.stderr, fit.output
    quantize = mm("quantize", str(path), "--to", "q8_0")
    assert quantize.exit_code == 6 and "has no tensors" in quantize.stderr, quantize.output
    assert not list((tmp_path / "mm-home").rglob("*.gguf"))


def test_name_with_newline_and_escape_codes_is_printed_escaped(mm: Mm, pieces: Pieces, tmp_path: Path) -> None:
    path = write(tmp_path, changed(pieces, "general.name", STRING, "tiny\nerror: forged\x1b[2J"))
    result = mm("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert not any(line.startswith("error:") for line in result.output.splitlines())
    assert "tiny\\nerror: forged\\x1b[2J" in result.stdout


def test_hub_header_with_a_huge_length_is_refused_after_one_range_request(
    mm: Mm, pieces: Pieces, local_hub: LocalHub
) -> None:
    at = pieces.index("general.name")
    copy = Pieces(pieces.version, list(pieces.kvs), pieces.tensors, pieces.data, pieces.alignment)
    part = copy.kvs[at]
    copy.kvs[at] = type(part)(part.name, encode_string("general.name") + struct.pack("<IQ", STRING, 1 << 40))
    local_hub.add_repo("org/evil", {"m.gguf": copy.assemble() + b"\0" * (4 << 20)})
    result = mm("inspect", "org/evil:m.gguf")
    assert result.exit_code == 6, result.output
    assert "more than any model has" in result.stderr
    gets = local_hub.file_gets("m.gguf")
    assert len(gets) == 1 and sum(g.body_bytes for g in gets) <= 2 << 20
