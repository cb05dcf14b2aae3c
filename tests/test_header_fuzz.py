"""Fuzzing the header reader (issue 10): seeded mutants of a factory model's header — bit flips,
truncations, huge lengths and counts, wrong value types, impossible hyperparameters — each run through
`mm inspect` and `mm fit` in a child process with a memory limit and a per-case time limit.
Every run must end in a message and an exit code: no traceback, no slow case, no raw control characters."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.gguf_pieces import ARRAY, STRING, Pieces, take_apart

SEED = 10
HUGE = [1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 64) - 1, 1_500_000_000, 2**26]
REPO_ROOT = Path(__file__).resolve().parent.parent


def _huge_word(pieces: Pieces, rng: random.Random, in_tensors: bool) -> bytes:
    parts = pieces.tensors if in_tensors else pieces.kvs
    part = rng.choice([p for p in parts if p.words])
    at = rng.choice(part.words)
    raw = bytearray(part.raw)
    raw[at : at + 8] = struct.pack("<Q", rng.choice(HUGE))
    original, part.raw = part.raw, bytes(raw)
    try:
        return pieces.assemble()
    finally:
        part.raw = original


WRONG_VALUES: list[tuple[int, object]] = [
    (STRING, "abc"),
    (6, math.nan),
    (6, math.inf),
    (12, -1e300),
    (7, True),
    (5, -7),
    (11, -(1 << 62)),
    (10, (1 << 64) - 1),
    (ARRAY, (STRING, ["a", "b"])),
    (ARRAY, (5, [-1, 2, 3])),
    (ARRAY, (6, [math.nan])),
    (ARRAY, (7, [])),
]


def mutants(model: Path, count: int) -> list[tuple[str, bytes]]:
    """(kind, bytes) for `count` seeded mutants of `model`, in even shares of each kind."""
    rng = random.Random(SEED)
    pieces = take_apart(model)
    raw = model.read_bytes()
    header_end = len(raw) - len(pieces.data)
    arch = next(p.raw for p in pieces.kvs if p.name == "general.architecture")[-5:].decode()
    hparams = [p.name for p in pieces.kvs if p.name.startswith(arch + ".")]
    out: list[tuple[str, bytes]] = []
    kinds = ["flip", "truncate", "huge-length", "huge-count", "wrong-type", "retype", "hparam"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "flip":
            data = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
            out.append((kind, bytes(data)))
        elif kind == "truncate":
            out.append((kind, raw[: rng.randrange(header_end + 64)]))
        elif kind == "huge-length":
            out.append((kind, _huge_word(pieces, rng, in_tensors=False)))
        elif kind == "huge-count":
            if rng.random() < 0.4:
                which = rng.choice(["n_tensors", "n_kv"])
                out.append((kind, pieces.assemble(**{which: rng.choice(HUGE)})))
            else:
                out.append((kind, _huge_word(pieces, rng, in_tensors=True)))
        elif kind == "wrong-type":
            key = rng.choice(hparams if rng.random() < 0.7 else [p.name for p in pieces.kvs])
            vtype, value = rng.choice(WRONG_VALUES)
            copy = Pieces(pieces.version, list(pieces.kvs), pieces.tensors, pieces.data, pieces.alignment)
            copy.replace_kv(key, vtype, value)
            out.append((kind, copy.assemble()))
        elif kind == "retype":  # the type id changes, the value bytes stay: everything after misparses
            part = rng.choice(pieces.kvs)
            key_len = struct.unpack_from("<Q", part.raw)[0]
            data = bytearray(part.raw)
            struct.pack_into("<I", data, 8 + key_len, rng.randrange(14))
            original, part.raw = part.raw, bytes(data)
            out.append((kind, pieces.assemble()))
            part.raw = original
        else:
            out.append((kind, _hparam_mutant(pieces, arch, rng)))
    return out


def _hparam_mutant(pieces: Pieces, arch: str, rng: random.Random) -> bytes:
    copy = Pieces(pieces.version, list(pieces.kvs), list(pieces.tensors), pieces.data, pieces.alignment)
    choice = rng.randrange(6)
    if choice == 0:
        copy.replace_kv(f"{arch}.block_count", 4, rng.choice([0, 2**26, 2**31, 2**32 - 1, 1000]))
    elif choice == 1:
        copy.replace_kv(f"{arch}.attention.head_count_kv", 5, rng.choice([-7, 0, -(2**31)]))
    elif choice == 2:
        copy.replace_kv(f"{arch}.attention.head_count", 4, 0)
    elif choice == 3:
        copy.replace_kv(f"{arch}.embedding_length", 4, rng.choice([0, 2**31]))
    elif choice == 4:
        copy.tensors = []  # a model with no tensors
    else:
        copy.replace_kv("general.name", STRING, "x\nerror: forged line\x1b[31m red")
    return copy.assemble()


@pytest.mark.slow
def test_fuzzed_headers_give_messages_not_tracebacks(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "factory.gguf", TinySpec(n_layers=2, n_embd=64, n_head=4, n_head_kv=2,
                                                                   n_ff=128, n_vocab=260))  # fmt: skip
    folder = tmp_path / "mutants"
    folder.mkdir()
    paths = []
    kinds = {}
    for i, (kind, data) in enumerate(mutants(model, 336)):
        path = folder / f"{i:03d}-{kind}.gguf"
        path.write_bytes(data)
        paths.append(str(path))
        kinds[str(path)] = kind
    child = subprocess.run(
        [sys.executable, "-m", "tests.header_fuzz_child"],
        input="\n".join(paths) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    runs = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(runs) == 2 * len(paths)
    tracebacks = [r for r in runs if "traceback" in r]
    slow = [r for r in runs if r.get("slow") or r["seconds"] > 2.0]
    assert not tracebacks, tracebacks[0]["path"] + "\n" + tracebacks[0]["traceback"]
    assert not slow, slow[:3]
    for run in runs:
        assert "\x1b" not in run["output"], run
        assert not any(line.startswith("error: forged") for line in run["output"].splitlines()), run
        assert run["stderr"].count("error:") <= 1, run
        if run["exit_code"] not in (0,):
            assert run["stderr"].startswith("error: "), run
    refused = sum(1 for r in runs if r["exit_code"] != 0)
    assert refused > len(runs) // 2  # most mutants are broken, and said so
