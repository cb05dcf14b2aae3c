"""CPU decode of real-size shapes on this machine: `mm fit`'s prediction against llama-bench, no download.

    PYTHONPATH=. .venv/bin/python bench/real_shapes.py [--threads 2] [--hardware NAME] [--gen 16] [--reps 3]

bench/measure.py holds predictions to measurements on small factory models; a user runs 7B-30B files. This
writes header-only GGUFs of published shapes (bench/gpu_public.py's header_only: LLaMA-2 7B Q4_0 and Q8_0, Llama-3-8B
Q4_K_M, gpt-oss-20b MXFP4, Qwen3-30B-A3B Q4_K_M) whose data region is a sparse hole, so every weight reads as
zero: llama.cpp's kernels take as long on zeros, and the file costs no disk. The one difference from a real
model: zero router logits send every token to the same experts (the bytes read per token are the same).
Each file is predicted on this machine (`mm hw --measure` now, or a saved class with --hardware) and decoded by
llama-bench (tg, the same threads), interleaved with the next file; prints both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from bench.gpu_public import header_only
from pipeline.fitting.fit import fit_shape
from pipeline.fitting.model_shape import model_shape
from pipeline.gguf.header import read_model
from pipeline.llama.tools import require_llama_tool
from pipeline.measure.machine import measure_machine
from pipeline.spec.hardware import HardwareClass, get_hardware
from pipeline.spec.run_settings import RunSettings

FILES = ("llama2-7b-q4_0", "llama2-7b-q8_0", "llama3-8b-q4_k_m", "gpt-oss-20b-mxfp4", "qwen3-30b-a3b-q4_k_m")


def decode_ts(tool: Path, model: Path, threads: int, gen: int, reps: int) -> float:
    """llama-bench's tg figure (mean of `reps` runs of `gen` tokens)."""
    argv = [str(tool), "-m", str(model), "-p", "0", "-n", str(gen), "-r", str(reps), "-t", str(threads), "-o", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=1200).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hardware", help="a saved measured class (default: measure this machine now)")
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    hardware: HardwareClass = get_hardware(args.hardware) if args.hardware else measure_machine(threads=[args.threads])
    tool = require_llama_tool("llama-bench")
    settings = RunSettings(n_ctx=4096, n_threads=args.threads)
    print(f"threads {args.threads}, class {hardware.name}: {hardware.measured or 'not measured'}\n")
    print("| file | GB read per token | predicted tok/s | llama-bench tok/s | predicted / measured |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="mm-real-shapes-") as folder:
        for name in FILES:
            path = header_only(Path(folder), name)
            shape = model_shape(read_model(path))
            predicted = fit_shape(shape, path, hardware, settings, suggest=False)
            measured = decode_ts(tool, path, args.threads, args.gen, args.reps)
            read = (predicted.cpu_read_bytes + predicted.gpu_read_bytes) / 1e9
            print(f"| {name} | {read:.2f} | {predicted.tokens_per_second:g} | {measured:.2f} | "
                  f"{predicted.tokens_per_second / measured:.2f} |")  # fmt: skip
            path.unlink()


if __name__ == "__main__":
    main()
