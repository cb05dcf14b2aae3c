"""The held-back set for decode prediction: model shapes, made once, predicted from each calibration and benched.

Random weights (speed does not depend on the values); each model is written by the tiny-model factory in
F16 at a real model's shape and quantized by llama.cpp, as a user's file would be. Used by
`bench/measure.py --predict`.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.fitting.fit import FitResult, fit_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.measure.bench import run_bench
from pipeline.measure.machine import measure_machine
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings


@dataclass(frozen=True)
class Case:
    name: str
    spec: TinySpec
    ftype: int  # llama_ftype (llama.h) of the quantized file
    why: str


LLAMA_1024 = TinySpec(n_embd=1024, n_head=8, n_head_kv=4, n_ff=2816, n_vocab=32000, dtype="f16")
SMOLLM2_135M = TinySpec(n_layers=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, n_vocab=49152, tie_embeddings=True,
                        dtype="f16")  # fmt: skip
SET = (
    Case("llama-1024x2 Q4_K_M", LLAMA_1024, 15, "compute-heavy, the calibration's own kind"),
    Case("llama-1024x2 F16", LLAMA_1024, 1, "float weights"),
    Case(
        "qwen3-768x8 Q8_0",
        TinySpec(arch="qwen3", n_layers=8, n_embd=768, n_head=12, n_head_kv=4, n_ff=2048, n_vocab=32000, dtype="f16"),
        7,
        "q/k norms, 8 layers",
    ),
    Case(
        "gemma3-270m-like Q4_K_M",
        TinySpec(
            arch="gemma3",
            n_layers=18,
            n_embd=640,
            n_head=4,
            n_head_kv=1,
            head_dim_override=256,
            n_ff=2048,
            n_vocab=262144,
            sliding_window=512,
            swa_pattern=6,
            context_length=32768,
            dtype="f16",
        ),
        15,
        "262k vocabulary, tied embeddings (a 168M-weight head every token), sliding-window layers",
    ),
    Case("smollm2-135m-like Q4_1", SMOLLM2_135M, 3, "576 wide, 30 layers, tied: a legacy type"),
    Case("smollm2-135m-like Q4_K_M", SMOLLM2_135M, 15, "576 wide: k-quants fall back to Q5_0/Q8_0"),
    Case(
        "qwen3moe-512x8 Q4_K_M",
        TinySpec(
            arch="qwen3moe",
            n_layers=8,
            n_embd=512,
            n_head=8,
            n_head_kv=4,
            n_ff=1024,
            n_expert=32,
            n_expert_used=4,
            n_ff_exp=512,
            n_vocab=32000,
            dtype="f16",
        ),
        15,
        "mixture of experts, 4 of 32 routed per token",
    ),
    Case(
        "mamba-768x12 Q8_0",
        TinySpec(arch="mamba", n_layers=12, n_embd=768, n_vocab=32000, dtype="f16"),
        7,
        "recurrent (state-space), no attention",
    ),
)


def model_file(case: Case, folder: Path) -> Path:
    """The case's quantized file in `folder`, made once (F16 source, then llama.cpp's quantize)."""
    import llama_cpp

    slug = case.name.lower().replace(" ", "-")
    target = folder / f"{slug}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{slug}.f16.tmp.gguf"
    write_tiny_model(source, case.spec)
    partial = folder / f"{slug}.tmp.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = case.ftype
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) == 0
    source.unlink()
    os.replace(partial, target)
    return target


def _predict(path: Path, hardware: HardwareClass, threads: int, n_ctx: int) -> FitResult:
    return fit_model(path, hardware, RunSettings(n_ctx=n_ctx, n_threads=threads))


def predict_side_by_side(folder: Path, threads: int, calibrations: int, n_gen: int, reps: int) -> None:
    started = time.perf_counter()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    paths = {case.name: model_file(case, folder) for case in SET}
    classes = []
    for index in range(calibrations):
        begin = time.perf_counter()
        classes.append(measure_machine(threads=[threads]))
        rates = classes[-1].rates_for(threads)
        assert rates is not None
        spreads = list(rates.spread.values())
        print(f"calibration {index + 1}: {time.perf_counter() - begin:.0f}s, RAM {rates.ram_bandwidth_gbps} GB/s "
              f"± {rates.ram_bandwidth_spread:.0%}, rates spread {statistics.median(spreads):.1%} median "
              f"{max(spreads):.1%} widest, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    n_ctx = 512
    predicted = {name: [_predict(path, c, threads, n_ctx) for c in classes] for name, path in paths.items()}
    header = "  ".join(f"cal {i + 1:<12}" for i in range(calibrations))
    print(
        f"\ndecode, {threads} thread(s), tg{n_gen} x {reps} runs (predicted ± spread of the rates; "
        "measured: steady = median token, run = median run's wall time)"
    )
    print(f"{'model':26} {header}  {'cal diff':>8}  {'steady':>7}  {'run (min-max)':>21}  {'err steady':>10}  "
          f"{'err run':>7}")  # fmt: skip
    worst_diff = worst_err = 0.0
    for case in SET:
        fits = predicted[case.name]
        result = run_bench({"model_path": str(paths[case.name]), "n_threads": threads, "n_ctx": n_ctx},
                           n_prompt=0, n_gen=n_gen, repetitions=reps)  # fmt: skip
        tg = result.tg
        assert tg is not None and tg.steady_ts is not None
        values = [f.tokens_per_second for f in fits]
        diff = (max(values) - min(values)) / min(values)
        err_steady = (values[-1] - tg.steady_ts) / tg.steady_ts
        err_run = (values[-1] - tg.median_ts) / tg.median_ts
        worst_diff, worst_err = max(worst_diff, diff), max(worst_err, abs(err_steady))
        cells = "  ".join(f"{f.tokens_per_second:6.1f} ± {f.tokens_per_second_spread:<4.1f}" for f in fits)
        run = f"{tg.median_ts:.1f} ({tg.min_ts:.1f}-{tg.max_ts:.1f})"
        print(f"{case.name:26} {cells}  {diff:8.1%}  {tg.steady_ts:7.1f}  {run:>21}  {err_steady:+10.1%}  "
              f"{err_run:+7.1%}   {case.why}")  # fmt: skip
    load = os.getloadavg()
    print(f"\nlargest difference between calibrations {worst_diff:.1%} (target < 5%); largest error against the "
          f"steady figure {worst_err:.1%} (target <= 20%); load average at end {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {time.perf_counter() - started:.0f}s")  # fmt: skip
