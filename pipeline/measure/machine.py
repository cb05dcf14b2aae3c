"""`mm hw --measure`: llama.cpp's CPU decode on this machine, per thread count: the rate at which it reads
weights from RAM, its matrix-vector rate per weight type, and its per-token overheads.

Everything is measured by llama.cpp itself, through the same llama-cpp-python `mm bench` uses, on models
made by the tiny-model factory:
  - two micro models (2 and 8 layers, width 64) give the per-token overhead: a fixed part and a part per
    computed graph node (fitting/graph_ops.py counts them; their matrix work is negligible); a third with a
    65536-entry vocabulary gives the part per vocabulary entry (each token's logits written out and copied);
  - two micro Mamba models (4 layers, d_inner 512) whose SSM state differs (d_state 16 and 128) give the
    part per recurrent state element (the scan's scalar expf: fitting/graph_ops.py), their larger x_proj
    matrix taken out at the F32 rate;
  - one mid model (2 layers, width 512, FFN 1024: 5 M weights, 20 MB even in F32, so it stays in a
    32 MB-class cache and measures arithmetic, not RAM) is quantized "pure" to each weight type llama.cpp
    can make (MEASURED_TYPES: every type a model is stored in but NVFP4, which speed.py derives), and its
    decode time less the overhead gives that type's matrix-vector rate: 2 x weight elements / seconds;
  - two big models, each at least twice the last-level cache, give what changes when the weights come from
    RAM: an F32 one (a plain multiply-add per 4 bytes, so its time is the reading) gives the bandwidth of
    speed.py's roofline as llama.cpp achieves it; a Q4_K one gives the share of its in-cache rate a type
    keeps out of cache (one thread waiting on memory does not compute meanwhile: about a third here).
Every test is timed as measure/sampling.py says a shared machine must be: the median token of a run, the
tests interleaved in rounds, the round's level taken out, the median over rounds, more rounds while they
disagree; the spread of each rate is kept beside it and `mm fit` turns it into the ± of its prediction.
The result is a hardware class (pipeline/spec/hardware.py) cached in $MM_HOME/hw/local.json; the local machine's
default class uses it, and `mm hw --save NAME` writes it into hardware.toml.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import HardwareError, MMError
from pipeline.base.home import atomic_write_json, atomic_write_text
from pipeline.base.provenance import utc_now
from pipeline.fitting.graph_ops import decode_ops, state_elements
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.speed import FLOPS_PER_ELEMENT, merge
from pipeline.gguf.header import read_header, read_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.llama_log import llama_log_file, route_llama_log
from pipeline.measure.bench import decode_token_seconds
from pipeline.measure.sampling import Estimate, interleaved, median_token_seconds
from pipeline.probe.local_machine import measurement_path
from pipeline.spec.hardware import CpuRates, HardwareClass

log = logging.getLogger(__name__)

MeasureProgress = Callable[[str], None]  # a line saying what is being measured
BIG_MODEL_BYTES = 64 << 20  # at least: twice a 32 MiB L3 (and twice the cache found, when larger)
VOCAB = 65536  # the vocabulary of the model that measures the per-entry overhead
# The Mamba pair that measures the per-state-element overhead: d_state 16 (Mamba's own) and 128
SSM_MODELS = {"ssm16": TinySpec(arch="mamba", n_layers=4, n_embd=256, ssm_state_size=16),
              "ssm128": TinySpec(arch="mamba", n_layers=4, n_embd=256, ssm_state_size=128)}  # fmt: skip
# Pure quantizations (every tensor one type) by llama_ftype (llama.h), named by the ggml type each makes
# (llama-quant.cpp llama_ftype_get_default_type: IQ2_S comes from the IQ2_M ftype, IQ2_XS from IQ2_XS).
MEASURED_TYPES = {
    "F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18,
    "IQ4_NL": 25, "IQ4_XS": 30, "IQ3_S": 26, "IQ3_XXS": 23, "IQ2_S": 29, "IQ2_XS": 20, "IQ2_XXS": 19,
    "IQ1_M": 31, "IQ1_S": 24, "TQ1_0": 36, "TQ2_0": 37, "MXFP4": 38, "Q1_0": 40,
}  # fmt: skip
TOKENS_PER_RUN = 16  # decoded tokens per timed run; their median is the run's figure


def cache_bytes() -> int:
    """The CPU's last-level cache (Linux sysfs: the highest cache index of cpu0), 0 when unknown."""
    from pipeline.base.units import parse_size

    best = 0
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            best = max(best, parse_size((index / "size").read_text().strip()))
        except (OSError, ValueError, MMError):
            continue
    return best


def quantize_pure(source: Path, target: Path, ftype: int) -> bool:
    """Quantize every matrix of `source` to `ftype`'s type; False when this llama.cpp cannot. A flat
    importance matrix is given, so the types that require one (IQ1/IQ2/IQ3_XXS) can be made too: speed
    does not depend on the values."""
    import llama_cpp

    route_llama_log()  # its per-tensor lines to the debug log, not the terminal
    rows = {t.name: t.shape[0] for t in read_header(source).tensors if len(t.shape) >= 2}
    ones = {name: np.ones(width, dtype=np.float32) for name, width in rows.items()}
    table = (llama_cpp.llama_model_imatrix_data * (len(ones) + 1))()
    for i, (name, values) in enumerate(ones.items()):
        table[i].name = name.encode()
        table[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        table[i].size = values.size
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = True
    params.nthread = 0
    params.imatrix = table
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        log.warning("this llama.cpp cannot quantize to ftype %d: its type is derived, not measured", ftype)
        return False
    return True


def _decode_test(model: Path, threads: int) -> tuple[Any, Callable[[], float]]:
    """A loaded model and a test timing it: the median token of TOKENS_PER_RUN decoded from an empty cache."""
    from pipeline.llama.overrides import load_llama

    llm = load_llama({"model_path": str(model), "n_threads": threads, "n_threads_batch": threads, "n_ctx": 256})
    tokens = [1, *range(3, 3 + TOKENS_PER_RUN - 1)]
    decode_token_seconds(llm, tokens[:4])  # warm-up: first touches of weights and buffers
    return llm, lambda: median_token_seconds(decode_token_seconds(llm, tokens))


def _decode_rounds(models: dict[str, Path], threads: int, say: MeasureProgress) -> dict[str, Estimate]:
    """Every calibration model loaded at once and timed in interleaved rounds (measure/sampling.py)."""
    loaded = {name: _decode_test(path, threads) for name, path in models.items()}

    def progress(done: int, planned: int) -> None:
        say(f"decode rates, {threads} thread(s), round {done}/{planned}")

    try:
        tests = {name: test for name, (_llm, test) in loaded.items()}
        from_ram = {name: "ram" for name in tests if name.startswith("big-")}  # slowed by other work differently
        return interleaved(tests, progress=progress, groups=from_ram)
    finally:
        for llm, _test in loaded.values():
            llm.close()


def _big_models(folder: Path, cache: int) -> dict[str, Path]:
    """F32 and pure Q4_K llama models of 1024-wide layers, each at least twice the last-level cache in bytes."""
    layer = TinySpec(n_embd=1024, n_head=8, n_head_kv=4, n_ff=2816)
    weights = 1024 * (2 * 1024 + 2 * 512 + 3 * 2816)
    least = max(BIG_MODEL_BYTES, 2 * cache)
    big_f32 = write_tiny_model(folder / "big-F32.gguf", layer.with_(n_layers=-(-least // (4 * weights))))
    q4_k_layers = -(-least // (weights * 144 // 256))  # Q4_K: 144 bytes per 256 weights
    source = write_tiny_model(folder / "big-f16.gguf", layer.with_(n_layers=q4_k_layers, dtype="f16"))
    big_q4_k = folder / "big-Q4_K.gguf"
    if not quantize_pure(source, big_q4_k, MEASURED_TYPES["Q4_K"]):
        raise HardwareError("llama.cpp could not quantize the calibration model to Q4_K")
    source.unlink()
    return {"big-F32": big_f32, "big-Q4_K": big_q4_k}


def _work(model: Path) -> tuple[int, int, int]:
    """(weight elements multiplied, bytes read, graph nodes computed) of one decoded token of a calibration
    model."""
    shape = model_shape(read_model(model))
    elements = sum(merge([*shape.layer_elements, shape.output_elements]).values())
    return elements, sum(shape.layer_bytes) + shape.output_bytes, decode_ops(shape)


def _rates(estimates: dict[str, Estimate], models: dict[str, Path], cache: int) -> CpuRates:
    """Overhead from the micro models, each type's rate from the mid model's time less that overhead, the RAM
    bandwidth and the out-of-cache share from the big ones; a figure's spread and error are its test's, scaled
    up by how much of the time the overhead took."""
    t2, t8, tv = (estimates.pop(k).centre for k in ("micro2", "micro8", "vocab"))
    ops2, ops8 = (_work(models[k])[2] for k in ("micro2", "micro8"))
    per_op = max(0.0, (t8 - t2) / (ops8 - ops2))
    fixed = max(0.0, t2 - ops2 * per_op)
    big = {k: estimates.pop(k) for k in ("big-F32", "big-Q4_K")}
    ssm = {k: estimates.pop(k).centre for k in SSM_MODELS}

    def net(estimate: Estimate, n_ops: int) -> float:  # the matrix work's share of a test's time
        return max(estimate.centre - fixed - n_ops * per_op, 1e-7)

    gflops, spread, error = {}, {}, {}
    for kind, estimate in estimates.items():
        elements, _read, n_ops = _work(models[kind])
        seconds = net(estimate, n_ops)
        gflops[kind] = round(FLOPS_PER_ELEMENT * elements / seconds / 1e9, 2)
        spread[kind] = round(estimate.spread * estimate.centre / seconds, 4)
        error[kind] = round(estimate.error * estimate.centre / seconds, 4)
    vocab_model = model_shape(read_model(models["vocab"]))
    head_seconds = FLOPS_PER_ELEMENT * sum(vocab_model.output_elements.values()) / (gflops.get("Q8_0", 1.0) * 1e9)
    extra_entries = vocab_model.n_vocab - model_shape(read_model(models["micro2"])).n_vocab
    per_entry = max(0.0, (tv - t2 - head_seconds) / extra_entries) if "Q8_0" in gflops else 0.0
    per_state = _state_seconds(ssm, models, gflops.get("F32"))
    _elements, read, n_ops = _work(models["big-F32"])
    f32_seconds = net(big["big-F32"], n_ops)
    elements, _read, n_ops = _work(models["big-Q4_K"])
    out_of_cache = FLOPS_PER_ELEMENT * elements / net(big["big-Q4_K"], n_ops) / 1e9 / gflops.get("Q4_K", 1.0)
    return CpuRates(gflops=gflops, spread=spread, error=error, token_overhead_ms=round(fixed * 1e3, 4),
                    op_overhead_us=round(per_op * 1e6, 4), vocab_overhead_ns=round(per_entry * 1e9, 3),
                    state_overhead_ns=round(per_state * 1e9, 3),
                    cache_bytes=cache, ram_bandwidth_gbps=round(read / f32_seconds / 1e9, 2),
                    ram_bandwidth_spread=round(big["big-F32"].spread * big["big-F32"].centre / f32_seconds, 4),
                    ram_bandwidth_error=round(big["big-F32"].error * big["big-F32"].centre / f32_seconds, 4),
                    ram_compute_share=round(min(1.0, out_of_cache), 3) if "Q4_K" in gflops else 1.0)  # fmt: skip


def _state_seconds(centres: dict[str, float], models: dict[str, Path], f32_gflops: float | None) -> float:
    """Seconds per recurrent state element: the Mamba pair's difference in time less their difference in
    (F32) matrix work, over their difference in state elements."""
    (lo_elements, _, _), (hi_elements, _, _) = (_work(models[k]) for k in SSM_MODELS)
    lo_state, hi_state = (state_elements(model_shape(read_model(models[k]))) for k in SSM_MODELS)
    matrix = FLOPS_PER_ELEMENT * (hi_elements - lo_elements) / (f32_gflops * 1e9) if f32_gflops else 0.0
    return max(0.0, (centres["ssm128"] - centres["ssm16"] - matrix) / (hi_state - lo_state))


def measure_machine(
    *, threads: list[int] | None = None, types: list[str] | None = None, progress: MeasureProgress | None = None
) -> HardwareClass:
    """Measure this machine and return it as a hardware class named `local` (not yet cached or saved)."""
    from pipeline.probe.local_machine import cpu_name, default_threads, total_ram_bytes

    counts = threads or list(range(1, (os.cpu_count() or 1) + 1))
    kinds = [k.upper() for k in (types or list(MEASURED_TYPES))]
    unknown = [k for k in kinds if k not in MEASURED_TYPES]
    if unknown:
        raise HardwareError(f"cannot measure types {unknown}; measurable: {', '.join(MEASURED_TYPES)}")
    say = progress or (lambda _line: None)
    rates: dict[int, CpuRates] = {}
    rounds: list[int] = []
    cache = cache_bytes()
    with tempfile.TemporaryDirectory(prefix="mm-hw-") as folder, llama_log_file("hw-measure"):
        root = Path(folder)
        micro = TinySpec(n_embd=64, n_head=2, n_head_kv=1, n_ff=128)
        models = {"micro2": write_tiny_model(root / "micro2.gguf", micro),
                  "micro8": write_tiny_model(root / "micro8.gguf", micro.with_(n_layers=8)),
                  "vocab": root / "vocab.gguf"}  # fmt: skip
        models.update({name: write_tiny_model(root / f"{name}.gguf", spec) for name, spec in SSM_MODELS.items()})
        if not quantize_pure(write_tiny_model(root / "vocab-f32.gguf", micro.with_(n_vocab=VOCAB)),
                              models["vocab"], MEASURED_TYPES["Q8_0"]):  # fmt: skip
            raise HardwareError("llama.cpp could not quantize the calibration model to Q8_0")
        say("preparing models larger than the cache")
        models.update(_big_models(root, cache))
        mid = write_tiny_model(root / "mid.gguf", TinySpec(n_embd=512, n_head=8, n_head_kv=4, n_ff=1024))
        for kind in kinds:
            say(f"preparing a {kind} calibration model")
            if quantize_pure(mid, root / f"mid-{kind}.gguf", MEASURED_TYPES[kind]):
                models[kind] = root / f"mid-{kind}.gguf"
        for count in counts:
            estimates = _decode_rounds(models, count, say)
            rounds.append(min(e.samples for e in estimates.values()))
            rates[count] = _rates(estimates, models, cache)
    how = (
        f"mm hw --measure on {utc_now()[:16]} ({cpu_name()} x{os.cpu_count() or 1}): llama.cpp decode (the median "
        f"token of each run, {statistics.median(rounds):g} interleaved rounds) of pure-quantized calibration models: "
        "compute rates and overheads in cache, RAM bandwidth and the out-of-cache share from F32 and Q4_K models "
        "larger than the cache"
    )
    bandwidth = max(r.ram_bandwidth_gbps or 0.0 for r in rates.values())
    return HardwareClass.model_validate({
        "name": "local", "description": "this machine, measured", "vram": 0, "ram": total_ram_bytes() or 1,
        "ram_bandwidth_gbps": bandwidth, "cpu_rates": rates, "threads": default_threads(), "measured": how,
    })  # fmt: skip


def fewer_threads_note(measured: HardwareClass) -> str | None:
    """What to say when fewer threads than a run's default (the physical cores) decoded faster: within the
    measured noise it is no reason to use fewer, and a loaded machine often shows it; beyond the noise,
    the -t worth trying. The default itself stays what llama-bench uses, so bench, fit and run agree."""
    default = measured.threads
    if default not in measured.cpu_rates:
        return None
    base = measured.cpu_rates[default]
    for count in sorted(c for c in measured.cpu_rates if c < default):
        rates = measured.cpu_rates[count]
        kinds = [k for k in rates.gflops if base.gflops.get(k)]
        if not kinds:
            continue
        gain = statistics.median(rates.gflops[k] / base.gflops[k] for k in kinds) - 1
        noise = statistics.median(rates.spread.get(k, 0.0) + base.spread.get(k, 0.0) for k in kinds)
        if gain <= 0:
            continue
        if gain <= noise:
            return (f"{count} thread(s) measured {gain:.0%} faster than {default} (the physical cores), within the "
                    f"measurement's noise (±{noise:.0%}): runs keep {default} thread(s); measure again on an idle "
                    "machine to tell them apart")  # fmt: skip
        return (f"{count} thread(s) measured {gain:.0%} faster than {default} (the physical cores), beyond the noise "
                f"(±{noise:.0%}): runs still default to {default} as llama-bench does; try -t {count}")  # fmt: skip
    return None


def cache_measurement(measured: HardwareClass) -> Path:
    path = measurement_path()
    atomic_write_json(path, measured.model_dump(mode="json", by_alias=False))
    return path


def save_class(measured: HardwareClass, name: str, hardware_file: Path) -> Path:
    """Write `measured` as class `name` into hardware.toml, replacing a class of that name."""
    if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
        raise HardwareError(f"class name {name!r}: use lower-case letters, digits and . _ -")
    text = hardware_file.read_text() if hardware_file.is_file() else ""
    kept, skipping = [], False
    for line in text.splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            skipping = header[1].strip() == name or header[1].strip().startswith(f"{name}.")
        if not skipping:
            kept.append(line)
    block = _toml_tables(name, _class_table(measured))
    body = "\n".join(kept).rstrip()
    atomic_write_text(hardware_file, (body + "\n\n" if body else "") + "\n".join(block) + "\n")
    return hardware_file


def _class_table(measured: HardwareClass) -> dict[str, Any]:
    """The class as hardware.toml spells it: the model's own dump under the keys a file uses (vram, ram,
    gpu_overhead), so every field, cache_bytes of each rates table included, survives a save."""
    dump = measured.model_dump(mode="json", exclude={"name"}, exclude_none=True)
    fields = HardwareClass.model_fields
    return {str(fields[key].validation_alias or key): value for key, value in dump.items()}


def _toml_tables(name: str, table: dict[str, Any]) -> list[str]:
    """TOML lines of `table` as [name]: scalars and flat dicts inline, a dict of dicts as sub-tables."""
    lines, nested = [f"[{name}]"], []
    for key, value in table.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for sub, inner in value.items():
                nested += ["", *_toml_tables(f"{name}.{key}.{sub}", inner)]
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines + nested


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # a TOML basic string, integer or float is spelled as JSON spells it
