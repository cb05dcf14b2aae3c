"""How long `mm` takes to start: each command beside the bare interpreter, median of N runs, side by side.

The runs interleave (one of each per round) so a busy machine slows every command alike; beside the wall time
each command's CPU time (user + system, from the kernel's account of the child) shows the work itself when other
processes share the cores. Target (issue 18): `mm --version` and `mm inspect LOCAL` each add under 0.25 s to
`python -c pass`.

Run: .venv/bin/python bench/startup.py [--runs 10] [--compare ../main]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.25


# The framework's own floor: a bare typer app whose one command takes inspect's parameters (typer checks each
# with a pydantic TypeAdapter, so a command that parses any flag loads pydantic).
TYPER_FLOOR = """
from pathlib import Path
from typing import Annotated
import typer
app = typer.Typer()
@app.command()
def inspect(model: str, as_json: Annotated[bool, typer.Option("--json")] = False,
            recipes: Annotated[Path | None, typer.Option()] = None, token: Annotated[str | None, typer.Option()] = None,
            offline: bool = False) -> None:
    pass
@app.command()
def other() -> None:
    pass
app()
"""


def commands(model: Path) -> dict[str, list[str]]:
    # As the `mm` console script pip writes: import pipeline.cli and call main() (from the tree on PYTHONPATH).
    # `python -m pipeline.cli` is slower to start (it runs cli.py as __main__); users type `mm`, so `mm` is timed.
    mm = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.argv[0] = 'mm'; sys.exit(main())"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "typer floor": [sys.executable, "-c", TYPER_FLOOR, "inspect", str(model)],
        "mm --version": [*mm, "--version"],
        "mm inspect LOCAL": [*mm, "inspect", str(model)],
        "mm fit LOCAL": [*mm, "fit", str(model)],
        "python -m pipeline.cli inspect": [sys.executable, "-m", "pipeline.cli", "inspect", str(model)],
    }


def seconds(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run, in the tree on PYTHONPATH (`python -m` puts the working folder first)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        argv, env=env, cwd=env["PYTHONPATH"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--compare", type=Path, metavar="DIR", help="Another checkout of mm (e.g. main's) timed in the same rounds."
    )
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({str(args.compare): args.compare.resolve()} if args.compare else {})}
    for tree in trees.values():
        check = [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"]
        loaded = subprocess.run(check, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True)
        assert Path(loaded.stdout.decode().strip()).is_relative_to(tree), f"{tree}: mm loads from {loaded.stdout!r}"
    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_model(Path(folder) / "tiny.gguf", TinySpec())
        argvs = commands(model)
        # Bytecode caches as a user's Python keeps them: this sandbox exports PYTHONDONTWRITEBYTECODE=1, which
        # would time compiling every mm module from source on each start. They go to a scratch prefix, not the tree.
        outside = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        envs = {
            label: {
                **outside,
                "MM_HOME": str(Path(folder) / "home"),
                "PYTHONPATH": str(tree),
                "PYTHONPYCACHEPREFIX": str(Path(folder) / "pycache" / label.replace("/", "_")),
            }
            for label, tree in trees.items()
        }
        for env in envs.values():  # warm the file cache and the bytecode caches once
            for argv in argvs.values():
                seconds(argv, env)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {(t, n): [] for t in envs for n in argvs}
        for _ in range(args.runs):
            for label, env in envs.items():
                for name, argv in argvs.items():
                    times[label, name].append(seconds(argv, env))
    print(f"median of {args.runs} runs each, interleaved ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    for label in envs:
        _report(label, {name: times[label, name] for name in argvs})


def _report(label: str, times: dict[str, list[tuple[float, float]]]) -> None:
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    bare = "python -c pass"
    print(f"\n{label:18} {'wall s':>8} {'+wall':>8} {'cpu s':>8} {'+cpu':>8}")
    for name in times:
        added = wall[name] - wall[bare]
        verdict = "" if not name.startswith(("mm --version", "mm inspect")) else (
            "  ok" if added < TARGET_SECONDS else f"  over the {TARGET_SECONDS} s target"
        )  # fmt: skip
        print(f"{name:18} {wall[name]:8.3f} {added:+8.3f} {cpu[name]:8.3f} {cpu[name] - cpu[bare]:+8.3f}{verdict}")


if __name__ == "__main__":
    main()
