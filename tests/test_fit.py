"""The memory model against llama.cpp itself: load each tiny model on the CPU with the same settings and
compare mm's prediction with the buffer sizes llama.cpp logs (model, KV, output, compute)."""

from __future__ import annotations

import ctypes
import itertools
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from pipeline.base.errors import UsageError
from pipeline.fitting.fit import fit_model
from pipeline.gguf.tiny_model import write_header_only_model, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.hardware import HardwareClass, get_hardware
from pipeline.spec.run_settings import RunSettings, run_settings

MIB = 1 << 20
ARCHS = {
    "llama": TinySpec(n_vocab=4096, dtype="f16"),  # GQA 4/2
    "gemma3": TinySpec(arch="gemma3", n_layers=6, n_head=4, n_head_kv=1, head_dim_override=128, n_vocab=2048),
    "qwen3": TinySpec(arch="qwen3", n_head=8, n_head_kv=2, head_dim_override=64, n_ff=1024, dtype="f16"),
    "mamba": TinySpec(arch="mamba", n_embd=512, n_vocab=4096, ssm_state_size=32, dtype="f16"),  # recurrent
    # Mixtures of experts: routed experts narrower than the dense n_ff (qwen3moe), Mixtral-shaped llama
    # (experts n_ff wide), gpt-oss (expert biases, attention sinks, every other layer a sliding window).
    "qwen3moe": TinySpec(
        arch="qwen3moe",
        n_head=8,
        n_head_kv=2,
        head_dim_override=64,
        n_ff=1024,
        n_expert=8,
        n_expert_used=2,
        n_ff_exp=256,
        dtype="f16",
    ),
    "mixtral": TinySpec(n_vocab=1024, n_expert=4, n_expert_used=2, dtype="f16"),
    # Multi-head latent attention (a K-only cache of the compressed latent), a shared expert, a dense layer 0,
    # and a multi-token-prediction block (GLM-4.5 style) that llama.cpp leaves unloaded
    "deepseek2": TinySpec(
        arch="deepseek2",
        n_layers=3,
        n_ff=512,
        n_expert=8,
        n_expert_used=2,
        n_ff_exp=128,
        n_expert_shared=1,
        n_dense_lead=1,
        n_nextn=1,
        dtype="f16",
    ),
    # GLM-4.5-style: biased attention, router selection bias, a shared expert, a dense layer 0, an MTP block
    "glm4moe": TinySpec(
        arch="glm4moe",
        n_layers=3,
        n_head=8,
        n_head_kv=2,
        head_dim_override=64,
        n_ff=512,
        n_expert=8,
        n_expert_used=2,
        n_ff_exp=128,
        n_expert_shared=1,
        n_dense_lead=1,
        n_nextn=1,
        dtype="f16",
    ),
    "gpt-oss": TinySpec(
        arch="gpt-oss",
        n_layers=4,
        n_head=8,
        n_head_kv=2,
        head_dim_override=64,
        n_expert=8,
        n_expert_used=4,
        n_ff_exp=256,
        sliding_window=128,
        dtype="f16",
    ),
}
ATTENTION_ARCHS = ("llama", "gemma3", "qwen3", "qwen3moe", "mixtral", "gpt-oss", "deepseek2", "glm4moe")
MOE_ARCHS = ("qwen3moe", "mixtral", "gpt-oss", "deepseek2", "glm4moe")
KV_TYPE_IDS = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type values
# A recurrent model's state is logged as `RS buffer size` (llama-memory-recurrent.cpp); mm counts it as kv.
_BUFFER_RE = re.compile(r"(\S+)\s+(model|KV|RS|output|compute) buffer size =\s+([\d.]+) MiB")
_LOG: list[str] = []
_LOCK = threading.Lock()


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    _LOG.append(text.decode(errors="replace"))


@pytest.fixture(scope="module")
def llama_log() -> Iterator[list[str]]:
    """Route llama.cpp's log into a list (verbose output would go to stderr otherwise)."""
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    yield _LOG
    llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0))


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fit-models")
    return {name: write_tiny_model(folder / f"{name}.gguf", spec) for name, spec in ARCHS.items()}


def llama_buffers(path: Path, settings: RunSettings, flash_mode: int) -> dict[str, float] | None:
    """Load on the CPU and return llama.cpp's reported buffers in MiB (None if it refused the context)."""
    with _LOCK:
        _LOG.clear()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        # llama-cpp-python 0.3.36's params have load_mode, not use_mmap
        model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if settings.use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        assert model, "".join(_LOG)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = settings.n_ctx, settings.n_batch, settings.n_ubatch
        params.n_seq_max = settings.parallel
        params.swa_full, params.kv_unified = settings.swa_full, settings.kv_unified
        params.type_k = params.type_v = KV_TYPE_IDS[settings.kv_type]
        params.flash_attn_type = flash_mode
        context = llama_cpp.llama_init_from_model(model, params)
        text = "".join(_LOG)
        if context:
            llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)
    if not context:
        return None
    found = {"model": 0.0, "KV": 0.0, "output": 0.0, "compute": 0.0}
    for match in _BUFFER_RE.finditer(text):
        found[match.group(2).replace("RS", "KV")] += float(match.group(3))
    return found


CPU = HardwareClass.model_validate({"name": "test-cpu", "ram": "64G", "ram_bandwidth_gbps": 50})
MATRIX = list(
    itertools.product(ATTENTION_ARCHS, (512, 4096, 32768), ("f16", "q8_0"), (False, True), (512, 128), (1, 4))
)
# Flash attention means nothing to a pure recurrent model; the KV type must not change its (F32) state.
MATRIX += list(itertools.product(("mamba",), (512, 4096, 32768), ("f16", "q8_0"), (False,), (512, 128), (1, 4)))


@pytest.mark.parametrize(("arch", "ctx", "kv_type", "flash_attn", "ubatch", "parallel"), MATRIX)
def test_cpu_prediction_matches_llama_cpp(
    llama_log: list[str],
    arch_models: dict[str, Path],
    arch: str,
    ctx: int,
    kv_type: str,
    flash_attn: bool,
    ubatch: int,
    parallel: int,
) -> None:
    # A quantized KV type without flash_attn given is llama.cpp's auto mode: flash attention on.
    flash = {} if kv_type != "f16" and not flash_attn else {"flash_attn": flash_attn}
    settings = RunSettings(
        n_ctx=ctx,
        kv_type=kv_type,  # type: ignore[arg-type]
        n_ubatch=ubatch,
        parallel=parallel,
        # A skipped MTP block inside the mapped span is reported but never read (test_mtp_block_is_not_loaded)
        use_mmap=not ARCHS[arch].n_nextn,
        **flash,
    )
    check_against_llama_cpp(arch_models[arch], settings, strict_compute=arch == "mamba")


def check_against_llama_cpp(path: Path, settings: RunSettings, strict_compute: bool = False) -> None:
    """Load `path` with `settings` in llama.cpp (CPU) and hold mm's prediction to what it reports."""
    # A quantized V cache without flash attention: llama.cpp's auto mode turns flash attention on (mm too).
    flash_mode = 1 if settings.flash_attn else (-1 if settings.kv_type != "f16" else 0)
    truth = llama_buffers(path, settings, flash_mode)
    assert truth is not None, "llama.cpp refused the context"
    result = fit_model(path, CPU, settings)
    predicted = {
        "model": result.cpu.weights_bytes / MIB,
        "KV": result.cpu.kv_bytes / MIB,
        "output": result.cpu.output_bytes / MIB,
        "compute": result.cpu.compute_bytes / MIB,
    }
    # Weights, KV (or recurrent state) and output are exact rules: within llama.cpp's two printed decimals.
    for part in ("model", "KV", "output"):
        assert predicted[part] == pytest.approx(truth[part], abs=0.011), (part, predicted, truth)
    total, want = sum(predicted.values()), sum(truth.values())
    assert abs(total - want) <= max(0.05 * want, 16.0), (predicted, truth)
    if strict_compute:  # tiny totals make the 16 MiB allowance say little: hold compute to 2%
        assert predicted["compute"] == pytest.approx(truth["compute"], rel=0.02), (predicted, truth)
    assert result.ram_bytes == result.cpu.total_bytes and result.n_gpu_layers == 0


# Parallel sequences with llama.cpp's cache layouts: one KV stream per sequence (default) or one unified
# stream, and for sliding-window layers a full-size or a window-sized SWA cache.
STREAMS = [
    (arch, ctx, flash_attn, parallel, unified, swa_full)
    for arch, ctx, flash_attn, parallel, unified, swa_full in itertools.product(
        ("llama", "gemma3"), (512, 4096, 32768), (False, True), (1, 4), (False, True), (True, False)
    )
    if arch == "gemma3" or swa_full
]


@pytest.mark.parametrize(("arch", "ctx", "flash_attn", "parallel", "unified", "swa_full"), STREAMS)
def test_parallel_cache_layouts_match_llama_cpp(
    llama_log: list[str],
    arch_models: dict[str, Path],
    arch: str,
    ctx: int,
    flash_attn: bool,
    parallel: int,
    unified: bool,
    swa_full: bool,
) -> None:
    settings = RunSettings(n_ctx=ctx, flash_attn=flash_attn, parallel=parallel, kv_unified=unified, swa_full=swa_full)
    check_against_llama_cpp(arch_models[arch], settings)


def test_unified_cache_is_one_stream_whose_window_holds_every_sequence(arch_models: dict[str, Path]) -> None:
    """llama-kv-cache-iswa.cpp: per-stream SWA caches of window + ubatch cells each, or one of
    window * n_seq + ubatch; and a unified cache is not padded per sequence."""
    path = arch_models["gemma3"]

    def kv(unified: bool) -> int:
        settings = RunSettings(n_ctx=32768, parallel=4, swa_full=False, kv_unified=unified)
        return fit_model(path, CPU, settings).cpu.kv_bytes

    spec = ARCHS["gemma3"]
    row = 2 * spec.n_head_kv * spec.head_dim * 2  # K and V, f16
    full_layers = spec.n_layers // 6  # gemma3's default: every 6th layer is full attention
    swa_layers = spec.n_layers - full_layers
    assert kv(False) == row * (full_layers * 32768 + swa_layers * 4 * 1024)  # 4 x pad(512 + 512)
    assert kv(True) == row * (full_layers * 32768 + swa_layers * 2560)  # pad(4 x 512 + 512)


def test_mla_cache_is_the_latent_alone(arch_models: dict[str, Path]) -> None:
    """deepseek2's MLA caches kv_lora_rank + n_rot floats per token per layer as K, and no V at all
    (llama-kv-cache.cpp has_v = !is_mla); the buffer llama.cpp reports is checked in the matrix above."""
    spec = ARCHS["deepseek2"]
    result = fit_model(arch_models["deepseek2"], CPU, RunSettings(n_ctx=4096))
    assert result.cpu.kv_bytes == spec.n_layers * 4096 * (spec.kv_lora_rank + spec.qk_rope_dim) * 2


def test_mtp_block_is_not_loaded(llama_log: list[str], arch_models: dict[str, Path]) -> None:
    """The last nextn_predict_layers blocks are multi-token prediction: llama.cpp skips their tensors and
    gives them no KV cache, and -ngl does not count them. Loaded without mmap, llama.cpp allocates exactly
    mm's prediction; with mmap it reports the mapped file span, which also covers the skipped block when it
    lies before output.weight (pages that are never read)."""
    import gguf

    path, spec = arch_models["deepseek2"], ARCHS["deepseek2"]
    result = fit_model(path, CPU, RunSettings(n_ctx=4096, use_mmap=False))
    assert result.n_layers == spec.n_layers  # block_count is n_layers + 1
    unmapped = llama_buffers(path, RunSettings(n_ctx=4096, use_mmap=False), 0)
    mapped = llama_buffers(path, RunSettings(n_ctx=4096), 0)
    assert unmapped is not None and mapped is not None
    assert result.cpu.weights_bytes / MIB == pytest.approx(unmapped["model"], abs=0.011)
    mtp = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if t.name.startswith(f"blk.{spec.n_layers}."))
    assert mapped["model"] - unmapped["model"] == pytest.approx(mtp / MIB, abs=0.02)


def test_recurrent_state_is_per_sequence_not_per_context(arch_models: dict[str, Path]) -> None:
    """The Mamba state does not grow with n_ctx (unlike a KV cache) and grows linearly with sequences."""
    path = arch_models["mamba"]
    small, big = (fit_model(path, CPU, RunSettings(n_ctx=ctx)) for ctx in (512, 32768))
    assert small.cpu.kv_bytes == big.cpu.kv_bytes > 0
    four = fit_model(path, CPU, RunSettings(n_ctx=512, parallel=4))
    assert four.cpu.kv_bytes == 4 * small.cpu.kv_bytes
    # Per layer per sequence: r = (conv_kernel - 1) * d_inner and s = state_size * d_inner floats.
    spec = ARCHS["mamba"]
    per_seq = spec.n_layers * ((spec.ssm_conv_kernel - 1) + spec.ssm_state_size) * spec.ssm_inner_size * 4
    assert small.cpu.kv_bytes == per_seq
    assert any("recurrent" in a for a in small.assumptions)


@pytest.mark.parametrize("arch", ("mamba", *MOE_ARCHS))
def test_tiny_recurrent_and_moe_models_generate(llama_log: list[str], arch_models: dict[str, Path], arch: str) -> None:
    """The factory's recurrent and expert models are ones llama.cpp runs, not only loads: finite, varied
    logits after a prompt."""
    with _LOCK:
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(arch_models[arch]).encode(), model_params)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = 512
        context = llama_cpp.llama_init_from_model(model, params)
        tokens = (llama_cpp.llama_token * 4)(1, 300, 301, 302)
        status = llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(tokens, 4))
        logits = llama_cpp.llama_get_logits_ith(context, -1)
        values = [logits[i] for i in range(ARCHS[arch].n_vocab)]
        llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)
    assert status == 0
    assert all(math.isfinite(v) for v in values) and max(values) > min(values)


def test_llama_cpp_refuses_quantized_v_cache_without_flash_attention(
    llama_log: list[str], arch_models: dict[str, Path]
) -> None:
    settings = RunSettings(kv_type="q8_0")  # flash attention not given: on, as llama.cpp's auto mode
    assert llama_buffers(arch_models["llama"], settings, flash_mode=0) is None  # asked off: refused
    assert settings.flash_attn and llama_buffers(arch_models["llama"], settings, flash_mode=-1) is not None
    with pytest.raises(UsageError, match="needs flash attention"):
        run_settings({"kv_type": "q8_0", "flash_attn": False})


def test_swa_cache_shrinks_without_swa_full(llama_log: list[str], arch_models: dict[str, Path]) -> None:
    full = fit_model(arch_models["gemma3"], CPU, RunSettings(n_ctx=32768))
    small = fit_model(arch_models["gemma3"], CPU, RunSettings(n_ctx=32768, swa_full=False))
    assert small.cpu.kv_bytes < full.cpu.kv_bytes / 3  # 5 of 6 layers keep only window + ubatch cells


def test_smaller_gpu_gets_fewer_layers_and_cpu_only_when_no_vram(arch_models: dict[str, Path]) -> None:
    path = arch_models["qwen3"]
    big = get_hardware("rtx4090-24g")
    full = fit_model(path, big, RunSettings(n_ctx=4096))
    assert full.verdict == "full_offload" and full.n_gpu_layers == full.n_layers + 1
    # A GPU with room for the overhead, the compute buffer and about half the layers.
    need = full.gpu.total_bytes - full.gpu.weights_bytes // 2
    half = big.model_copy(update={"vram_bytes": int(need / 0.95)})
    partial = fit_model(path, half, RunSettings(n_ctx=4096))
    assert partial.verdict == "partial_offload" and 0 < partial.n_gpu_layers < full.n_gpu_layers
    assert partial.gpu.total_bytes <= half.vram_bytes
    cpu = fit_model(path, big.model_copy(update={"vram_bytes": 0}), RunSettings(n_ctx=4096))
    assert cpu.verdict == "cpu_only" and cpu.gpu.total_bytes == 0
    assert cpu.tokens_per_second < full.tokens_per_second


def test_does_not_fit_suggests_what_would(tmp_path: Path) -> None:
    model = write_header_only_model(tmp_path / "70b.gguf", SEVENTY_B)
    tiny_box = get_hardware("rtx3060-12g").model_copy(update={"ram_bytes": 16 << 30})
    result = fit_model(model, tiny_box, RunSettings(n_ctx=32768))
    assert result.verdict == "does_not_fit" and not result.fits_ram
    assert any("lower quant" in s for s in result.suggestions)


SEVENTY_B = TinySpec(n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=32000)


def test_70b_header_is_inspected_and_fitted_in_well_under_a_second(tmp_path: Path) -> None:
    from pipeline.fitting.model_info import summarize_model

    model = write_header_only_model(tmp_path / "llama-70b.Q4_K_M.gguf", SEVENTY_B)
    assert model.stat().st_size > 35 << 30  # sparse: the data region is a hole
    start = time.perf_counter()
    summary = summarize_model(model)
    result = fit_model(model, get_hardware("rtx3060-12g"), RunSettings(n_ctx=8192))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert summary.n_layers == 80 and 68e9 < summary.n_params < 71e9
    assert result.verdict == "partial_offload" and 10 < result.n_gpu_layers < 30
    # KV at f16: 80 layers x 8192 cells x (1024 + 1024) x 2 bytes = 2.5 GiB across both devices.
    assert result.gpu.kv_bytes + result.cpu.kv_bytes == 80 * 8192 * 2048 * 2
