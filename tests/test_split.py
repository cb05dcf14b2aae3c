"""Split GGUF models (gguf-split shards that llama.cpp loads from the first) through every command that reads them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest
from typer.testing import Result

from pipeline.tiny_model import TinySpec, write_tiny_model
from tests.hub import LocalHub

Mm = Callable[..., Result]
SPEC = TinySpec(n_layers=4, n_embd=512, n_head=8, n_head_kv=4, n_ff=1024, dtype="f16", seed=7)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the first of three shards, the same model in one file)."""
    folder = tmp_path_factory.mktemp("split")
    first = write_tiny_model(folder / "tiny.gguf", SPEC.with_(split_max_tensors=16))
    single = write_tiny_model(folder / "single" / "tiny.gguf", SPEC)
    return first, single


def _json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_factory_writes_shards_llama_cpp_loads(models: tuple[Path, Path]) -> None:
    first, _ = models
    assert first.name == "tiny-00001-of-00003.gguf"
    assert sorted(p.name for p in first.parent.glob("tiny-*.gguf"))[-1] == "tiny-00003-of-00003.gguf"
    llm = llama_cpp.Llama(model_path=str(first), n_ctx=64, verbose=False)
    assert llm("hello", max_tokens=3)["usage"]["completion_tokens"] >= 1


def test_inspect_and_fit_see_the_whole_split_model(mm: Mm, models: tuple[Path, Path]) -> None:
    first, single = models
    split_info, single_info = _json(mm("inspect", str(first), "--json")), _json(mm("inspect", str(single), "--json"))
    assert split_info["shards"] == 3 and single_info["shards"] == 1
    for key in ("n_params", "tensor_types", "n_layers"):
        assert split_info[key] == single_info[key], key
    # The shards carry three headers instead of one; the weights are the same bytes.
    assert 0 < split_info["size_bytes"] - single_info["size_bytes"] < 64 << 10  # type: ignore[operator]
    split_fit = _json(mm("fit", str(first), "--hardware", "rtx3060-12g", "--json"))
    single_fit = _json(mm("fit", str(single), "--hardware", "rtx3060-12g", "--json"))
    for key in ("gpu", "cpu", "n_gpu_layers", "verdict"):
        assert split_fit[key] == single_fit[key], key


def test_quantize_of_a_split_model_makes_one_working_file(mm: Mm, models: tuple[Path, Path]) -> None:
    first, _ = models
    doc = mm("quantize", str(first), "--to", "q4_k_m", "--json")
    assert doc.exit_code == 0, doc.stderr
    [result] = json.loads(doc.stdout)
    output = Path(result["output"])
    assert "-of-" not in output.name and output.is_file()
    assert result["record"]["source"]["path"] == str(first)
    assert len(result["record"]["source"]["shards"]) == 3
    assert result["record"]["source"]["size_bytes"] == sum(p.stat().st_size for p in first.parent.glob("tiny-0*.gguf"))
    llm = llama_cpp.Llama(model_path=str(output), n_ctx=64, verbose=False)
    assert llm("hello", max_tokens=3)["usage"]["completion_tokens"] >= 1


def test_publish_refuses_a_split_model_clearly(mm: Mm, models: tuple[Path, Path]) -> None:
    result = mm("publish", str(models[0]), "--hardware", "rtx3060-12g")
    assert result.exit_code != 0
    assert "split" in result.stderr and "llama-gguf-split" in result.stderr and "Traceback" not in result.output


def test_split_model_from_the_hub_fits_before_pull_then_pulls_and_quantizes(
    mm: Mm, local_hub: LocalHub, models: tuple[Path, Path]
) -> None:
    first, _ = models
    shards = sorted(first.parent.glob("tiny-*-of-00003.gguf"))
    local_hub.add_repo("acme/Tiny-Split-GGUF", {p.name: p for p in shards})
    ref = f"acme/Tiny-Split-GGUF:{first.name}"
    before = _json(mm("fit", ref, "--hardware", "rtx3060-12g", "--json"))  # from header stubs alone
    local = _json(mm("fit", str(first), "--hardware", "rtx3060-12g", "--json"))
    for key in ("gpu", "cpu", "n_gpu_layers", "verdict"):
        assert before[key] == local[key], key
    pulled = mm("pull", ref, "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert sorted(f["filename"] for f in json.loads(pulled.stdout)) == [p.name for p in shards]
    quantized = mm("quantize", ref, "--to", "q8_0", "--json")
    assert quantized.exit_code == 0, quantized.stderr
    [result] = json.loads(quantized.stdout)
    assert result["record"]["source"]["repo"] == "acme/Tiny-Split-GGUF"
    assert len(result["record"]["source"]["shards"]) == 3
