"""Registry costs on one ~256 MiB model: publish (a copy, reflinked where the filesystem can), re-publish,
and the cheap pre-run blob check vs a full re-hash (`mm run` vs `mm run --verify`).

Run: .venv/bin/python bench/registry.py
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SPEC = {"n_layers": 4, "n_embd": 1024, "n_ff": 4096}


def timed(action: Callable[[], object], repeat: int = 1) -> float:
    """Best of `repeat` wall times, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mm-bench-registry-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        os.environ["MM_HOME"] = str(root / "home")
        from pipeline.fitting.fit import fit_model
        from pipeline.gguf.tiny_model import write_tiny_model
        from pipeline.gguf.tiny_tensors import TinySpec
        from pipeline.registry import store as registry
        from pipeline.registry.blobs import check_blob
        from pipeline.spec.hardware import get_hardware

        hardware = get_hardware("cpu-64g")
        model = write_tiny_model(root / "model.gguf", TinySpec(**SPEC))  # type: ignore[arg-type]
        size_mib = model.stat().st_size / (1 << 20)
        fit = fit_model(model, hardware)

        copy_s = timed(lambda: registry.publish(model, hardware, fit, name="linked"))
        again_s = timed(lambda: registry.publish(model, hardware, fit, name="linked"), repeat=3)

        profile = registry.get_profile("linked")
        cheap_s = timed(lambda: check_blob(profile), repeat=5)
        full_s = timed(lambda: check_blob(profile, full=True), repeat=3)

        print(f"model: {size_mib:.0f} MiB")
        print(f"publish, copy (or reflink) + hash:   {copy_s:8.3f} s")
        print(f"re-publish (blob intact, cached):    {again_s:8.3f} s   first/again = {copy_s / again_s:5.1f}x")
        print(f"pre-run check, cheap (size + stat):  {cheap_s * 1e3:8.3f} ms")
        print(f"pre-run check, full re-hash:         {full_s * 1e3:8.1f} ms  full/cheap = {full_s / cheap_s:,.0f}x")
        print(f"full re-hash throughput:             {size_mib / full_s:8.0f} MiB/s")


if __name__ == "__main__":
    main()
