"""`mm run --server` under a bounded mixed load: valid and hostile bodies, many clients at once, on loopback.

Run: .venv/bin/python bench/server_load.py [--requests 200] [--concurrency 20]
Prints the answers by status, transport errors (no HTTP answer: the server died or hung), the server's peak
RSS before and after the load, the wall time, and whether it still answers a plain completion afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.fitting.fit import fit_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.registry.store import publish
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.served import hammer, mixed_bodies, request, running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-", dir="/tmp") as folder:
        os.environ["MM_HOME"] = str(Path(folder) / "home")
        model = write_tiny_model(Path(folder) / "tiny.gguf", TinySpec())
        cpu = get_hardware("cpu-64g")
        publish(model, cpu, fit_model(model, cpu, RunSettings(n_ctx=512)), name="load")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        with running("load", env) as server:
            idle_rss = server.peak_rss_bytes()
            started = time.perf_counter()
            answers = hammer(server.port, mixed_bodies(args.requests), args.concurrency)
            seconds = time.perf_counter() - started
            after = request(server.port, "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 4}).encode())
            peak_rss = server.peak_rss_bytes()
    statuses = collections.Counter(answer.status for answer in answers)
    print(f"requests {len(answers)}, concurrency {args.concurrency}, {seconds:.1f} s")
    print("answers by status: " + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items())))
    failed = sum(n for status, n in statuses.items() if status >= 500)
    print(f"transport errors (no HTTP answer): {statuses.get(0, 0)}; 5xx: {failed}")
    print(f"peak RSS: {idle_rss / 2**20:.0f} MiB after loading, {peak_rss / 2**20:.0f} MiB after the load")
    print(f"still answering afterwards: {after.status == 200}")
    return 0 if after.status == 200 and statuses.get(0, 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
