"""mm bench against llama-bench, and mm eval against llama-perplexity, on the same model, side by side.

    .venv/bin/python bench/measure.py [--model M.gguf] [--ref REF.gguf] [--text T.txt] [--threads 1]
                                      [--reps 5] [--ctx 128] [--chunks 8]

Without --model, writes a compute-heavy factory model (2 layers, width 1024, 32k vocabulary) in F16 and
its Q4_K_M quant into /tmp. Speed: `pipeline.measure.bench.run_bench` (pp512, tg128) and the `llama-bench` binary
(`mm llama build`) with the same threads and repetitions; prints both tokens/s and the difference. Quality:
`pipeline.measure.evaluate.evaluate` and `llama-perplexity --kl-divergence-base` then `--kl-divergence` (one
chunk per batch: -b = -c) on the same text; prints PPL, KLD and same-top figures of both, their relative
difference (target <= 1%), and the wall-time ratio mm / llama.cpp.

    .venv/bin/python bench/measure.py --predict [--calibrations 2] [--threads 1] [--gen 64] [--reps 5]
                                      [--models DIR]

Decode prediction against measurement, on a held-back set of shapes (bench/speed_set.py: models the
calibration was not tuned on: a 262k-vocabulary tied-embedding SWA model, a 576-wide model with legacy
types and fallbacks, a mixture of experts, a recurrent model, beside the compute-heavy llama above).
Runs `mm hw --measure` (measure_machine) --calibrations times, predicts every model from each calibration
(fit_model, with its ±), then `mm bench`s every model (run_bench, tg only) and prints predicted and measured
side by side: the prediction of each calibration and their largest difference (target < 5%), and the error
against the steady and the per-run median figures (target within 20%), with the machine's load average.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.gguf.tiny_model import _WORDS, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.tools import require_llama_tool
from pipeline.measure.bench import run_bench
from pipeline.measure.evaluate import evaluate


def _models(folder: Path) -> tuple[Path, Path]:
    import llama_cpp

    ref = write_tiny_model(folder / "bench-f16.gguf", TinySpec(n_embd=1024, n_head=8, n_head_kv=4, n_ff=2816,
                                                              n_vocab=32000, dtype="f16"))  # fmt: skip
    quant = folder / "bench-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(ref).encode(), str(quant).encode(), ctypes.byref(params)) == 0
    return quant, ref


def _text(path: Path, words: int = 12000) -> Path:
    import random

    rng = random.Random(1)
    path.write_text(" ".join(rng.choice(_WORDS) for _ in range(words)) + "\n")
    return path


def bench_side_by_side(model: Path, threads: int, reps: int) -> None:
    started = time.perf_counter()
    ours = run_bench({"model_path": str(model), "n_threads": threads, "n_ctx": 640}, repetitions=reps)
    ours_s = time.perf_counter() - started
    tool = require_llama_tool("llama-bench")
    started = time.perf_counter()
    out = subprocess.run([str(tool), "-m", str(model), "-t", str(threads), "-r", str(reps), "-fa", "0", "-o", "json"],
                         check=True, capture_output=True, text=True)  # fmt: skip
    theirs_s = time.perf_counter() - started
    tests = {("pp" if t["n_gen"] == 0 else "tg"): t for t in json.loads(out.stdout)}
    print(f"speed, {model.name}, {threads} thread(s), {reps} runs (mm: median; llama-bench: mean ± stdev)")
    for name, figure in (("pp", ours.pp), ("tg", ours.tg)):
        assert figure is not None
        t = tests[name]
        diff = (figure.median_ts - t["avg_ts"]) / t["avg_ts"]
        print(f"  {figure.test:6} mm {figure.median_ts:9.2f} tok/s (min {figure.min_ts:.2f}, max {figure.max_ts:.2f})"
              f"   llama-bench {t['avg_ts']:9.2f} ± {t['stddev_ts']:.2f}   difference {diff:+.1%}")  # fmt: skip
    print(f"  wall time: mm {ours_s:.1f}s, llama-bench {theirs_s:.1f}s (ratio {ours_s / theirs_s:.2f})")


def eval_side_by_side(model: Path, ref: Path, text: Path, ctx: int, chunks: int, threads: int) -> None:
    started = time.perf_counter()
    ours = evaluate(model, ref, text, text=str(text), text_sha256="-", n_ctx=ctx, chunks=chunks, threads=threads)
    ours_s = time.perf_counter() - started
    tool = str(require_llama_tool("llama-perplexity"))
    with tempfile.TemporaryDirectory() as folder:
        common = ["-f", str(text), "-c", str(ctx), "-b", str(ctx), "--chunks", str(chunks), "-t", str(threads),
                  "--kl-divergence-base", str(Path(folder) / "base.kld")]  # fmt: skip
        started = time.perf_counter()
        subprocess.run([tool, "-m", str(ref), *common], check=True, capture_output=True)
        for _ in range(3):  # llama.cpp's asynchronous logger sometimes loses its last lines at exit
            out = subprocess.run([tool, "-m", str(model), *common, "--kl-divergence"], check=True, capture_output=True,
                                 text=True)  # fmt: skip
            if "Same top p:" in out.stdout + out.stderr:
                break
        theirs_s = time.perf_counter() - started
    text_out = out.stdout + out.stderr
    grab = {"PPL(Q)": r"Mean PPL\(Q\)\s*:\s*([\d.]+)", "PPL(base)": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
            "mean KLD": r"Mean\s+KLD:\s*([\d.]+)", "same top %": r"Same top p:\s*([\d.]+)"}  # fmt: skip
    theirs = {k: float(m[1]) for k, p in grab.items() if (m := re.search(p, text_out))}
    mine = {"PPL(Q)": ours.ppl, "PPL(base)": ours.ppl_ref, "mean KLD": ours.kld_mean,
            "same top %": 100 * ours.same_top_rate}  # fmt: skip
    print(f"quality, {model.name} against {ref.name}, {ours.chunks} chunks of {ctx} ({ours.tokens_scored} tokens)")
    for key, value in mine.items():
        other = theirs.get(key)
        diff = f"{(value - other) / other:+.3%}" if other else "-"
        print(f"  {key:11} mm {value:12.6f}   llama-perplexity {other if other is not None else '-':>12}   {diff}")
    print(f"  wall time: mm {ours_s:.1f}s, llama-perplexity (base + kld runs) {theirs_s:.1f}s "
          f"(ratio {ours_s / theirs_s:.2f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", action="store_true", help="prediction vs measurement on the held-back set")
    parser.add_argument("--calibrations", type=int, default=2)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "mm-speed-set")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--ref", type=Path)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    if args.predict:
        from bench.speed_set import predict_side_by_side

        predict_side_by_side(args.models, args.threads, args.calibrations, args.gen, args.reps)
        return
    with tempfile.TemporaryDirectory(prefix="mm-bench-measure-") as folder:
        model, ref = (args.model, args.ref) if args.model else _models(Path(folder))
        bench_side_by_side(model, args.threads, args.reps)
        if ref is not None:
            text = args.text or _text(Path(folder) / "text.txt")
            eval_side_by_side(model, ref, text, args.ctx, args.chunks, args.threads)


if __name__ == "__main__":
    main()
