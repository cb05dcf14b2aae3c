"""mm quantize's wall time against calling llama.cpp directly on the same input, side by side.

    .venv/bin/python bench/quantize.py [--type q4_k_m] [--rounds 3] [--layers 6] [--embd 1536]

Writes an F16 llama-architecture model of a few hundred MB with the tiny-model factory into /tmp, then in
alternating rounds times (1) `pipeline.llama.quantize.quantize` (dry-run checks, child process, output check,
sha256 of the output, provenance record), (2) `llama_cpp.llama_model_quantize` in this process, and (3)
the `llama-quantize` binary when one is found (LLAMA_QUANTIZE, PATH or `mm llama build`). Prints each
median and mm's ratio to each direct call (target <= 1.05). The source's sha256 is computed once up
front, as `mm pull` would have recorded it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama_cpp

from pipeline.base.digest import file_sha256
from pipeline.base.home import mm_home
from pipeline.base.provenance import QuantParams
from pipeline.gguf.quant_types import parse_quant_type
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.engines import find_llama_quantize
from pipeline.llama.quantize import QuantizeRequest, quantize


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Direct calls drop llama.cpp's log (mm writes it to a file, a small cost counted against mm)."""


def time_mm(source: Path, out: Path, qtype: str) -> float:
    started = time.perf_counter()
    quantize(QuantizeRequest(source=source, params=QuantParams(type=qtype), output=out))
    return time.perf_counter() - started


def time_api(source: Path, out: Path, qtype: str) -> float:
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = parse_quant_type(qtype).ftype
    started = time.perf_counter()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    elapsed = time.perf_counter() - started
    assert status == 0, "llama_model_quantize failed"
    return elapsed


def time_binary(binary: Path, source: Path, out: Path, qtype: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(binary), str(source), str(out), qtype.upper()], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="q4_k_m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--embd", type=int, default=1536)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mm-bench-quantize-"))
    os.environ.setdefault("MM_HOME", str(work / "home"))
    spec = TinySpec(n_layers=args.layers, n_embd=args.embd, n_ff=args.embd * 8 // 3 // 256 * 256, dtype="f16")
    source = write_tiny_model(work / "bench-f16.gguf", spec)
    file_sha256(mm_home(), source)  # as `mm pull` records it; mm never re-hashes a verified source
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    binary = find_llama_quantize()
    print(f"source: {source.stat().st_size / 2**20:.0f} MiB F16, {args.layers} layers, n_embd {args.embd}")
    print(f"target: {args.type}; rounds: {args.rounds}; binary: {binary or 'none (mm llama build)'}")

    times: dict[str, list[float]] = {"mm": [], "api": [], "binary": []}
    for _ in range(args.rounds):
        for name in times:
            out = work / f"out-{name}.gguf"
            if name == "mm":
                times[name].append(time_mm(source, out, args.type))
            elif name == "api":
                times[name].append(time_api(source, out, args.type))
            elif binary is not None:
                times[name].append(time_binary(binary, source, out, args.type))
            for leftover in (out, out.with_name(out.name + ".mm.json")):
                leftover.unlink(missing_ok=True)

    # The minimum is the least disturbed run on a shared machine; the median is shown beside it.
    best = {name: min(values) for name, values in times.items() if values}
    for name, values in times.items():
        if values:
            runs = ", ".join(f"{v:.3f}" for v in values)
            print(f"{name:>7}: best {best[name]:7.3f} s  median {statistics.median(values):7.3f} s  (runs: {runs})")
    for name in ("api", "binary"):
        if name in best:
            ratio = best["mm"] / best[name]
            median = statistics.median(times["mm"]) / statistics.median(times[name])
            print(f"ratio mm / {name}: {ratio:.3f} best, {median:.3f} median  (target <= 1.05)")
    source.unlink()


if __name__ == "__main__":
    main()
