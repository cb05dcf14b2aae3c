"""mm's GGUF header reader against gguf.GGUFReader on a large-vocabulary (262k-token) model, side by side.

Run: .venv/bin/python bench/header.py [--vocab 262144]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf

from pipeline.gguf.header import read_header
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec


def best_of(runs: int, action: object) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, default=262144)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_tiny_model(Path(folder) / "big-vocab.gguf", TinySpec(n_vocab=args.vocab, dtype="f16"))
        size = path.stat().st_size
        mm_seconds = best_of(5, lambda: read_header(path))
        reference_seconds = best_of(1, lambda: [f.contents() for f in gguf.GGUFReader(str(path)).fields.values()])
        open_seconds = best_of(1, lambda: gguf.GGUFReader(str(path)))
    print(f"model: {args.vocab} tokens, {size / 2**20:.0f} MiB")
    print(f"mm read_header:                  {mm_seconds * 1000:8.1f} ms")
    print(f"gguf.GGUFReader (open):          {open_seconds * 1000:8.1f} ms")
    print(f"gguf.GGUFReader (open + values): {reference_seconds * 1000:8.1f} ms")
    print(f"ratio: mm is {open_seconds / mm_seconds:.0f}x faster than opening with GGUFReader, "
          f"{reference_seconds / mm_seconds:.0f}x faster than reading its values")  # fmt: skip


if __name__ == "__main__":
    main()
