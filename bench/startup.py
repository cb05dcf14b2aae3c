"""How long `mm` takes to start: each command beside the bare interpreter, median of N runs, side by side.

The runs interleave (one of each per round) so a busy machine slows every command alike. Target (issue 18):
`mm --version` and `mm inspect LOCAL` each add under 0.25 s to `python -c pass`.

Run: .venv/bin/python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.gguf.tiny_model import TinySpec, write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.25


def commands(model: Path) -> dict[str, list[str]]:
    mm = [sys.executable, "-m", "pipeline.cli"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "mm --version": [*mm, "--version"],
        "mm inspect LOCAL": [*mm, "inspect", str(model)],
        "mm fit LOCAL": [*mm, "fit", str(model)],
    }


def seconds(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_model(Path(folder) / "tiny.gguf", TinySpec())
        env = {**os.environ, "MM_HOME": str(Path(folder) / "home"), "PYTHONPATH": str(ROOT)}
        argvs = commands(model)
        for argv in argvs.values():  # warm the file cache and the bytecode caches once
            seconds(argv, env)
        times: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(args.runs):
            for name, argv in argvs.items():
                times[name].append(seconds(argv, env))
    bare = statistics.median(times["python -c pass"])
    print(f"median of {args.runs} runs each ({os.cpu_count()} CPUs)")
    for name, values in times.items():
        median = statistics.median(values)
        added = "" if name.startswith("python") else f"  +{median - bare:.3f} s over the interpreter"
        verdict = "" if name.startswith("python") or "fit" in name else (
            "  ok" if median - bare < TARGET_SECONDS else f"  over the {TARGET_SECONDS} s target"
        )  # fmt: skip
        print(f"{name:18} {median:.3f} s{added}{verdict}")


if __name__ == "__main__":
    main()
