"""`mm inspect`, `mm fit` and `mm hw` driven the way a user runs them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

from tests.conftest import write_recipe

Mm = Callable[..., Result]


def test_inspect_json(mm: Mm, tiny_model: Path) -> None:
    result = mm("inspect", str(tiny_model), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["architecture"] == "llama" and doc["n_layers"] == 2 and doc["n_head_kv"] == 2
    assert doc["n_vocab"] == 320 and doc["tensor_types"] == {
        "F32": 1 + 2 * 9 + 2
    }  # embeddings, 9 per layer, norm + head


def test_fit_json_schema(mm: Mm, tiny_model_f16: Path) -> None:
    result = mm("fit", str(tiny_model_f16), "--hardware", "rtx3060-12g", "--ctx", "2048", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    for key in ("n_layers", "n_gpu_layers", "vram_bytes", "ram_bytes", "tokens_per_second", "verdict"):
        assert key in doc
    assert set(doc["gpu"]) == {"weights_bytes", "kv_bytes", "output_bytes", "compute_bytes", "overhead_bytes",
                               "total_bytes"}  # fmt: skip
    assert doc["verdict"] == "full_offload" and doc["settings"]["n_ctx"] == 2048


def test_fit_vram_zero_is_cpu_only(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "--vram", "0", "--ram", "8G", "--json")
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "cpu_only" and doc["n_gpu_layers"] == 0 and doc["vram_bytes"] == 0


def test_fit_table_and_quants(mm: Mm, tiny_model_f16: Path) -> None:
    result = mm("fit", str(tiny_model_f16), "--hardware", "cpu-32g")
    assert result.exit_code == 0 and "CPU only" in result.stdout and "compute" in result.stdout
    result = mm("fit", str(tiny_model_f16), "--hardware", "cpu-32g", "--quants", "q4_k_m,q8_0", "--json")
    doc = json.loads(result.stdout)
    assert [c["type"] for c in doc["candidates"]] == ["q4_k_m", "q8_0"]
    assert {"type", "file_bytes", "n_gpu_layers", "tokens_per_second", "fits"} <= set(doc["candidates"][0])
    assert doc["recommended"] == "q8_0"


def test_fit_recurrent_model(mm: Mm, tmp_path: Path) -> None:
    from pipeline.gguf.tiny_model import write_tiny_model
    from pipeline.gguf.tiny_tensors import TinySpec

    model = write_tiny_model(tmp_path / "mamba.gguf", TinySpec(arch="mamba", n_vocab=512))
    result = mm("inspect", str(model), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["architecture"] == "mamba"
    one, four = (
        json.loads(mm("fit", str(model), "--vram", "0", "--ram", "8G", "--parallel", n, "--json").stdout)
        for n in ("1", "4")
    )
    assert one["verdict"] == "cpu_only" and any("recurrent" in a for a in one["assumptions"])
    assert four["cpu"]["kv_bytes"] == 4 * one["cpu"]["kv_bytes"] > 0  # one state per sequence


def test_fit_from_recipe_uses_its_hardware_and_run_settings(mm: Mm, tiny_model: Path, recipes_folder: Path) -> None:
    write_recipe(
        recipes_folder, "tiny", f'hardware = "rtx3060-12g"\n[source]\npath = "{tiny_model}"\n[run]\nctx = 1024\n'
    )
    result = mm("fit", "tiny", "--recipes", str(recipes_folder), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["hardware"] == "rtx3060-12g" and doc["settings"]["n_ctx"] == 1024


def test_bad_inputs_are_clear_errors(mm: Mm, tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    result = mm("inspect", str(bad))
    assert result.exit_code == 6 and "not a GGUF file" in result.stderr
    result = mm("fit", str(tiny_model), "--hardware", "nope")
    assert result.exit_code == 2 and "unknown hardware class" in result.stderr
    result = mm("fit", str(tiny_model), "--vram", "lots")
    assert result.exit_code == 2
    # Not pulled: fit reads the header from the Hub, which is unreachable here — a clear Hub error.
    result = mm("fit", "someone/repo:model.gguf")
    assert result.exit_code == 3 and "cannot reach" in result.stderr
    result = mm("fit", "someone/repo:model.gguf", "--offline")
    assert result.exit_code == 3


def test_hw_lists_classes(mm: Mm) -> None:
    result = mm("hw", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["ram_bytes"] > 0 and any(c["name"] == "rtx3060-12g" for c in doc["classes"])


def test_moe_fit_json_carries_the_expert_placement(mm: Mm, tmp_path: Path) -> None:
    from pipeline.gguf.tiny_model import write_tiny_model
    from tests.test_fit import ARCHS

    model = write_tiny_model(tmp_path / "moe.gguf", ARCHS["qwen3moe"])
    result = mm("fit", str(model), "--hardware", "rtx3060-12g", "--n-cpu-moe", "1", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 3 and doc["n_cpu_moe"] == 1 and doc["n_gpu_layers"] == 3
    assert doc["tensor_overrides"] == [r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"]
    assert (doc["n_expert"], doc["n_expert_used"]) == (8, 2) and doc["active_params"] < doc["n_params"]
    assert doc["cpu_read_bytes"] > 0 and doc["gpu_read_bytes"] > 0 and doc["verdict"] == "partial_offload"
    text = mm("fit", str(model), "--hardware", "rtx3060-12g", "--cpu-moe").stdout
    assert "experts of layers 0-1 in RAM, everything else on the GPU" in text
    assert "whole layers only" in text  # the side-by-side comparison
    inspect = json.loads(mm("inspect", str(model), "--json").stdout)
    assert (inspect["n_expert"], inspect["n_expert_used"], inspect["n_ff_exp"]) == (8, 2, 256)
    assert "2 used per token" in mm("inspect", str(model)).stdout


def test_recipe_run_section_places_experts(mm: Mm, recipes_folder: Path, tmp_path: Path) -> None:
    from pipeline.gguf.tiny_model import write_tiny_model
    from tests.test_fit import ARCHS

    write_tiny_model(recipes_folder / "moe.gguf", ARCHS["qwen3moe"])
    write_recipe(
        recipes_folder, "moe", 'hardware = "rtx3060-12g"\n[source]\npath = "moe.gguf"\n[run]\ncpu_moe = true\n'
    )
    doc = json.loads(mm("fit", "moe", "--recipes", str(recipes_folder), "--json").stdout)
    assert doc["n_cpu_moe"] == 2 and doc["settings"]["cpu_moe"] is True
    write_recipe(
        recipes_folder, "bad", 'hardware = "rtx3060-12g"\n[source]\npath = "moe.gguf"\n[run]\nn_cpu_moe = -1\n'
    )
    bad = mm("recipe", "validate", str(recipes_folder / "bad.toml"))
    assert bad.exit_code == 2 and "n_cpu_moe" in bad.output


def test_sizes_called_exact_equal_the_quantized_files(mm: Mm, tmp_path: Path) -> None:
    """A Q4_K_M source with a big vocabulary (its header alone is ~0.6 MB here, several MB at 262k tokens):
    every candidate size labelled exact is the size of the file llama.cpp then writes, header included."""
    from pipeline.gguf.tiny_model import write_tiny_model
    from pipeline.gguf.tiny_tensors import TinySpec

    source = write_tiny_model(tmp_path / "vocab-f16.gguf", TinySpec(n_vocab=32768, dtype="f16"))
    q4 = tmp_path / "vocab.q4_k_m.gguf"
    assert mm("quantize", str(source), "--to", "q4_k_m", "--output", str(q4), "-q").exit_code == 0
    fitted = mm("fit", str(q4), "--hardware", "cpu-32g", "--quants", "q2_k,q3_k_m", "--json")
    assert fitted.exit_code == 0, fitted.output
    predicted = {c["type"]: c["file_bytes"] for c in json.loads(fitted.stdout)["candidates"] if c["exact_sizes"]}
    assert set(predicted) == {"q2_k", "q3_k_m"}
    for qtype, size in predicted.items():
        out = tmp_path / f"vocab.{qtype}.gguf"
        made = mm("quantize", str(q4), "--to", qtype, "--allow-requantize", "--output", str(out), "-q")
        assert made.exit_code == 0, made.output
        assert size == out.stat().st_size, qtype


def test_moe_fit_says_why_its_placement(mm: Mm, tmp_path: Path) -> None:
    from pipeline.gguf.tiny_model import write_tiny_model
    from tests.test_fit import ARCHS

    model = write_tiny_model(tmp_path / "moe.gguf", ARCHS["qwen3moe"])
    doc = json.loads(mm("fit", str(model), "--hardware", "rtx3060-12g", "--json").stdout)
    assert doc["placement_reason"].startswith("llama.cpp's fit order")  # everything fits: nothing to choose
    asked = json.loads(mm("fit", str(model), "--hardware", "rtx3060-12g", "--n-cpu-moe", "1", "--json").stdout)
    assert asked["placement_reason"].startswith("the placement asked for")


# --- issue 22 point 12: figures that agree with what was given ------------------------------------------------


def test_a_gpu_too_small_for_any_layer_is_not_no_gpu(mm: Mm, tiny_model: Path) -> None:
    """307 MiB is below the 512 MiB runtime overhead a GPU class keeps: nothing goes there, yet a GPU was given."""
    result = mm("fit", str(tiny_model), "--vram", "0.3", "--ram", "4")
    assert result.exit_code == 0, result.output
    assert "n/a (no GPU)" not in result.stdout and "fits VRAM: no layer fits in 307 MiB" in result.stdout
    assert "fits VRAM: n/a (no GPU)" in mm("fit", str(tiny_model), "--vram", "0", "--ram", "4").stdout


def test_vram_units_are_read_as_written_and_the_bandwidth_is_named(mm: Mm, tiny_model: Path) -> None:
    bits = mm("fit", str(tiny_model), "--vram", "12Gb")
    assert bits.exit_code == 2 and "ambiguous" in bits.stderr and "12G or 12GiB" in bits.stderr
    binary = mm("fit", str(tiny_model), "--vram", "12G")
    assert "(12 GiB VRAM" in binary.stdout
    assert "a GPU given by its size alone reads 360 GB/s" in binary.stderr
    assert "(11.2 GiB VRAM" in mm("fit", str(tiny_model), "--vram", "12GB").stdout  # decimal, as SIZE_HELP says
    catalog = mm("fit", str(tiny_model), "--hardware", "rtx3060-12g")
    assert "given by its size alone" not in catalog.stderr
