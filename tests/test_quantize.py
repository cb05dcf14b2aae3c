"""mm quantize: outputs that llama.cpp loads and runs, plans that match them, refusals before any work."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import llama_cpp
import pytest
from typer.testing import Result

from pipeline.base.errors import QuantizeError, UsageError
from pipeline.base.home import mm_home
from pipeline.base.provenance import QuantParams, read_record
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.quant_plan import plan
from pipeline.llama.quantize import QuantizeRequest, quantize
from tests.conftest import write_recipe

# llama_ftype values from llama.cpp's include/llama.h (independent of pipeline/gguf/quant_types.py).
FTYPES = {"q2_k": 10, "q4_0": 2, "q4_k_m": 15, "q6_k": 18, "q8_0": 7, "iq2_xs": 20}


def generates(path: Path) -> list[int]:
    """Load with llama-cpp-python and sample a few tokens: the output is a model llama.cpp can run."""
    model = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    try:
        out = model.create_completion("a b c", max_tokens=4, temperature=0.0)
        tokens = model.tokenize(out["choices"][0]["text"].encode(), add_bos=False)
        assert out["usage"]["completion_tokens"] >= 1
        return tokens
    finally:
        model.close()


def tensor_types(path: Path) -> dict[str, tuple[str, int]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}


def file_type(path: Path) -> int:
    field = gguf.GGUFReader(path).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def quant_files() -> list[Path]:
    folder = mm_home().quant
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("qtype", ["q2_k", "q4_k_m", "q6_k", "q8_0", "q4_0"])
def test_quantize_matrix_outputs_load_and_generate(tiny_model: Path, qtype: str) -> None:
    seen: list[tuple[int, int]] = []
    result = quantize(
        QuantizeRequest(source=tiny_model, params=QuantParams(type=qtype)), lambda d, t: seen.append((d, t))
    )
    assert result.skipped is None and result.record is not None
    out = result.output
    assert out.is_file() and out.parent == mm_home().quant
    assert file_type(out) == FTYPES[qtype]
    assert len(tensor_types(out)) == len(tensor_types(tiny_model))
    assert result.record.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.record.size_bytes == out.stat().st_size < tiny_model.stat().st_size
    assert read_record(out) == result.record
    assert seen and seen[-1] == (len(tensor_types(tiny_model)),) * 2
    generates(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_quantize_f16_source_and_requantize_q4_k_m_to_q2_k(tiny_model_f16: Path, tmp_path: Path) -> None:
    q4 = quantize(QuantizeRequest(source=tiny_model_f16, params=QuantParams(type="q4_k_m"), output=tmp_path / "a.gguf"))
    assert file_type(q4.output) == 15
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize(QuantizeRequest(source=q4.output, params=QuantParams(type="q2_k"), output=tmp_path / "b.gguf"))
    assert not (tmp_path / "b.gguf").exists()
    q2 = quantize(
        QuantizeRequest(
            source=q4.output, params=QuantParams(type="q2_k", allow_requantize=True), output=tmp_path / "b.gguf"
        )
    )
    assert file_type(q2.output) == 10 and q2.warnings and "re-quantizing" in q2.warnings[0]
    assert q2.record is not None and q2.record.source.sha256 == hashlib.sha256(q4.output.read_bytes()).hexdigest()
    generates(q2.output)


def test_plan_matches_what_quantize_writes(tiny_model: Path) -> None:
    predicted = plan(tiny_model, QuantParams(type="q4_k_m"))
    done = quantize(QuantizeRequest(source=tiny_model, params=QuantParams(type="q4_k_m")))
    actual = tensor_types(done.output)
    assert {t.name: (t.type, t.n_bytes) for t in predicted.tensors} == actual
    assert predicted.file_bytes == done.output.stat().st_size  # header and padding too (issue 22)
    assert not predicted.needs_imatrix and predicted.fallbacks == 0


@pytest.mark.parametrize("split", [0, 8])
def test_dry_run_bytes_and_bpw_are_what_llama_cpp_writes_and_reports(tmp_path: Path, split: int) -> None:
    """Issue 22: the dry run said 5,901,676 bytes and 7.03 bpw, the file had 5,901,664 bytes and mm said 7.22.
    Truth: the written file's size, and the BPW llama.cpp's loader prints for it (print_info)."""
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(arch="gemma3", split_max_tensors=split))
    dry = json.loads(_mm("quantize", str(model), "--to", "q8_0", "--dry-run", "--json").stdout)[0]
    done = json.loads(_mm("quantize", str(model), "--to", "q8_0", "--json").stdout)[0]
    assert Path(done["output"]).stat().st_size == dry["file_bytes"]
    load = f"import llama_cpp; llama_cpp.Llama({done['output']!r}, n_ctx=64, verbose=True)"
    log = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120, check=True).stderr
    reported = re.search(r"file size\s+=\s+[\d.]+ [MG]iB \(([\d.]+) BPW\)", log)
    assert reported is not None, log[-2000:]
    assert dry["bits_per_weight"] == done["bits_per_weight"] == float(reported.group(1))


def _mm(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=dict(os.environ),
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_plan_is_fast_and_writes_nothing(tiny_model: Path) -> None:
    started = time.monotonic()
    for qtype in ("q2_k", "q3_k_m", "q5_k_s", "iq4_xs"):
        plan(tiny_model, QuantParams(type=qtype))
    assert time.monotonic() - started < 2.0
    assert quant_files() == []
    assert not any(p.name.startswith(".mm-dry-run") for p in tiny_model.parent.iterdir())


def test_fallbacks_are_reported_for_odd_row_sizes(tmp_path: Path) -> None:
    odd = write_tiny_model(tmp_path / "odd.gguf", TinySpec(n_embd=288, n_head=4, n_head_kv=2, n_ff=640))
    predicted = plan(odd, QuantParams(type="q4_k_m"))
    assert predicted.fallbacks > 0
    assert predicted.fallback_note is not None and "fell back to" in predicted.fallback_note
    done = quantize(QuantizeRequest(source=odd, params=QuantParams(type="q4_k_m")))
    assert done.fallbacks == predicted.fallbacks
    generates(done.output)


def test_same_type_is_no_work_and_rerun_is_up_to_date(tiny_model_f16: Path, mm: Callable[..., Result]) -> None:
    same = mm("quantize", str(tiny_model_f16), "--to", "F16")
    assert same.exit_code == 0 and "already f16" in same.stderr
    assert quant_files() == []
    first = mm("quantize", str(tiny_model_f16), "--to", "q8_0", "--json")
    assert first.exit_code == 0, first.stderr
    again = mm("quantize", str(tiny_model_f16), "--to", "q8_0")
    assert again.exit_code == 0 and "up to date" in again.stderr


def test_tensor_overrides_reach_llama_cpp(tiny_model: Path, mm: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    result = mm(
        "quantize", str(tiny_model), "--to", "q4_0", "--tensor-type", "attn_v=q8_0",
        "--output-tensor-type", "f16", "--output", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    types = tensor_types(out)
    assert types["blk.0.attn_v.weight"][0] == "Q8_0" and types["blk.0.attn_q.weight"][0] == "Q4_0"
    assert types["output.weight"][0] == "F16"


def write_legacy_imatrix(path: Path, source: Path) -> Path:
    """An importance matrix in llama-imatrix's legacy .dat layout: all ones, one entry per 2-D weight."""
    entries = [(t.name, int(t.shape[0])) for t in gguf.GGUFReader(source).tensors if len(t.shape) == 2]
    blob = struct.pack("<i", len(entries))
    for name, width in entries:
        raw = name.encode()
        blob += (
            struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, width) + struct.pack(f"<{width}f", *[1.0] * width)
        )
    path.write_bytes(blob + struct.pack("<i", 1))
    return path


def test_imatrix_types_need_one_and_work_with_one(tiny_model: Path, mm: Callable[..., Result], tmp_path: Path) -> None:
    refused = mm("quantize", str(tiny_model), "--to", "iq2_xs")
    assert refused.exit_code == 7
    assert "importance matrix" in refused.stderr and "mm imatrix MODEL" in refused.stderr
    assert quant_files() == []
    imatrix = write_legacy_imatrix(tmp_path / "imatrix.dat", tiny_model)
    done = mm("quantize", str(tiny_model), "--to", "iq2_xs", "--imatrix", str(imatrix), "--json")
    assert done.exit_code == 0, done.stderr
    out = next(p for p in quant_files() if p.name.endswith(".iq2_xs.gguf"))
    assert file_type(out) == FTYPES["iq2_xs"]
    generates(out)


def test_bad_inputs_are_clear_errors_without_output(
    tiny_model: Path, mm: Callable[..., Result], tmp_path: Path
) -> None:
    unknown = mm("quantize", str(tiny_model), "--to", "q4_k_xl")
    assert unknown.exit_code == 2 and "q4_k_m (4.9 bpw)" in unknown.stderr
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(4096))
    bad = mm("quantize", str(corrupt), "--to", "q4_0")
    assert bad.exit_code == 6 and "corrupt.gguf" in bad.stderr
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    cut = mm("quantize", str(truncated), "--to", "q4_0")
    assert cut.exit_code == 6 and "truncated" in cut.stderr
    not_pulled = mm("quantize", "someone/model-GGUF:model.Q4_K_M.gguf", "--to", "q2_k")
    assert not_pulled.exit_code == 2 and "mm pull" in not_pulled.stderr
    assert quant_files() == []


def test_recipe_quantize_section_supplies_defaults(
    tiny_model: Path, mm: Callable[..., Result], recipes_folder: Path
) -> None:
    write_recipe(
        recipes_folder,
        "tiny",
        f'hardware = "cpu-32g"\n[source]\npath = "{tiny_model}"\n[quantize]\ntypes = ["q5_0", "Q4_0"]\n',
    )
    result = mm("quantize", "tiny", "--recipes", str(recipes_folder), "--json")
    assert result.exit_code == 0, result.stderr
    made = sorted(p.name.rsplit(".", 2)[-2] for p in quant_files() if p.suffix == ".gguf")
    assert made == ["q4_0", "q5_0"]


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough (~150 MB of F32) that quantizing takes a second or two on a loaded 2-core box."""
    spec = TinySpec(n_layers=8, n_embd=1024, n_ff=2048, n_head=8, n_head_kv=4)
    return write_tiny_model(tmp_path_factory.mktemp("big") / "big-f32.gguf", spec)


@pytest.mark.slow
def test_kill_during_quantize_leaves_nothing_and_next_run_succeeds(slow_model: Path) -> None:
    argv = [sys.executable, "-m", "pipeline.cli", "quantize", str(slow_model), "--to", "q6_k", "--threads", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quant = mm_home().quant
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not list(quant.glob(".*.tmp")):
        time.sleep(0.02)
    time.sleep(0.3)  # let llama.cpp write part of the file
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers and proc.poll() is None, "quantize finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the worker gets SIGKILL from the kernel when its parent dies
    for pid in workers:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split()[2] in "ZX", f"worker {pid} outlived mm"
    assert [p for p in quant.iterdir() if p.suffix == ".gguf"] == []  # nothing a later stage could mistake
    result = quantize(QuantizeRequest(source=slow_model, params=QuantParams(type="q6_k")))
    assert result.record is not None and file_type(result.output) == FTYPES["q6_k"]
    assert [p.name for p in quant.iterdir() if p.name.endswith(".tmp")] == []  # the stale temp was removed


def test_pulled_hub_file_is_quantized_with_its_origin_recorded(tiny_model: Path, mm: Callable[..., Result]) -> None:
    # The Hub cache layout huggingface_hub writes (as `mm pull` leaves it): refs/main -> snapshot -> file.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = mm_home().hub / "models--someone--tiny-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    result = mm("quantize", "someone/tiny-GGUF:tiny.gguf", "--to", "q8_0")
    assert result.exit_code == 0, result.stderr
    out = next(p for p in quant_files() if p.suffix == ".gguf")
    record = read_record(out)
    assert record is not None and record.source.kind == "hub"
    assert (record.source.repo, record.source.commit, record.source.file) == ("someone/tiny-GGUF", commit, "tiny.gguf")
    assert record.source.sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()


def test_plan_for_a_70b_q4_k_m_to_q2_k_reads_only_the_header(tmp_path: Path) -> None:
    from pipeline.gguf.tiny_model import write_header_only_model

    spec = TinySpec(n_layers=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=32000)
    big = write_header_only_model(tmp_path / "llama-70b.Q4_K_M.gguf", spec)
    started = time.monotonic()
    predicted = plan(big, QuantParams(type="q2_k"))
    assert time.monotonic() - started < 3.0
    assert len(predicted.tensors) == 80 * 9 + 3
    assert predicted.file_bytes < 0.75 * big.stat().st_size  # ~3 bpw from ~4.8
    assert 2.5 < predicted.bits_per_weight < 3.6


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_header_only_presets_type_every_tensor_as_llama_quantize_does(tiny_model: Path, qtype: str) -> None:
    """bench/gpu_public.py stands in header-only files for published Q4_0 and Q8_0 models: each tensor's type and
    size must be what llama.cpp's own quantizer writes for the same shape."""
    from pipeline.gguf.tiny_model import write_header_only_model

    result = quantize(QuantizeRequest(source=tiny_model, params=QuantParams(type=qtype)))
    stand_in = write_header_only_model(tiny_model.parent / f"header-only-{qtype}.gguf", TinySpec(), qtype.upper())
    assert tensor_types(stand_in) == tensor_types(result.output)
    assert file_type(stand_in) == file_type(result.output) == FTYPES[qtype]


def test_a_missing_imatrix_is_described_by_the_library_and_flagged_by_the_cli(
    tiny_model: Path, mm: Callable[..., Result], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.imatrix"
    request = QuantizeRequest(source=tiny_model, params=QuantParams(type="q4_0", imatrix_path=str(missing)))
    with pytest.raises(UsageError, match=r"importance matrix .*: no such file") as refused:
        quantize(request)
    assert refused.value.param == "imatrix_path" and "--" not in refused.value.message

    result = mm("quantize", str(tiny_model), "--to", "q4_0", "--imatrix", str(missing))
    assert result.exit_code == 2
    assert f"importance matrix {missing}: no such file" in result.stderr and "flag: --imatrix" in result.stderr
