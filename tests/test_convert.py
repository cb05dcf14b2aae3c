"""mm convert / mm imatrix on a tiny Hugging Face llama checkpoint served by the local Hub: llama.cpp's own
converter and llama-imatrix, checked against the checkpoint's bytes, its tokenizer and llama.cpp loading."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from typer.testing import Result

from pipeline.base.home import mm_home
from pipeline.convert.env import ConverterEnv, read_requirements
from pipeline.llama.tools import BuiltTools
from tests.hf_tiny_model import corpus
from tests.hub import LocalHub

REPO = "org/tiny-llama"
# Files a transformers repo often carries that conversion does not need (and must not fetch).
UNNEEDED = {"pytorch_model.bin": b"not fetched", "README.md": b"# tiny", "original/consolidated.00.pth": b"x"}


def serve(hub: LocalHub, folder: Path, repo: str = REPO, extra: dict[str, bytes] | None = None) -> str:
    files: dict[str, bytes | Path] = {p.name: p for p in folder.iterdir() if p.is_file()}
    files.update(extra if extra is not None else UNNEEDED)
    return hub.add_repo(repo, files)


def converted_files(home: Path) -> list[Path]:
    folder = home / "converted"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """An independent reader: the safetensors header (u64 length + JSON) and bf16/f32 data as float32."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    data = raw[8 + length :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(data[start:end], dtype=np.uint16).astype(np.uint32) << 16
            values = bits.view(np.float32)
        else:
            values = np.frombuffer(data[start:end], dtype=np.float32)
        tensors[name] = values.reshape(info["shape"])
    return tensors


def gguf_tensor(path: Path, name: str) -> np.ndarray:
    reader = GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == name)
    return np.asarray(tensor.data, dtype=np.float32)


def spm_tokens(env: ConverterEnv, folder: Path, text: str) -> list[int]:
    """The checkpoint's own tokenizer (SentencePiece in the converter's environment), with BOS as llama adds it."""
    code = (
        "import sentencepiece as s, sys, json; p = s.SentencePieceProcessor(model_file=sys.argv[1]); "
        "print(json.dumps([p.bos_id()] + p.encode(sys.argv[2])))"
    )
    out = subprocess.run(
        [str(env.python), "-c", code, str(folder / "tokenizer.model"), text], capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout))


def generate(model: Path, prompt: str, n: int = 8) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=128, verbose=False, seed=1)
    return list(itertools.islice(llm.generate(llm.tokenize(prompt.encode()), temp=0.8), n))


def test_requirements_follow_includes_drop_index_options_and_pin_torch(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("numpy~=2.2.6\nsentencepiece>=0.1.98,<0.3.0\n# a comment\n")
    (tmp_path / "main.txt").write_text(
        "-r ./base.txt\n--extra-index-url https://download.pytorch.org/whl/cpu\ntorch==2.11.0 ; python_version<'4'\n"
        "transformers==4.57.6\n"
    )
    found = read_requirements(tmp_path / "main.txt", "torch==2.13.0")
    assert found == ["numpy~=2.2.6", "sentencepiece>=0.1.98,<0.3.0", "torch==2.13.0", "transformers==4.57.6"]


def test_a_repo_without_safetensors_is_refused_before_any_download(
    local_hub: LocalHub, mm: Callable[..., Result]
) -> None:
    local_hub.add_repo("org/bin-only", {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    result = mm("convert", "org/bin-only")
    assert result.exit_code == 7
    assert "no *.safetensors" in result.stderr and "org/bin-only" in result.stderr
    assert local_hub.file_gets("pytorch_model.bin") == [] and local_hub.file_gets("config.json") == []


@pytest.mark.slow
def test_convert_pulls_only_what_it_needs_and_llama_cpp_generates_from_the_result(
    local_hub: LocalHub,
    mm: Callable[..., Result],
    hf_tiny_model: Path,
    converter: ConverterEnv,
    isolated_env: Path,
) -> None:
    commit = serve(local_hub, hf_tiny_model)
    result = mm("convert", REPO, "--outtype", "f16", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    out = Path(document["output"])
    assert out.parent == isolated_env / "converted" and out.name.endswith(".f16.gguf")
    record = document["record"]
    assert record["snapshot"]["commit"] == commit and record["architecture"] == "LlamaForCausalLM"
    for name in UNNEEDED:
        assert local_hub.file_gets(name) == [], f"{name} was downloaded"
    assert local_hub.file_gets("model.safetensors") and local_hub.file_gets("tokenizer.model")

    # The weights are the checkpoint's (an independent safetensors reader), now as F16.
    checkpoint = read_safetensors(hf_tiny_model / "model.safetensors")
    for hf_name, gguf_name in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
    ]:
        np.testing.assert_allclose(gguf_tensor(out, gguf_name), checkpoint[hf_name], rtol=1e-3, atol=1e-6)
    # llama.cpp tokenizes as the checkpoint's SentencePiece tokenizer does, and generates.
    from llama_cpp import Llama

    text = "the quick brown fox jumps over the lazy dog"
    llm = Llama(model_path=str(out), n_ctx=128, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode()) == spm_tokens(converter, hf_tiny_model, text)
    assert len(generate(out, "the river")) == 8

    again = mm("convert", REPO, "--outtype", "f16", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["cached"] is True
    assert len(local_hub.file_gets("model.safetensors")) == 1  # verified in the cache, not fetched again


@pytest.mark.slow
def test_an_architecture_the_converter_lacks_is_one_clear_error(
    local_hub: LocalHub, mm: Callable[..., Result], hf_tiny_model: Path, converter: ConverterEnv, tmp_path: Path
) -> None:
    config = json.loads((hf_tiny_model / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    serve(local_hub, hf_tiny_model, "org/odd", {"config.json": json.dumps(config).encode()})
    result = mm("convert", "org/odd")
    assert result.exit_code == 7
    assert "NoSuchModelForCausalLM is not supported" in result.stderr and "--architectures" in result.stderr
    assert converted_files(tmp_path / "mm-home") == []


@pytest.mark.slow
def test_imatrix_from_a_pinned_hub_text_makes_iq2_xxs_possible(
    local_hub: LocalHub,
    mm: Callable[..., Result],
    hf_tiny_model: Path,
    converter: ConverterEnv,
    llama_tools: BuiltTools,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_LLAMA_TOOLS", str(llama_tools.bin_dir))
    serve(local_hub, hf_tiny_model)
    text_commit = local_hub.add_repo("datasets/org/texts", {"calibration.txt": corpus(7, 600).encode()})
    monkeypatch.setenv("MM_CALIBRATION_TEXT", f"org/texts:calibration.txt@{text_commit}")
    converted = json.loads(mm("convert", REPO, "--outtype", "f16", "--json").stdout)["output"]

    refused = mm("quantize", converted, "--to", "iq2_xxs")
    assert refused.exit_code == 7 and "mm imatrix" in refused.stderr

    made = mm("imatrix", converted, "--ctx", "128", "--chunks", "6", "--json")
    assert made.exit_code == 0, made.stderr
    document = json.loads(made.stdout)
    imatrix = Path(document["output"])
    assert document["record"]["text_source"] == f"org/texts:calibration.txt@{text_commit}"
    assert document["record"]["chunks_done"] == 6
    # Read back independently: a sum of squared activations per input column of each matrix of both layers.
    reader = GGUFReader(imatrix)
    assert reader.fields["imatrix.chunk_count"].contents() == 6
    sums = {t.name.removesuffix(".in_sum2"): np.asarray(t.data) for t in reader.tensors if t.name.endswith(".in_sum2")}
    matrices = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    assert set(sums) == {f"blk.{i}.{m}.weight" for i in (0, 1) for m in matrices}
    assert sums["blk.1.ffn_down.weight"].size == 512 and sums["blk.0.attn_q.weight"].size == 256
    assert all(np.isfinite(v).all() and (v >= 0).all() and v.sum() > 0 for v in sums.values())
    assert json.loads(mm("imatrix", converted, "--ctx", "128", "--chunks", "6", "--json").stdout)["cached"] is True
    # The digest cache names only files that exist: the converter's and llama-imatrix's temp files left none.
    entries = [json.loads(e.read_text())["path"] for e in mm_home().digests.glob("*.json")]
    assert converted in entries and str(imatrix) in entries
    assert [p for p in entries if not Path(p).exists()] == []

    quant = mm("quantize", converted, "--to", "iq2_xxs", "--imatrix", str(imatrix), "--json")
    assert quant.exit_code == 0, quant.stderr
    output = Path(json.loads(quant.stdout)[0]["output"])
    types = {t.name: t.tensor_type.name for t in GGUFReader(output).tensors}
    assert types["blk.0.ffn_gate.weight"] == "IQ2_XXS" and types["blk.1.attn_q.weight"] == "IQ2_XXS"
    assert len(generate(output, "the river")) == 8


def _mm_process(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _children_running(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a temporary output path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the work never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_children_die(temps: list[Path]) -> None:
    """The tool mm ran (named by its temporary output) goes with mm: nothing writes there any more."""
    assert temps
    deadline = time.monotonic() + 10
    while any(_children_running(t.name) for t in temps) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_children_running(t.name) for t in temps), "the child outlived mm"


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


@pytest.mark.slow
def test_kill_9_during_conversion_leaves_nothing_and_the_rerun_completes(
    hf_tiny_model: Path, converter: ConverterEnv, isolated_env: Path
) -> None:
    folder = isolated_env / "converted"
    proc = _mm_process("convert", str(hf_tiny_model), "--outtype", "bf16")
    # Killed while llama.cpp's converter is running and writing into its temporary file.
    _kill_when(proc, lambda: any(_children_running(t.name) for t in _temps(folder)))
    assert [p for p in converted_files(isolated_env) if not p.name.startswith(".")] == []
    _assert_children_die(_temps(folder))

    rerun = _mm_process("convert", str(hf_tiny_model), "--outtype", "bf16", "--json")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["cached"] is False and _temps(folder) == []
    assert GGUFReader(result["output"]).fields["general.file_type"].contents() == 32  # MOSTLY_BF16


@pytest.mark.slow
def test_kill_9_during_imatrix_leaves_nothing_and_the_rerun_completes(
    hf_tiny_model: Path,
    converter: ConverterEnv,
    llama_tools: BuiltTools,
    isolated_env: Path,
    tmp_path: Path,
    mm: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_LLAMA_TOOLS", str(llama_tools.bin_dir))
    converted = json.loads(mm("convert", str(hf_tiny_model), "--outtype", "f16", "--json").stdout)["output"]
    text = tmp_path / "long.txt"
    text.write_text(corpus(3, 4000))
    folder = isolated_env / "imatrix"
    logs = isolated_env / "logs"
    args = ("imatrix", converted, "--text", str(text), "--ctx", "64", "--chunks", "160")
    proc = _mm_process(*args)

    def computing() -> bool:
        return any("computing over" in log.read_text(errors="replace") for log in logs.glob("imatrix-*.log"))

    _kill_when(proc, computing)
    assert [p for p in folder.iterdir() if not p.name.startswith(".")] == []
    _assert_children_die(_temps(folder))
    rerun = mm(*args, "--json")
    assert rerun.exit_code == 0, rerun.stderr
    document = json.loads(rerun.stdout)
    assert document["cached"] is False and document["record"]["chunks_done"] == 160 and _temps(folder) == []


@pytest.mark.slow
def test_not_enough_disk_for_the_gguf_is_refused_before_converting(
    mm: Callable[..., Result],
    hf_tiny_model: Path,
    converter: ConverterEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_disk_full import disk_error, small_filesystem

    checkpoint = (hf_tiny_model / "model.safetensors").stat().st_size  # bf16: f32 needs twice as much
    with small_filesystem(tmp_path / "small", f"{(checkpoint >> 20) + 17}m") as small:
        monkeypatch.setenv("MM_HOME", str(small / "home"))
        result = mm("convert", str(hf_tiny_model), "--outtype", "f32")
        assert "converting tiny-llama to f32" in disk_error(result, small / "home" / "converted")
        assert converted_files(small / "home") == []
        assert mm("convert", str(hf_tiny_model), "--outtype", "q8_0").exit_code == 0  # 17/32 of it fits
