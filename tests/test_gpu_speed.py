"""The GPU catalog, classes composed from its cards, and the calibrated speed model against public measurements."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest

from pipeline.base.errors import HardwareError
from pipeline.fitting.fit import fit_model
from pipeline.fitting.gpu_speed import CPU_CORE_TYPE, cpu_kernel_rates, prompt_tflops
from pipeline.fitting.speed import DeviceWork, compute_seconds, measured_sibling
from pipeline.gguf.ggml_types import GGML_TYPES, block_size
from pipeline.gguf.tiny_model import write_header_only_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.gpus import CpuKernels, calibration, cpu_kernel_factors, get_gpu, gpu_catalog
from pipeline.spec.hardware import HardwareClass, get_hardware, load_hardware_file
from pipeline.spec.run_settings import RunSettings
from tests.test_placement import QWEN3_30B_A3B

GIB = 1 << 30
LLAMA3_8B = TinySpec(n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, context_length=8192)


def test_every_catalog_figure_names_a_source_and_every_requested_card_is_there() -> None:
    catalog = gpu_catalog()
    for gpu in catalog.gpus.values():
        assert gpu.id == gpu.id.lower() and catalog.sources[gpu.source]
        assert gpu.calibration in catalog.calibrations
    for fitted in catalog.calibrations.values():
        assert catalog.sources[fitted.source]
    wanted = {"rtx2060", "rtx5090", "rtx3060-8g", "rtx4000-ada", "rtx6000-ada", "a6000", "a40", "l40s", "a100-pcie",
              "a100-sxm", "h100-pcie", "h100-sxm", "m1-max", "m2-ultra", "m4-max"}  # fmt: skip
    assert wanted <= set(catalog.gpus)
    assert get_gpu("m2-ultra").unified and get_gpu("m2-ultra").usable_bytes < get_gpu("m2-ultra").memory_bytes


def test_the_catalog_ships_with_the_package() -> None:
    """pyproject's package-data carries the TOML the catalog reads."""
    data = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pipeline"]
    assert "spec/*.toml" in data


def test_a_class_is_composed_of_catalog_cards_and_the_old_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "hardware.toml"
    path.write_text(
        '[box]\ngpus = ["rtx2080"]\nram = "62G"\nram_bandwidth_gbps = 102\ncpu_cores = 10\n\n'
        '[pair]\ngpus = ["rtx3090", "rtx3090"]\nram = "128G"\nram_bandwidth_gbps = 80\n\n'
        '[old]\nvram = "12G"\nram = "64G"\ngpu_bandwidth_gbps = 360\nram_bandwidth_gbps = 50\n'
    )
    box, pair, old = load_hardware_file(path)
    assert (box.vram_bytes, box.gpu_bandwidth_gbps, box.cpu_cores, box.gpus) == (8 * GIB, 448, 10, ("rtx2080",))
    assert pair.vram_bytes == 48 * GIB and [d.id for d in pair.devices] == ["rtx3090", "rtx3090"]
    assert old.vram_bytes == 12 * GIB and old.devices == ()
    assert get_hardware("rtx3090-24g").gpus == ("rtx3090",)


def test_an_unknown_card_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "hardware.toml"
    path.write_text('[box]\ngpus = ["rtx9090"]\nram = "62G"\nram_bandwidth_gbps = 102\n')
    with pytest.raises(HardwareError, match="unknown GPU 'rtx9090'"):
        load_hardware_file(path)
    with pytest.raises(HardwareError, match="unknown GPU"):
        get_gpu("gtx480")


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_header_only_model(tmp_path_factory.mktemp("shapes") / "llama3-8b.gguf", LLAMA3_8B)


def _box(gpus: list[str], **extra: object) -> HardwareClass:
    return HardwareClass.model_validate({"name": "box", "gpus": gpus, "ram": "64G", "ram_bandwidth_gbps": 50, **extra})


def test_calibrated_decode_is_below_the_datasheet_roofline_and_says_what_it_rests_on(llama8b: Path) -> None:
    calibrated = fit_model(llama8b, _box(["rtx3090"]))
    sizes = {"name": "sizes", "vram": "24G", "ram": "64G", "gpu_bandwidth_gbps": 936, "ram_bandwidth_gbps": 50}
    datasheet = fit_model(llama8b, HardwareClass.model_validate(sizes))
    assert calibrated.verdict == datasheet.verdict == "full_offload"
    assert calibrated.tokens_per_second < datasheet.tokens_per_second
    assert calibrated.speed_basis == "calibrated catalog" and datasheet.speed_basis == "datasheet only"
    assert calibrated.prompt_tokens_per_second and datasheet.prompt_tokens_per_second is None


def test_partial_offload_is_slower_than_full_and_its_prompt_pays_the_host_link(llama8b: Path) -> None:
    full = fit_model(llama8b, _box(["rtx3090"]))
    partial = fit_model(llama8b, _box(["rtx3090"], cpu_cores=8), RunSettings(n_gpu_layers=17))
    assert partial.verdict == "partial_offload"
    assert partial.tokens_per_second < full.tokens_per_second / 2
    assert partial.prompt_tokens_per_second is not None and full.prompt_tokens_per_second is not None
    assert partial.prompt_tokens_per_second < full.prompt_tokens_per_second


def test_experts_in_ram_are_limited_by_the_cpu_cores_when_the_class_says_how_many(tmp_path: Path) -> None:
    model = write_header_only_model(tmp_path / "qwen3-30b-a3b.gguf", QWEN3_30B_A3B)
    settings = RunSettings(n_gpu_layers=99, n_cpu_moe=36)
    few = fit_model(model, _box(["rtx2080"], ram_bandwidth_gbps=102, cpu_cores=2), settings)
    many = fit_model(model, _box(["rtx2080"], ram_bandwidth_gbps=102, cpu_cores=10), settings)
    assert few.n_cpu_moe == many.n_cpu_moe == 36
    assert few.tokens_per_second < many.tokens_per_second


def test_cpu_only_classes_keep_the_roofline(llama8b: Path) -> None:
    result = fit_model(llama8b, get_hardware("cpu-64g"))
    # Bytes read per token over the class's 50 GB/s, as before issue 21 (no calibration, no pp prediction).
    assert result.tokens_per_second == pytest.approx(50e9 / result.cpu_read_bytes, rel=0.01)
    assert result.prompt_tokens_per_second is None and result.speed_basis == "datasheet only"


@pytest.mark.parametrize(
    ("name", "gib", "card"),
    [("NVIDIA GeForce RTX 3090", 24, "rtx3090"), ("NVIDIA GeForce RTX 3060", 8, "rtx3060-8g"),
     ("NVIDIA GeForce RTX 3060", 12, "rtx3060"), ("NVIDIA A100 80GB PCIe", 80, "a100-pcie"),
     ("NVIDIA RTX 6000 Ada Generation", 48, "rtx6000-ada"), ("NVIDIA H200", 141, None)],
)  # fmt: skip
def test_a_probed_device_is_found_in_the_catalog_by_name_and_memory(name: str, gib: int, card: str | None) -> None:
    from pipeline.spec.gpus import catalog_id_for

    assert catalog_id_for(name, int(gib * GIB * 0.97)) == card


def test_measuring_without_a_gpu_is_skipped_with_the_reason() -> None:
    """This machine (and CI) has no GPU: `mm hw --measure` keeps the CPU measurement and says why."""
    from pipeline.measure.gpu import local_card, with_gpu
    from pipeline.probe.local_machine import local_gpus

    if local_gpus()[0]:
        pytest.skip("a GPU is present: the measurement itself runs (pytest -m gpu)")
    card, why = local_card()
    assert card is None and why.startswith("no GPU found")
    cpu = get_hardware("cpu-32g")
    assert with_gpu(cpu) == (cpu, why)


def test_a_card_held_to_a_low_board_power_gets_a_lower_prompt_rate_than_its_datasheet_share() -> None:
    """The same silicon at 300 W (RTX 6000 Ada) sustains less of its tensor rate in pp512 than at 450 W; a card
    without a stated board power (Apple) keeps its datasheet share."""
    for card in ("rtx6000-ada", "rtx4090", "m2-ultra"):
        gpu = get_gpu(card)
        cal = calibration(gpu)
        assert cal is not None
        quant, floats = prompt_tflops(gpu, cal)
        share = (gpu.fp16_tflops * cal.prompt_efficiency_quant, gpu.fp16_tflops * cal.prompt_efficiency_float)
        if gpu.board_power_w is None:
            assert (quant, floats) == share
        else:
            assert quant <= share[0] and floats <= share[1]
    low, high = get_gpu("rtx6000-ada"), get_gpu("rtx4090")
    assert low.fp16_tflops > high.fp16_tflops  # more tensor throughput on paper ...
    low_cal, high_cal = calibration(low), calibration(high)
    assert low_cal is not None and high_cal is not None
    assert prompt_tflops(low, low_cal)[0] < prompt_tflops(high, high_cal)[0]  # ... less at its 300 W


def test_every_nvidia_card_states_its_board_power() -> None:
    for gpu in gpu_catalog().gpus.values():
        assert (gpu.board_power_w is not None) == (gpu.backend == "cuda"), gpu.id


def test_every_public_speed_record_names_its_source_split_and_machine() -> None:
    """bench/gpu_public.py's data: each record says where it was published and which split it belongs to, and a
    run that keeps weights in RAM states the machine's RAM bandwidth and cores (the CPU side is costed from them)."""
    with Path("bench/data/gpu_public.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} <= {"calibration", "held-back", "excluded"}
    assert {row["basis"] for row in rows} <= {"reported rate", "request average"}
    for row in rows:
        assert row["source"].startswith(("github.com/", "https://")), row["source"]
        hybrid = row["gpus"] and (int(row["n_cpu_moe"]) > 0 or int(row["n_gpu_layers"]) < 99)
        if hybrid or not row["gpus"]:
            assert float(row["ram_bandwidth_gbps"]) > 0 and int(row["cpu_cores"]) > 0, row["source"]
        if row["gpus"]:
            assert all(gpu in gpu_catalog().gpus for gpu in row["gpus"].split("+"))
    kinds = {("moe" if int(r["n_cpu_moe"]) else "partial" if int(r["n_gpu_layers"]) < 99 else "full", r["split"])
             for r in rows if r["gpus"]}  # fmt: skip
    assert {(kind, split) for kind in ("full", "partial", "moe") for split in ("calibration", "held-back")} <= kinds


def test_every_weight_type_has_a_cpu_kernel_factor_or_a_stated_sibling_relative_to_the_measured_type() -> None:
    """gpus.toml [cpu_kernels] is normalised to the type CPU_CORE_GFLOPS was measured on, and every type a weight
    can be stored in (not the integer types) reaches a factor, itself or along speed.py's SIBLING rules."""
    kernels = gpu_catalog().cpu_kernels
    assert kernels is not None and kernels.reference == CPU_CORE_TYPE and kernels.factors[CPU_CORE_TYPE] == 1.0
    assert gpu_catalog().sources[kernels.source]
    factors = cpu_kernel_factors()
    for kind in (t.name for t in GGML_TYPES if not t.name.startswith("I") or t.name.startswith("IQ")):
        assert measured_sibling(kind, factors) is not None, kind
    with pytest.raises(ValueError, match=r"reference type Q4_K must have the factor 1\.0"):
        CpuKernels(reference="Q4_K", factors={"Q4_K": 2.0, "Q5_K": 1.0}, source="cpu-kernels-epyc")


def test_an_mxfp4_expert_cpu_side_computes_slower_than_q4_k_at_equal_bytes() -> None:
    """llama.cpp's MXFP4 kernel (a 16-entry value table per index) runs below its Q4_K kernel (measured per type by
    `mm hw --measure`), so an unmeasured CPU's compute side takes longer for the same bytes of MXFP4 experts."""
    cores, size = 10, 600 * 10**6
    rates = cpu_kernel_rates(cores)
    seconds, per_element = {}, {}
    for kind in ("MXFP4", "Q4_K"):
        elements, nbytes = block_size(kind)
        seconds[kind] = compute_seconds(DeviceWork(size, {kind: size * elements // nbytes}), rates)
        per_element[kind] = seconds[kind] / (size * elements // nbytes)
    assert seconds["MXFP4"] > seconds["Q4_K"] > 0
    assert per_element["MXFP4"] > 1.2 * per_element["Q4_K"]  # the kernel, not only MXFP4's 4.25 bits against 4.5
    assert compute_seconds(DeviceWork(size, {"Q4_K": 10**9}), cpu_kernel_rates(0)) == 0.0  # cores unknown
