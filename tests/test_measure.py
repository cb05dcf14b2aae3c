"""mm bench, mm eval and mm hw --measure: measured figures, where they are stored, and what they agree with."""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.fitting.speed import DeviceRates, DeviceWork, token_seconds
from pipeline.gguf.tiny_model import _WORDS, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.tools import BuiltTools
from pipeline.measure.evaluate import evaluate
from pipeline.spec.hardware import load_hardware_file
from tests.test_llama_log import LLAMA_LINE, llama_logs, mm_process

Mm = Callable[..., Result]


def _text(path: Path, words: int = 4000, seed: int = 1) -> Path:
    import random

    rng = random.Random(seed)
    path.write_text(" ".join(rng.choice(_WORDS) for _ in range(words)) + "\n")
    return path


def _quantize(source: Path, target: Path, ftype: int) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) == 0
    return target


def test_roofline_takes_the_slower_of_memory_and_compute() -> None:
    rates = DeviceRates(bandwidth_gbps=10, gflops={"Q8_0": 20})
    memory_bound = DeviceWork(bytes_read=10**9, elements={"Q8_0": 10**6})  # 0.1 s vs 0.0001 s
    compute_bound = DeviceWork(bytes_read=10**6, elements={"Q8_0": 10**9})  # 0.0001 s vs 0.1 s
    assert token_seconds([(memory_bound, rates)]) == pytest.approx(0.1)
    assert token_seconds([(compute_bound, rates)], overhead=0.01) == pytest.approx(0.11)
    assert token_seconds([(compute_bound, DeviceRates(bandwidth_gbps=10))]) == pytest.approx(1e-4)  # no rates


def test_bench_measures_and_stores_in_the_profile(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    model = shutil.copy(tiny_model, tmp_path / "tiny.gguf")
    assert mm("publish", str(model), "-H", "cpu-32g", "--ctx", "512", "--name", "tiny").exit_code == 0
    run = mm("bench", "tiny", "-p", "64", "-n", "16", "-r", "3", "--json")
    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    for test, n in (("pp", 64), ("tg", 16)):
        figure = result[test]
        assert figure["n_tokens"] == n and len(figure["samples_ts"]) == 3
        assert 0 < figure["min_ts"] <= figure["median_ts"] <= figure["max_ts"]
    assert result["predicted_tg_ts"] > 0 and result["threads"] >= 1
    listed = json.loads(mm("ls", "--json").stdout)["profiles"][0]
    (on_this_machine,) = listed["measured"]
    assert on_this_machine["tokens_per_second"] == result["tg"]["median_ts"]
    assert on_this_machine["machine_id"] == result["machine"]["id"]
    shown = mm("show", "tiny")
    assert "measured on" in shown.stdout and "(mm bench)" in shown.stdout
    (stored,) = json.loads(mm("show", "tiny", "--json").stdout)["measured"]["benches"]
    assert stored["tg"]["samples_ts"] == result["tg"]["samples_ts"]


def test_bench_a_model_file_needs_no_profile(mm: Mm, tiny_model_f16: Path) -> None:
    run = mm("bench", str(tiny_model_f16), "-p", "0", "-n", "8", "-r", "2", "--json")
    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["pp"] is None and result["tg"]["n_tokens"] == 8


def test_eval_of_a_model_against_itself(tiny_model_f16: Path, tmp_path: Path) -> None:
    text = _text(tmp_path / "t.txt")
    r = evaluate(tiny_model_f16, tiny_model_f16, text, text="t", text_sha256="0" * 64, n_ctx=128, chunks=3)
    assert r.tokens_scored == 3 * 63
    assert r.ppl == pytest.approx(r.ppl_ref, rel=1e-6)
    assert r.kld_mean < 1e-6  # only llama.cpp's uint16 storage of the reference log-probs
    assert r.same_top_rate == 1.0


def test_eval_cli_on_a_text_too_short_is_one_clear_error(mm: Mm, tiny_model_f16: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("hello world")
    run = mm("eval", str(tiny_model_f16), "--ref", str(tiny_model_f16), "--text", str(short), "--ctx", "128")
    assert run.exit_code == 2 and "needs at least 256" in run.stderr


def _perplexity_figures(output: str) -> dict[str, float]:
    grab = {
        "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)", "ppl_base": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
        "kld": r"Mean\s+KLD:\s*([\d.]+)", "same": r"Same top p:\s*([\d.]+)",
    }  # fmt: skip
    found = {key: re.search(pattern, output) for key, pattern in grab.items()}
    missing = [key for key, match in found.items() if match is None]
    assert not missing, f"llama-perplexity printed no {missing}:\n{output[-3000:]}"
    return {key: float(match[1]) for key, match in found.items() if match is not None}


@pytest.mark.slow
def test_eval_matches_llama_perplexity_kl_divergence(
    mm: Mm, llama_tools: BuiltTools, tiny_model_f16: Path, tmp_path: Path
) -> None:
    quant = _quantize(tiny_model_f16, tmp_path / "q2_k.gguf", 10)  # LLAMA_FTYPE_MOSTLY_Q2_K
    text = _text(tmp_path / "t.txt")
    run = mm("eval", str(quant), "--ref", str(tiny_model_f16), "--text", str(text), "--ctx", "128", "--chunks", "4",
             "--json")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    ours = json.loads(run.stdout)
    tool = str(llama_tools.path("llama-perplexity"))
    common = [
        "-f",
        str(text),
        "-c",
        "128",
        "-b",
        "128",
        "--chunks",
        "4",
        "--kl-divergence-base",
        str(tmp_path / "b.kld"),
    ]
    subprocess.run([tool, "-m", str(tiny_model_f16), *common], check=True, capture_output=True)
    for _ in range(3):  # llama.cpp's asynchronous logger sometimes loses its last lines at exit
        argv = [tool, "-m", str(quant), *common, "--kl-divergence"]
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
        if "Same top p:" in out.stdout + out.stderr:
            break
    theirs = _perplexity_figures(out.stdout + out.stderr)
    assert ours["kld_mean"] > 0
    assert ours["kld_mean"] == pytest.approx(theirs["kld"], rel=0.01)
    assert ours["ppl"] == pytest.approx(theirs["ppl"], rel=0.01)
    assert ours["ppl_ref"] == pytest.approx(theirs["ppl_base"], rel=0.01)
    assert 100 * ours["same_top_rate"] == pytest.approx(theirs["same"], abs=1.0)


def test_hw_save_writes_a_class_hardware_toml_reads(tmp_path: Path) -> None:
    from pipeline.measure.machine import save_class
    from pipeline.spec.hardware import CpuRates, HardwareClass

    measured = HardwareClass.model_validate({
        "name": "local", "ram": "16G", "ram_bandwidth_gbps": 21.5, "threads": 1, "measured": 'by "test"',
        "cpu_rates": {
            1: CpuRates(gflops={"Q8_0": 14.2, "F16": 9.0}, token_overhead_ms=0.01, layer_overhead_ms=0.07,
                        cache_bytes=32 << 20),
            2: CpuRates(gflops={"Q8_0": 27.5}, token_overhead_ms=0.012, layer_overhead_ms=0.04, cache_bytes=32 << 20),
        },
    })  # fmt: skip
    path = tmp_path / "hardware.toml"
    path.write_text('[other]\nram = "8G"\nram_bandwidth_gbps = 10\n')
    save_class(measured, "box", path)
    save_class(measured.model_copy(update={"ram_bandwidth_gbps": 30.0}), "box", path)  # replaces, not duplicates
    classes = {c.name: c for c in load_hardware_file(path)}
    assert set(classes) == {"other", "box"}
    box = classes["box"]
    assert box.ram_bandwidth_gbps == 30.0 and box.cpu_rates[1].gflops["Q8_0"] == 14.2 and box.measured == 'by "test"'
    # What tomllib reads back is the class measured, every field (cache_bytes of each rates table too).
    assert box == measured.model_copy(update={"name": "box", "ram_bandwidth_gbps": 30.0})
    assert box.cpu_rates[2].cache_bytes == 32 << 20


@pytest.mark.slow
def test_measured_prediction_lands_within_20_percent_on_a_compute_bound_model(mm: Mm, tmp_path: Path) -> None:
    """After `mm hw --measure`, fit's decode prediction for this machine is within 20% of `mm bench`'s steady
    figure (prediction_error), and the measurement carries each rate's spread and error; llama.cpp's log of the
    calibration goes to $MM_HOME/logs/hw-measure.log, not the terminal."""
    source = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_embd=768, n_head=6, n_head_kv=2, n_ff=2048, n_layers=4))
    model = _quantize(source, tmp_path / "m-q4_k_m.gguf", 15)  # small enough to stay in cache: compute-bound
    for _attempt in range(3):  # a machine shared with other work: more tries if a load spike skewed either
        measured = mm_process("hw", "--measure", "--threads", "1", "--json")  # as a user runs it: output in pipes
        assert measured.returncode == 0, measured.stderr
        assert not LLAMA_LINE.search(measured.stdout + measured.stderr), measured.stderr  # llama.cpp's log...
        assert "llama_model_loader: loaded meta data" in llama_logs()["hw-measure.log"]  # ...is in its file
        rates = json.loads(measured.stdout)["cpu_rates"]["1"]
        assert rates["gflops"]["Q4_K"] > 0 and rates["error"]["Q4_K"] > 0 and 0 < rates["ram_compute_share"] <= 1
        run = mm("bench", str(model), "-p", "0", "-n", "64", "-r", "5", "--threads", "1", "--json")
        assert run.exit_code == 0, run.stderr
        result = json.loads(run.stdout)
        assert "mm hw --measure" in result["hardware"]
        if abs(result["prediction_error"]) <= 0.20:
            break
    assert abs(result["prediction_error"]) <= 0.20, result


def test_build_evals_and_benches_each_quant_once_and_the_profile_carries_both(
    mm: Mm, tiny_model_f16: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    source = shutil.copy(tiny_model_f16, folder / "tiny-f16.gguf")
    _text(folder / "eval.txt")
    (folder / "tiny.toml").write_text(
        f'hardware = "cpu-32g"\n[source]\npath = "{Path(source).name}"\n[quantize]\ntypes = ["q8_0"]\n'
        '[run]\nctx = 512\n[eval]\ntext = "eval.txt"\nchunks = 2\nctx = 128\n'
        "[bench]\nn_prompt = 16\nn_gen = 8\nrepetitions = 2\n"
    )
    first = mm("build", "tiny", "--recipes", str(folder), "--json")
    assert first.exit_code == 0, first.output
    stages = {s["name"]: s["status"] for s in json.loads(first.stdout)["recipes"][0]["stages"]}
    assert stages["eval:q8_0"] == stages["bench:q8_0"] == stages["publish:q8_0"] == "ran"
    measured = json.loads(mm("show", "tiny-q8_0", "--json").stdout)["measured"]
    (bench,) = measured["benches"]
    assert bench["tg"]["n_tokens"] == 8 and bench["tg"]["median_ts"] > 0
    (evaluation,) = measured["evals"]
    assert evaluation["tokens_scored"] == 2 * 63 and evaluation["kld_mean"] > 0
    assert evaluation["text_sha256"] == hashlib.sha256((folder / "eval.txt").read_bytes()).hexdigest()
    again = mm("build", "tiny", "--recipes", str(folder), "--json")
    assert again.exit_code == 0, again.output
    assert {s["status"] for s in json.loads(again.stdout)["recipes"][0]["stages"]} == {"skipped"}
    assert json.loads(mm("show", "tiny-q8_0", "--json").stdout)["measured"] == measured


def test_fit_quants_shows_measured_quality_where_evaluated_and_the_reference_elsewhere(
    mm: Mm, tiny_model_f16: Path, tmp_path: Path
) -> None:
    source = Path(shutil.copy(tiny_model_f16, tmp_path / "tiny-f16.gguf"))
    quant = _quantize(source, tmp_path / "tiny-q8_0.gguf", 7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert mm("publish", str(quant), "-H", "cpu-32g", "--name", "tiny-q8").exit_code == 0
    text = _text(tmp_path / "t.txt")
    run = mm("eval", "tiny-q8", "--ref", str(source), "--text", str(text), "--ctx", "128", "--chunks", "2", "--json")
    assert run.exit_code == 0, run.stderr
    evaluation = json.loads(run.stdout)
    report = mm("fit", str(source), "-H", "cpu-32g", "--quants", "q8_0,q4_0", "--json")
    assert report.exit_code == 0, report.stderr
    candidates = {c["type"]: c for c in json.loads(report.stdout)["candidates"]}
    assert candidates["q8_0"]["measured_kld"] == evaluation["kld_mean"]
    assert candidates["q8_0"]["measured_ppl_delta"] == pytest.approx(evaluation["ppl"] - evaluation["ppl_ref"])
    assert candidates["q4_0"]["measured_kld"] is None and candidates["q4_0"]["ppl_delta"] is not None
    shown = mm("fit", str(source), "-H", "cpu-32g", "--quants", "q8_0,q4_0")
    assert "measured" in shown.stdout and f"KLD {evaluation['kld_mean']:.4f}" in shown.stdout
    assert "not this model" in shown.stderr
