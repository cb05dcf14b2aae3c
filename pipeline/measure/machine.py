"""`mm hw --measure`: this machine's RAM read bandwidth and llama.cpp's CPU decode rates, per thread count.

Bandwidth: threads summing disjoint slices of an array much larger than the last-level cache (numpy
releases the GIL in reductions), best of a few passes. Compute: llama.cpp itself, through the same
llama-cpp-python `mm bench` uses, on models made by the tiny-model factory:
  - two micro models (2 and 8 layers, width 64) give the per-token overhead: a fixed part and a part per
    layer (their matrix work is negligible);
  - one mid model (2 layers, width 512, FFN 1024: 5 M weights, 20 MB even in F32, so it stays in a
    32 MB-class cache and measures arithmetic, not RAM) is quantized "pure" to each weight type, and its
    decode time less the overhead gives that type's matrix-vector rate: 2 x weight elements / seconds.
    Larger models are held back by the bandwidth term instead (speed.py's roofline).
The result is a hardware class (pipeline/spec/hardware.py) cached in $MM_HOME/hw/local.json; the local machine's
default class uses it, and `mm hw --save NAME` writes it into hardware.toml.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import HardwareError, MMError
from pipeline.base.home import atomic_write_json, atomic_write_text
from pipeline.base.provenance import utc_now
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.speed import FLOPS_PER_ELEMENT, merge
from pipeline.gguf.header import read_model
from pipeline.gguf.tiny_model import TinySpec, write_tiny_model
from pipeline.measure.bench import run_bench
from pipeline.spec.hardware import CpuRates, HardwareClass
from pipeline.spec.local_machine import measurement_path

log = logging.getLogger(__name__)

MeasureProgress = Callable[[str], None]  # a line saying what is being measured
BANDWIDTH_BYTES = 512 << 20  # 16x a 32 MiB L3
# Pure quantizations (every tensor one type) by llama_ftype (llama.h), named by the ggml type measured.
MEASURED_TYPES = {
    "F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q6_K": 18, "Q5_K": 17, "Q4_K": 15, "Q3_K": 12, "Q2_K": 10,
    "Q4_0": 2, "Q5_0": 8,
}  # fmt: skip
GEN_TOKENS = 64
REPETITIONS = 5


def ram_bandwidth_gbps(threads: int, total_bytes: int = BANDWIDTH_BYTES, passes: int = 3) -> float:
    """Best aggregate read rate of `threads` threads summing their share of a `total_bytes` array."""
    data = np.ones(total_bytes // 4, dtype=np.float32)
    slices = np.array_split(data, threads)
    best = 0.0
    for _ in range(passes):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in slices]
        begin = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, total_bytes / (time.perf_counter() - begin) / 1e9)
    return round(best, 2)


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


def _tg_seconds(model: Path, threads: int) -> float:
    """Seconds per decoded token (llama-bench's tg, from an empty cache) of the fastest run: a machine's
    rate is what it can do; a run slowed by other work on a shared machine measures the other work."""
    result = run_bench({"model_path": str(model), "n_threads": threads, "n_ctx": 512}, n_prompt=0,
                       n_gen=GEN_TOKENS, repetitions=REPETITIONS)  # fmt: skip
    assert result.tg is not None
    return 1.0 / result.tg.max_ts


def quantize_pure(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = True
    params.nthread = 0
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise HardwareError(f"llama.cpp could not quantize the calibration model to ftype {ftype}")


def _work_elements(model: Path) -> int:
    shape = model_shape(read_model(model))
    return sum(merge([*shape.layer_elements, shape.output_elements]).values())


def measure_machine(
    *, threads: list[int] | None = None, types: list[str] | None = None, progress: MeasureProgress | None = None
) -> HardwareClass:
    """Measure this machine and return it as a hardware class named `local` (not yet cached or saved)."""
    from pipeline.measure.bench import default_threads
    from pipeline.spec.local_machine import cpu_name, total_ram_bytes

    counts = threads or list(range(1, (os.cpu_count() or 1) + 1))
    kinds = [k.upper() for k in (types or list(MEASURED_TYPES))]
    unknown = [k for k in kinds if k not in MEASURED_TYPES]
    if unknown:
        raise HardwareError(f"cannot measure types {unknown}; measurable: {', '.join(MEASURED_TYPES)}")
    say = progress or (lambda _line: None)
    bandwidth = 0.0
    for count in counts:
        say(f"RAM read bandwidth, {count} thread(s)")
        bandwidth = max(bandwidth, ram_bandwidth_gbps(count))
    rates: dict[int, CpuRates] = {}
    with tempfile.TemporaryDirectory(prefix="mm-hw-") as folder:
        root = Path(folder)
        micro = TinySpec(n_embd=64, n_head=2, n_head_kv=1, n_ff=128)
        micro2 = write_tiny_model(root / "micro2.gguf", micro)
        micro8 = write_tiny_model(root / "micro8.gguf", micro.with_(n_layers=8))
        mid = write_tiny_model(root / "mid.gguf", TinySpec(n_embd=512, n_head=8, n_head_kv=4, n_ff=1024))
        models: dict[str, Path] = {}
        for kind in kinds:
            say(f"preparing a {kind} calibration model")
            models[kind] = root / f"mid-{kind}.gguf"
            quantize_pure(mid, models[kind], MEASURED_TYPES[kind])
        elements = _work_elements(mid)
        for count in counts:
            say(f"per-token overhead, {count} thread(s)")
            t2, t8 = _tg_seconds(micro2, count), _tg_seconds(micro8, count)
            per_layer = max(0.0, (t8 - t2) / 6)
            fixed = max(0.0, t2 - 2 * per_layer)
            gflops: dict[str, float] = {}
            for kind in kinds:
                say(f"{kind} matrix-vector rate, {count} thread(s)")
                seconds = _tg_seconds(models[kind], count) - fixed - 2 * per_layer
                gflops[kind] = round(FLOPS_PER_ELEMENT * elements / max(seconds, 1e-6) / 1e9, 2)
            rates[count] = CpuRates(gflops=gflops, token_overhead_ms=round(fixed * 1e3, 4),
                                    layer_overhead_ms=round(per_layer * 1e3, 4), cache_bytes=cache_bytes())  # fmt: skip
    how = (
        f"mm hw --measure on {utc_now()[:16]} ({cpu_name()} x{os.cpu_count() or 1}): RAM bandwidth from "
        f"{len(counts)} thread count(s) summing {BANDWIDTH_BYTES >> 20} MiB; compute rates and overhead from "
        "llama.cpp decode (tg) of pure-quantized calibration models"
    )
    return HardwareClass.model_validate({
        "name": "local", "description": "this machine, measured", "vram": 0, "ram": total_ram_bytes() or 1,
        "ram_bandwidth_gbps": bandwidth, "cpu_rates": rates, "threads": default_threads(), "measured": how,
    })  # fmt: skip


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
