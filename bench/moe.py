"""Mixture-of-experts fit: CPU memory error against llama.cpp per architecture (tiny models, loaded on the
CPU), and the predicted placement and decode speed of real-size shapes on a 12 GB and a 24 GB card.

Run: .venv/bin/python bench/moe.py   (from the repository root; ~1 min)
"""

from __future__ import annotations

import ctypes
import itertools
import tempfile
from pathlib import Path

import llama_cpp

from pipeline.fitting.fit import fit_model
from pipeline.gguf.tiny_model import write_header_only_model, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.hardware import HardwareClass, get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.test_fit import ARCHS, CPU, MIB, _capture, llama_buffers
from tests.test_placement import DENSE_70B, GPT_OSS_120B, QWEN3_30B_A3B

GRID = list(itertools.product((512, 4096, 32768), ("f16", "q8_0"), (False, True), (512, 128), (1, 4)))
# Real-size shapes of the same architectures (header only: the data region is a sparse hole).
MIXTRAL_8X7B = TinySpec(n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32000, n_expert=8,
                        n_expert_used=2, context_length=32768)  # fmt: skip
DEEPSEEK_V2_LITE = TinySpec(
    arch="deepseek2", n_layers=27, n_embd=2048, n_head=16, n_ff=10944, n_vocab=102400, n_expert=64, n_expert_used=6,
    n_ff_exp=1408, n_expert_shared=2, n_dense_lead=1, q_lora_rank=1536, kv_lora_rank=512, qk_rope_dim=64,
    qk_nope_dim=128, v_head_dim=128, context_length=163840,
)  # fmt: skip
GLM_45_AIR = TinySpec(
    arch="glm4moe", n_layers=46, n_embd=4096, n_head=96, n_head_kv=8, head_dim_override=128, n_ff=10944,
    n_vocab=151552, n_expert=128, n_expert_used=8, n_ff_exp=1408, n_expert_shared=1, n_dense_lead=1, n_nextn=1,
    context_length=131072,
)  # fmt: skip
BIG = {
    "glm4moe": GLM_45_AIR,
    "qwen3moe": QWEN3_30B_A3B,
    "gpt-oss": GPT_OSS_120B,
    "mixtral": MIXTRAL_8X7B,
    "deepseek2": DEEPSEEK_V2_LITE,
    "llama": DENSE_70B,
}
BIG_NAMES = {
    "glm4moe": "GLM-4.5-Air Q4_K_M",
    "qwen3moe": "Qwen3-30B-A3B Q4_K_M",
    "gpt-oss": "gpt-oss-120b MXFP4",
    "mixtral": "Mixtral-8x7B Q4_K_M",
    "deepseek2": "DeepSeek-V2-Lite Q4_K_M*",
    "llama": "Llama-2-70B Q4_K_M (dense)",
}


def memory_errors(path: Path, mmap: bool) -> tuple[float, float]:
    """(worst total error %, worst compute error MiB) over the grid, against llama.cpp's own buffers."""
    worst_total = worst_compute = 0.0
    for ctx, kv, flash, ubatch, parallel in GRID:
        auto = kv != "f16" and not flash  # flash_attn not given: llama.cpp's auto mode turns it on
        settings = RunSettings(n_ctx=ctx, kv_type=kv, n_ubatch=ubatch, parallel=parallel, use_mmap=mmap,  # type: ignore[arg-type]
                               **({} if auto else {"flash_attn": flash}))  # fmt: skip
        truth = llama_buffers(path, settings, 1 if flash else (-1 if kv != "f16" else 0))
        assert truth is not None
        cpu = fit_model(path, CPU, settings).cpu
        predicted = (cpu.weights_bytes + cpu.kv_bytes + cpu.output_bytes + cpu.compute_bytes) / MIB
        want = sum(truth.values())
        worst_total = max(worst_total, abs(predicted - want) / want * 100, key=abs)
        worst_compute = max(worst_compute, abs(cpu.compute_bytes / MIB - truth["compute"]))
    return worst_total, worst_compute


def speed(path: Path, hardware: HardwareClass) -> str:
    result = fit_model(path, hardware, RunSettings(n_ctx=8192))
    layers = next((a for a in result.alternatives if a.n_cpu_moe == 0), None)
    placed = f"ngl {result.n_gpu_layers}" + (f", n-cpu-moe {result.n_cpu_moe}" if result.n_cpu_moe else "")
    beside = f" (layers only {layers.tokens_per_second:g})" if layers and result.n_cpu_moe else ""
    return f"{result.tokens_per_second:g} tok/s, {placed}{beside}"


def main() -> None:
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    small, big = get_hardware("rtx3060-12g"), get_hardware("rtx4090-24g")
    print(
        "| architecture | worst CPU total error vs llama.cpp (48 settings) | worst compute error | real-size shape "
        "| rtx3060-12g, ctx 8192 | rtx4090-24g, ctx 8192 |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mm-bench-moe-") as tmp:
        for arch in ("qwen3moe", "mixtral", "gpt-oss", "deepseek2", "glm4moe", "llama"):
            tiny = write_tiny_model(Path(tmp) / f"{arch}.gguf", ARCHS[arch])
            total, compute = memory_errors(tiny, mmap=not ARCHS[arch].n_nextn)  # as tests/test_fit.py
            header = write_header_only_model(Path(tmp) / f"{arch}-big.gguf", BIG[arch])
            size = f"{header.stat().st_size / 1e9:.1f} GB"
            print(f"| {arch} | {total:+.2f}% | {compute:.2f} MiB | {BIG_NAMES[arch]} ({size}) "
                  f"| {speed(header, small)} | {speed(header, big)} |")  # fmt: skip
    print("\n* DeepSeek-V2-Lite has a full-rank q projection; the shape here has a low-rank one (same size class).")


if __name__ == "__main__":
    main()
