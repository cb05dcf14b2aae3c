"""llama.cpp integration: log parsing, engine failures, `mm llama`, and the binary engine built from source."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from typer.testing import Result

from pipeline.base.errors import LlamaError, QuantizeError
from pipeline.base.provenance import QuantParams
from pipeline.gguf.ggml_types import tensor_bytes
from pipeline.llama.engines import QuantizeLog, dry_run_in_process, find_llama_quantize, run_quantize
from pipeline.llama.quant_plan import plan
from pipeline.llama.quantize import QuantizeRequest, quantize
from pipeline.llama.tools import BuiltTools
from pipeline.llama.worker import QuantizeJob, load_imatrix
from tests.test_quantize import tensor_types, write_legacy_imatrix


def test_log_parser_reads_llama_cpp_lines() -> None:
    log = QuantizeLog()
    # Formats of src/llama-quant.cpp's LLAMA_LOG_* calls (dry run, quantize, fallback warning).
    pad = " " * 20
    assert log.feed(
        f"[   1/  21]{pad}output.weight - [  256,   320,     1,     1], type =    f32, "
        "size =    0.31 MiB ->    0.07 MiB (q6_K)"
    )
    assert log.feed(
        f"[   2/  21]{pad}output_norm.weight - [  256,     1,     1,     1], type =    f32, size = 0.001 MiB"
    )
    assert not log.feed(
        "warning: blk.0.ffn_down.weight - ncols    640 not divisible by 256 (required for type   q4_K) "
        "-> falling back to    q5_0"
    )
    assert log.tensor_types == {"output.weight": "Q6_K", "output_norm.weight": "F32"}
    assert log.total == 21 and log.fallbacks[0].used == "Q5_0" and log.fallbacks[0].ncols == 640
    assert log.fallback_note() == "1 of 21 tensors fell back to q5_0: row size not divisible by 256"
    log.feed(
        "llama_model_quantize_impl: WARNING: dry run completed successfully, "
        "but actually completing this quantization will require an imatrix!"
    )
    assert log.needs_imatrix


def test_dry_run_reports_every_tensor_with_exact_sizes(tiny_model: Path) -> None:
    parsed = dry_run_in_process(QuantizeJob(source=str(tiny_model), output=str(tiny_model) + ".x", ftype=18))
    reader = gguf.GGUFReader(tiny_model)
    assert set(parsed.tensor_types) == {t.name for t in reader.tensors}
    for t in reader.tensors:  # a tensor llama.cpp keeps as it is must come out at its own size
        if parsed.tensor_types[t.name] == t.tensor_type.name:
            assert tensor_bytes(t.tensor_type.name, tuple(int(d) for d in t.shape)) == int(t.n_bytes)


def test_imatrix_loader_reads_legacy_format(tiny_model: Path, tmp_path: Path) -> None:
    entries, chunks = load_imatrix(write_legacy_imatrix(tmp_path / "i.dat", tiny_model))
    assert chunks == 1 and "blk.0.attn_q.weight" in entries
    assert float(entries["blk.0.attn_q.weight"].mean()) == 1.0


def test_broken_imatrix_is_refused_before_any_work(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.dat"
    broken.write_bytes(struct.pack("<i", 3) + b"\x05\x00")
    request = QuantizeRequest(
        source=tiny_model, params=QuantParams(type="iq2_xs", imatrix_path=str(broken)), output=tmp_path / "o.gguf"
    )
    with pytest.raises(QuantizeError, match="truncated importance matrix"):
        quantize(request)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dat"]


def test_engine_failure_is_a_clear_error_with_the_log(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    job = QuantizeJob(source=str(corrupt), output=str(tmp_path / "o.gguf"), ftype=2)
    with pytest.raises(QuantizeError) as caught:
        run_quantize(job, engine="api", type_name="q4_0", log_path=tmp_path / "q.log")
    assert "api engine) exited with status 1" in str(caught.value)
    assert caught.value.hint == f"full log: {tmp_path / 'q.log'}"
    assert "failed to quantize" in (tmp_path / "q.log").read_text()


def test_binary_engine_without_a_binary_says_how_to_get_one(
    tiny_model: Path, mm: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("LLAMA_QUANTIZE", raising=False)
    result = mm("quantize", str(tiny_model), "--to", "q4_0", "--engine", "binary")
    assert result.exit_code == 7 and "mm llama build" in result.stderr
    monkeypatch.setenv("LLAMA_QUANTIZE", str(tiny_model))  # exists, not executable
    with pytest.raises(LlamaError, match="not an executable"):
        find_llama_quantize()


def test_llama_info_shows_the_api_engine(mm: Callable[..., Result]) -> None:
    result = mm("llama", "info", "--json")
    assert result.exit_code == 0, result.stderr
    assert '"name": "api"' in result.stdout and "llama-cpp-python 0.3.36" in result.stdout


@pytest.fixture(scope="session")
def llama_quantize_binary(llama_tools: BuiltTools) -> Path:
    return llama_tools.path("llama-quantize")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first one compiles llama-quantize (minutes on 2 cores)
@pytest.mark.parametrize("qtype", ["q4_k_m", "q2_k", "q8_0"])
def test_binary_engine_matches_api_engine(
    tiny_model: Path, llama_quantize_binary: Path, qtype: str, tmp_path: Path
) -> None:
    params = QuantParams(type=qtype)
    api = quantize(QuantizeRequest(source=tiny_model, params=params, output=tmp_path / "api.gguf"))
    binary = quantize(
        QuantizeRequest(
            source=tiny_model, params=params, output=tmp_path / "bin.gguf", engine="binary",
            llama_quantize=llama_quantize_binary,
        )
    )  # fmt: skip
    assert binary.record is not None and binary.record.engine == "binary"
    assert tensor_types(api.output) == tensor_types(binary.output)
    assert api.record is not None and api.record.sha256 == binary.record.sha256  # same llama.cpp, same bytes
    planned = plan(tiny_model, params, engine="binary", llama_quantize=llama_quantize_binary)
    assert planned == plan(tiny_model, params)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first one compiles llama-quantize (minutes on 2 cores)
def test_binary_engine_with_imatrix_matches_api(tiny_model: Path, llama_quantize_binary: Path, tmp_path: Path) -> None:
    imatrix = write_legacy_imatrix(tmp_path / "i.dat", tiny_model)
    params = QuantParams(type="iq2_xs", imatrix_path=str(imatrix))
    api = quantize(QuantizeRequest(source=tiny_model, params=params, output=tmp_path / "api.gguf"))
    binary = quantize(
        QuantizeRequest(
            source=tiny_model, params=params, output=tmp_path / "bin.gguf", engine="binary",
            llama_quantize=llama_quantize_binary,
        )
    )  # fmt: skip
    assert tensor_types(api.output) == tensor_types(binary.output)
    assert api.output.read_bytes()[-4096:] == binary.output.read_bytes()[-4096:]  # same quantized data


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first one compiles llama-quantize (minutes on 2 cores)
def test_llama_build_is_cached(
    llama_quantize_binary: Path, mm: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_HOME", str(llama_quantize_binary.parent.parent.parent.parent))
    result = mm("llama", "build", "--json")  # the same version and options: found in the cache, not rebuilt
    assert result.exit_code == 0, result.stderr
    assert '"cached": true' in result.stdout
    info = mm("llama", "info")
    assert str(llama_quantize_binary) in info.stdout
