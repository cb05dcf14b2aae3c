"""What `mm push` costs against the local test Hub: first push, re-push, resume after kill -9, three pushers.

Counts come from the server's own log (requests, object PUTs, body bytes received, commits, 412s), not
from mm. Run: .venv/bin/python bench/push.py [SIZE_MIB]  (the big model's size, default 256)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = "bench/push-GGUF"


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory(prefix="mm-bench-push-") as tmp:
        root = Path(tmp)
        os.environ["MM_HOME"] = str(root / "home")
        from pipeline.fitting.fit import fit_model
        from pipeline.gguf.tiny_model import write_tiny_model
        from pipeline.gguf.tiny_tensors import TinySpec
        from pipeline.registry.push import push
        from pipeline.registry.store import publish
        from pipeline.spec.hardware import get_hardware
        from tests.hub import VALID_TOKEN, LocalHub

        hub = LocalHub().start()
        os.environ["HF_ENDPOINT"] = hub.url
        n_embd = 1024
        n_layers = max(1, size_mib * 1024 * 1024 // (2 * 12 * n_embd * n_embd))  # f16, ~12 n_embd² per layer
        big = write_tiny_model(
            root / "big.gguf", TinySpec(n_layers=n_layers, n_embd=n_embd, n_ff=4 * n_embd, dtype="f16")
        )
        small = write_tiny_model(root / "small.gguf", TinySpec(n_layers=1, n_embd=256, n_ff=256, seed=7))
        cpu = get_hardware("cpu-64g")
        for path, name in ((big, "big"), (small, "small")):
            publish(path, cpu, fit_model(path, cpu), name=name)
        print(f"models: big {big.stat().st_size / 2**20:.1f} MiB, small {small.stat().st_size / 2**20:.2f} MiB")

        def measure(label: str, run: object) -> None:
            hub.clear_log()
            puts, commits, conflicts = len(hub.uploads.puts), len(hub.uploads.commits), hub.uploads.conflicts
            started = time.perf_counter()
            run()  # type: ignore[operator]
            seconds = time.perf_counter() - started
            sent = hub.uploads.puts[puts:]
            print(
                f"{label:<34} {seconds:7.2f} s  requests {len(hub.requests):3d}  object PUTs {len(sent)}  "
                f"bytes {sum(p.bytes_received for p in sent):>11,}  commits {len(hub.uploads.commits) - commits}  "
                f"412s {hub.uploads.conflicts - conflicts}"
            )

        measure("first push (big + small)", lambda: push(["big", "small"], REPO, token=VALID_TOKEN))
        measure("re-push, nothing changed", lambda: push(["big", "small"], REPO, token=VALID_TOKEN))

        # kill -9 while the big object is half sent, into a fresh repo; then resume.
        other = REPO + "-resume"
        big_oid = hashlib.sha256(big.read_bytes()).hexdigest()
        hub.uploads.slow_oids[big_oid] = 20 * 2**20  # 20 MiB/s on the server side
        hub.uploads.receiving.pop(big_oid, None)
        env = {**os.environ, "HF_TOKEN": VALID_TOKEN}
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "push", "big", "small", "--repo", other, "-q"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while hub.uploads.receiving.get(big_oid, 0) < big.stat().st_size // 2 and child.poll() is None:
            time.sleep(0.01)
        received = hub.uploads.receiving.get(big_oid, 0)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        while not any(p.oid == big_oid and not p.stored for p in hub.uploads.puts):  # the server saw it go
            time.sleep(0.01)
        received = next(p.bytes_received for p in hub.uploads.puts if p.oid == big_oid and not p.stored)
        stored = [p.oid[:12] for p in hub.uploads.puts if p.stored and p.repo == other]
        del hub.uploads.slow_oids[big_oid]
        print(f"killed push after {received:,} of {big.stat().st_size:,} bytes of the big object; stored: {stored}")
        measure("resumed push after kill -9", lambda: push(["big", "small"], other, token=VALID_TOKEN))

        # Three pushers into one repo, one profile each, all committing against the same parent.
        from tests.hub_upload import hold_first_commits

        names = []
        for i in range(3):
            model = write_tiny_model(root / f"s{i}.gguf", TinySpec(n_layers=1, n_embd=256, n_ff=256, seed=100 + i))
            names.append(publish(model, cpu, fit_model(model, cpu), name=f"shard-{i}").name)
        hold_first_commits(hub, 3)
        shared = REPO + "-fleet"

        def three() -> None:
            with ThreadPoolExecutor(3) as pool:
                reports = list(pool.map(lambda n: push([n], shared, token=VALID_TOKEN), names))
            print("  attempts per pusher:", [r.attempts for r in reports])

        measure("three concurrent pushers", three)
        hub.stop()


if __name__ == "__main__":
    main()
