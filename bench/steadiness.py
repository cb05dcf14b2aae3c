"""How steady this machine's own speed is over minutes: a fixed workload timed at intervals.

A calibration (`mm hw --measure`) can only be as repeatable as the machine it runs on. This times the same two
probes every few seconds: one core's speed (a fixed pure-Python loop) and RAM bandwidth (a 256 MiB numpy copy),
each the best of 3, and prints each sample against the first and the range at the end. On a dedicated machine
both stay within a few percent; on a VM whose cores are shared with other tenants the loop can move by tens of
percent from one sample to the next, and two calibrations a minute apart then differ by as much.

Run: .venv/bin/python bench/steadiness.py [--minutes 5] [--every 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

LOOP_ITERATIONS = 2_000_000
COPY_BYTES = 256 << 20
TRIES = 3  # each probe's best of this many: a sample measures the machine's speed, not one preemption


def loop_seconds() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(LOOP_ITERATIONS):
        total += i
    return time.perf_counter() - started


def copy_seconds(source: np.ndarray, target: np.ndarray) -> float:
    started = time.perf_counter()
    np.copyto(target, source)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    source = np.ones(COPY_BYTES // 8, dtype=np.float64)
    target = np.empty_like(source)
    first_loop, speeds, bandwidths = 0.0, [], []
    started = time.monotonic()
    while time.monotonic() - started < args.minutes * 60:
        loop = min(loop_seconds() for _ in range(TRIES))
        copy = min(copy_seconds(source, target) for _ in range(TRIES))
        first_loop = first_loop or loop
        speeds.append(first_loop / loop)
        bandwidths.append(2 * COPY_BYTES / copy / 1e9)  # read and written
        at = time.monotonic() - started
        print(f"{at:6.0f}s  core {speeds[-1]:5.2f}x  RAM copy {bandwidths[-1]:5.1f} GB/s", flush=True)
        time.sleep(args.every)
    print(f"\n{len(speeds)} samples: core {min(speeds):.2f}x-{max(speeds):.2f}x of the first "
          f"(max/min {max(speeds) / min(speeds):.2f}); RAM copy {min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s "
          f"(max/min {max(bandwidths) / min(bandwidths):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
