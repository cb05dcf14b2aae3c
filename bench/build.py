"""No-op rebuild time of `mm build --all` over 20 built recipes (target < 1 s), beside the first build's time.

Local-path sources (no network); each recipe has its own small model. Run: .venv/bin/python bench/build.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_RECIPES = 20
TYPES = ["q8_0", "q4_0"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mm-bench-build-") as tmp:
        root = Path(tmp)
        os.environ["MM_HOME"] = str(root / "home")
        os.environ["HF_HUB_OFFLINE"] = "1"  # local sources: nothing may touch the network
        from pipeline.build.runner import BuildOptions, build, select_recipes
        from pipeline.gguf.tiny_model import write_tiny_model
        from pipeline.gguf.tiny_tensors import TinySpec

        recipes = root / "recipes"
        recipes.mkdir()
        for i in range(N_RECIPES):
            write_tiny_model(recipes / f"m{i:02d}.gguf", TinySpec(n_layers=1, n_embd=256, n_ff=256, seed=i))
            (recipes / f"r{i:02d}.toml").write_text(
                f'hardware = "cpu-32g"\n[source]\npath = "m{i:02d}.gguf"\n[quantize]\ntypes = {TYPES!r}\n'
                "[run]\nctx = 256\n"
            )
        paths = select_recipes([], all_recipes=True, folder=recipes)

        started = time.perf_counter()
        first = build(paths, BuildOptions(jobs=2))
        first_seconds = time.perf_counter() - started
        if first.failed:
            sys.exit(f"first build failed: {first.failed[0].name}: {first.failed[0].reason}")

        noop_library = min(_timed(lambda: build(paths, BuildOptions())) for _ in range(3))
        again = build(paths, BuildOptions())
        assert all(r.status == "skipped" for r in again.recipes), "the no-op build ran something"

        mm = [sys.executable, "-m", "pipeline.cli"]
        noop_cli = min(
            _timed(lambda: subprocess.run([*mm, "build", "--all", "--recipes", str(recipes), "-q"], check=True))
            for _ in range(3)
        )
        startup = min(
            _timed(lambda: subprocess.run([*mm, "--version"], check=True, capture_output=True)) for _ in range(3)
        )

    stages = sum(len(r.stages) for r in again.recipes)
    print(f"recipes: {N_RECIPES} ({len(TYPES)} quant types each, {stages} stages in all)")
    print(f"first build (--jobs 2):          {first_seconds:8.2f} s")
    print(f"no-op rebuild, library call:     {noop_library:8.3f} s  (best of 3)")
    print(f"no-op rebuild, `mm build --all`: {noop_cli:8.3f} s  (best of 3, whole process)")
    print(f"  of which `mm --version` start: {startup:8.3f} s")
    print(f"no-op / first build ratio:       {noop_library / first_seconds:8.4f}")
    print(f"target < 1 s for the whole process: {'met' if noop_cli < 1 else 'NOT met'}")


def _timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
