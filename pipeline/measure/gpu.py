"""`mm hw --measure` on a machine with a GPU: llama.cpp's decode bandwidth and prompt compute on its card, as a
calibration of that card (pipeline/spec/gpus.py's Calibration), measured the way machine.py measures the CPU.

  - two micro models (2 and 8 layers, width 64) fully offloaded give the per-layer cost of a decoded token;
  - a bandwidth model (8 layers, width 2048, ~0.8 GB in F16 and ~0.25 GB in Q4_K, far beyond any GPU cache)
    decoded (tg) gives the share of the datasheet bandwidth llama.cpp reaches for float and quantized weights,
    and its prompt (pp512) the share of the datasheet FP16 throughput.

Where the machine has no GPU, the llama.cpp build has no GPU backend, or the card is not in the catalog, the
measurement is skipped with the reason and the class keeps the catalog's calibration (or none).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.base.errors import HardwareError
from pipeline.base.provenance import utc_now
from pipeline.fitting.model_shape import model_shape
from pipeline.fitting.speed import FLOPS_PER_ELEMENT, merge
from pipeline.gguf.header import read_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.llama_log import llama_log_file
from pipeline.measure.bench import run_bench
from pipeline.measure.machine import MEASURED_TYPES, quantize_pure
from pipeline.spec.gpus import Calibration, Gpu, catalog_id_for, get_gpu
from pipeline.spec.hardware import HardwareClass

log = logging.getLogger(__name__)

MICRO = TinySpec(n_embd=64, n_head=2, n_head_kv=1, n_ff=128)
BANDWIDTH_MODEL = TinySpec(n_layers=8, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632, n_vocab=32000, dtype="f16")
Progress = Callable[[str], None]


def local_card() -> tuple[Gpu | None, str]:
    """This machine's first GPU as a catalog card, or None and why the GPU cannot be measured."""
    import llama_cpp

    from pipeline.probe.local_machine import local_gpus

    gpus, how = local_gpus()
    if not gpus:
        return None, f"no GPU found ({'NVML, nvidia-smi' if how == 'none' else how})"
    if not llama_cpp.llama_supports_gpu_offload():
        return None, "this llama.cpp build has no GPU backend"
    gpu_id = catalog_id_for(gpus[0].name, gpus[0].total_bytes)
    if gpu_id is None:
        return None, f"{gpus[0].name} is not in the GPU catalog (`mm hw --gpus`)"
    return get_gpu(gpu_id), ""


def with_gpu(measured: HardwareClass, progress: Progress | None = None) -> tuple[HardwareClass, str]:
    """The CPU measurement with this machine's GPU measured into it, or unchanged and the reason it is not."""
    with llama_log_file("hw-measure"):
        card, why = local_card()
        if card is None:
            log.info("GPU not measured: %s", why)
            return measured, why
        calibration = measure_card(card, progress or (lambda _line: None))
    how = f"{measured.measured}; GPU: {calibration.source}"
    update = {"gpus": (card.id,), "vram_bytes": card.usable_bytes, "gpu_bandwidth_gbps": card.bandwidth_gbps,
              "gpu_calibration": calibration, "measured": how}  # fmt: skip
    return measured.model_copy(update=update), ""


def _seconds(model: Path, test: str) -> float:
    """Seconds per token of llama-bench's tg64 or pp512 with every layer on the GPU."""
    prompt, gen = (512, 0) if test == "pp" else (0, 64)
    result = run_bench({"model_path": str(model), "n_gpu_layers": 999, "n_ctx": 1024}, n_prompt=prompt, n_gen=gen,
                       repetitions=3)  # fmt: skip
    figure = result.pp if test == "pp" else result.tg
    assert figure is not None
    return 1.0 / figure.median_ts


def measure_card(card: Gpu, say: Progress) -> Calibration:
    """Decode and prompt efficiencies and the per-layer cost of `card`, from llama.cpp runs on it."""
    with tempfile.TemporaryDirectory(prefix="mm-gpu-") as folder:
        root = Path(folder)
        say(f"{card.name}: per-layer cost")
        t2 = _seconds(write_tiny_model(root / "micro2.gguf", MICRO), "tg")
        t8 = _seconds(write_tiny_model(root / "micro8.gguf", MICRO.with_(n_layers=8)), "tg")
        layer_s = max(0.0, (t8 - t2) / 6)
        token_s = max(0.0, t2 - 2 * layer_s)
        f16 = write_tiny_model(root / "bandwidth-f16.gguf", BANDWIDTH_MODEL)
        q4 = root / "bandwidth-q4_k.gguf"
        if not quantize_pure(f16, q4, MEASURED_TYPES["Q4_K"]):
            raise HardwareError("llama.cpp could not quantize the GPU calibration model to Q4_K")
        efficiency: dict[str, tuple[float, float]] = {}
        for kind, model in (("float", f16), ("quant", q4)):
            say(f"{card.name}: {kind} weights, decode and prompt")
            shape = model_shape(read_model(model))
            elements = merge([*shape.layer_elements, shape.output_elements])
            read = sum(shape.layer_bytes) + shape.output_bytes
            decode = read / max(_seconds(model, "tg") - token_s - layer_s * shape.n_layers, 1e-9)
            flops = FLOPS_PER_ELEMENT * sum(elements.values()) / _seconds(model, "pp")
            efficiency[kind] = (decode / (card.bandwidth_gbps * 1e9), flops / (card.fp16_tflops * 1e12))
    return Calibration(
        decode_efficiency_quant=round(min(efficiency["quant"][0], 1.5), 3),
        decode_efficiency_float=round(min(efficiency["float"][0], 1.5), 3),
        token_ms=round(token_s * 1e3, 4), layer_ms=round(layer_s * 1e3, 4),
        prompt_efficiency_quant=round(min(efficiency["quant"][1], 1.5), 3),
        prompt_efficiency_float=round(min(efficiency["float"][1], 1.5), 3),
        source=f"mm hw --measure on {utc_now()[:16]} ({card.name}: llama.cpp tg64 and pp512, every layer on the GPU)",
    )  # fmt: skip
