"""Split GGUF models (gguf-split shards that llama.cpp loads from the first) through every command that reads them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import llama_cpp
import pytest
from typer.testing import Result

from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.hub import Fault, LocalHub

Mm = Callable[..., Result]
SPEC = TinySpec(n_layers=4, n_embd=512, n_head=8, n_head_kv=4, n_ff=1024, dtype="f16", seed=7)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the first of three shards, the same model in one file)."""
    folder = tmp_path_factory.mktemp("split")
    first = write_tiny_model(folder / "tiny.gguf", SPEC.with_(split_max_tensors=16))
    single = write_tiny_model(folder / "single" / "tiny.gguf", SPEC)
    return first, single


def _generates(model: str | Path) -> bool:
    """llama.cpp loads `model` (the first shard of a split one) and generates at least one token."""
    out = llama_cpp.Llama(model_path=str(model), n_ctx=64, verbose=False).create_completion("hello", max_tokens=3)
    assert isinstance(out, dict)
    return out["usage"]["completion_tokens"] >= 1


def _json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_factory_writes_shards_llama_cpp_loads(models: tuple[Path, Path]) -> None:
    first, _ = models
    assert first.name == "tiny-00001-of-00003.gguf"
    assert sorted(p.name for p in first.parent.glob("tiny-*.gguf"))[-1] == "tiny-00003-of-00003.gguf"
    assert _generates(str(first))


def test_inspect_and_fit_see_the_whole_split_model(mm: Mm, models: tuple[Path, Path]) -> None:
    first, single = models
    split_info, single_info = _json(mm("inspect", str(first), "--json")), _json(mm("inspect", str(single), "--json"))
    assert split_info["shards"] == 3 and single_info["shards"] == 1
    for key in ("n_params", "tensor_types", "n_layers", "weights_bytes", "file_type"):
        assert split_info[key] == single_info[key], key
    assert sum(split_info["tensor_types"].values()) == len(gguf.GGUFReader(single).tensors)  # type: ignore[attr-defined]
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
    assert _generates(str(output))
    # Named by its last shard (llama.cpp itself refuses that), it is the same model: the same output, up to date.
    again = mm("quantize", str(first.with_name("tiny-00003-of-00003.gguf")), "--to", "q4_k_m", "--json")
    assert again.exit_code == 0, again.stderr
    [second] = json.loads(again.stdout)
    assert second["output"] == result["output"] and "up to date" in second["skipped"]
    assert second["record"]["source"]["path"] == str(first)


def test_a_missing_shard_is_named_by_every_command(
    mm: Mm, models: tuple[Path, Path], tmp_path: Path, isolated_env: Path
) -> None:
    first, _ = models
    for index in (1, 3):
        name = f"tiny-{index:05d}-of-00003.gguf"
        shutil.copy(first.with_name(name), tmp_path / name)
    for argv in (["inspect"], ["fit", "--vram", "0"], ["quantize", "--to", "q8_0"]):
        result = mm(argv[0], str(tmp_path / first.name), *argv[1:])
        assert result.exit_code == 6, (argv, result.output)
        assert "missing tiny-00002-of-00003.gguf" in result.stderr
    assert not list((isolated_env / "quant").glob("*.gguf"))


def test_publish_refuses_a_split_model_clearly(mm: Mm, models: tuple[Path, Path]) -> None:
    result = mm("publish", str(models[0]), "--hardware", "rtx3060-12g")
    assert result.exit_code != 0
    assert "split" in result.stderr and "llama-gguf-split" in result.stderr


def test_split_model_from_the_hub_fits_before_pull_then_pulls_and_quantizes(
    mm: Mm, local_hub: LocalHub, models: tuple[Path, Path], isolated_env: Path
) -> None:
    first, _ = models
    shards = sorted(first.parent.glob("tiny-*-of-00003.gguf"))
    local_hub.add_repo("acme/Tiny-Split-GGUF", {p.name: p for p in shards})
    ref = f"acme/Tiny-Split-GGUF:{first.name}"
    before = _json(mm("fit", ref, "--hardware", "rtx3060-12g", "--json"))  # from header stubs alone
    local = _json(mm("fit", str(first), "--hardware", "rtx3060-12g", "--json"))
    for key in ("gpu", "cpu", "n_gpu_layers", "verdict", "tokens_per_second"):
        assert before[key] == local[key], key
    for shard in shards:  # every shard's header was read, and only a header's worth of bytes
        gets = local_hub.file_gets(shard.name)
        assert gets and all(g.range is not None for g in gets), shard.name
        assert sum(g.body_bytes for g in gets) < shard.stat().st_size, shard.name
    assert not list((isolated_env / "hub").rglob("*.gguf")), "fit must not pull"

    pulled = mm("pull", ref, "--json")
    assert pulled.exit_code == 0, pulled.stderr
    files = json.loads(pulled.stdout)
    assert [f["filename"] for f in files] == [p.name for p in shards]
    for entry, shard in zip(files, shards, strict=True):
        assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
        assert Path(entry["path"]).read_bytes() == shard.read_bytes()
    local_hub.clear_log()
    quantized = mm("quantize", ref, "--to", "q4_k_m", "--json")
    assert quantized.exit_code == 0, quantized.stderr
    assert not local_hub.requests, "quantize works from the cache"
    [result] = json.loads(quantized.stdout)
    source = result["record"]["source"]
    assert (source["repo"], source["file"], source["commit"]) == (
        "acme/Tiny-Split-GGUF",
        first.name,
        files[0]["commit"],
    )
    assert len(source["shards"]) == 3
    assert _generates(result["output"])


def test_pull_of_a_split_model_rejects_a_corrupted_shard(
    mm: Mm, local_hub: LocalHub, models: tuple[Path, Path], isolated_env: Path
) -> None:
    first, _ = models
    shards = sorted(first.parent.glob("tiny-*-of-00003.gguf"))
    local_hub.add_repo("acme/Tiny-Split-GGUF", {p.name: p for p in shards})
    local_hub.inject("acme/Tiny-Split-GGUF", shards[1].name, Fault(corrupt=True))
    ref = f"acme/Tiny-Split-GGUF:{first.name}"
    failed = mm("pull", ref)
    assert failed.exit_code == 5 and shards[1].name in failed.stderr, failed.output
    cached = {p.name for p in (isolated_env / "hub").rglob("*.gguf")}
    assert shards[1].name not in cached
    quantize = mm("quantize", ref, "--to", "q8_0")  # an incomplete pull is not a model
    assert quantize.exit_code != 0 and "mm pull" in quantize.stderr
    local_hub.inject("acme/Tiny-Split-GGUF", shards[1].name, None)
    healed = mm("pull", ref, "--json")
    assert healed.exit_code == 0, healed.stderr
    assert len(json.loads(healed.stdout)) == 3


def test_a_changed_later_shard_makes_the_quantize_output_stale(
    mm: Mm, models: tuple[Path, Path], tmp_path: Path
) -> None:
    first, _ = models
    for path in first.parent.glob("tiny-0*-of-00003.gguf"):
        shutil.copy(path, tmp_path / path.name)
    assert mm("quantize", str(tmp_path / first.name), "--to", "q8_0").exit_code == 0
    other = write_tiny_model(tmp_path / "other" / "tiny.gguf", SPEC.with_(split_max_tensors=16, seed=8))
    shutil.copy(other.with_name("tiny-00003-of-00003.gguf"), tmp_path / "tiny-00003-of-00003.gguf")
    again = mm("quantize", str(tmp_path / first.name), "--to", "q8_0", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)[0]["skipped"] is None
