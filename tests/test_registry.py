"""The registry library: blobs stored once by content, profiles, the pre-run check, gc and verify."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.base.errors import FitError, IntegrityError, ProfileNotFoundError, RegistryError, UsageError
from pipeline.base.home import locked, mm_home
from pipeline.base.provenance import QuantParams, QuantRecord, SourceRef, quantize_lock_name, write_record
from pipeline.registry import store as registry
from pipeline.registry.blobs import check_blob
from pipeline.registry.gc import gc
from pipeline.registry.store import get_profile, list_profiles, remove_profile
from pipeline.registry.verify import verify
from pipeline.spec.hardware import HardwareClass, get_hardware
from pipeline.spec.run_settings import RunSettings, run_settings
from tests.conftest import publish_fitted

CPU = get_hardware("cpu-64g")


def own_copy(model: Path, folder: Path, name: str = "model-f32.gguf") -> Path:
    """A private copy of the session's shared model, for tests that damage files."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(model, folder / name))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int = -100, keep_mtime: bool = False) -> None:
    stat = path.stat()
    path.chmod(stat.st_mode | 0o200)  # blobs are read-only: damage comes from rot or a forced write
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_publish_copies_the_model_into_a_read_only_content_addressed_blob(tiny_model: Path, tmp_path: Path) -> None:
    model = own_copy(tiny_model, tmp_path)
    profile = publish_fitted(model, CPU, name="tiny")
    blob = mm_home().blobs / profile.blob.sha256
    assert profile.blob.sha256 == sha256_of(model) == sha256_of(blob)
    assert blob.stat().st_ino != model.stat().st_ino and blob.stat().st_mode & 0o222 == 0  # damage one, not both
    flip_byte(model)
    assert sha256_of(blob) == profile.blob.sha256
    assert profile.blob.size_bytes == model.stat().st_size
    assert profile.quant == "f32" and profile.hardware == "cpu-64g"
    assert profile.provenance.source.kind == "local" and profile.provenance.source.path == str(model)
    assert get_profile("tiny") == profile


def test_default_name_is_model_quant_at_hardware(tiny_model_f16: Path, tmp_path: Path) -> None:
    model = own_copy(tiny_model_f16, tmp_path, "tiny-llama-F16.gguf")
    assert publish_fitted(model, CPU).name == "tiny-llama-f16@cpu-64g"


def test_republishing_a_name_replaces_the_profile_and_gc_frees_the_old_blob(
    tiny_model: Path, tiny_model_f16: Path, tmp_path: Path
) -> None:
    first = publish_fitted(own_copy(tiny_model, tmp_path / "a"), CPU, name="same")
    second = publish_fitted(own_copy(tiny_model_f16, tmp_path / "b"), CPU, name="same")
    assert get_profile("same").blob.sha256 == second.blob.sha256 != first.blob.sha256
    assert (mm_home().blobs / first.blob.sha256).exists()  # until gc
    report = gc()
    assert [Path(i.path).name for i in report.removed] == [first.blob.sha256]
    assert not (mm_home().blobs / first.blob.sha256).exists()
    assert (mm_home().blobs / second.blob.sha256).exists()


def test_run_settings_follow_the_fit_settings(tiny_model: Path, tmp_path: Path) -> None:
    settings = RunSettings(n_ctx=512, n_batch=256, n_ubatch=128, kv_type="q8_0", flash_attn=True)
    profile = publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="tuned", settings=settings, threads=2)
    kwargs = profile.llama_kwargs
    assert (kwargs["n_ctx"], kwargs["n_batch"], kwargs["n_ubatch"]) == (512, 256, 128)
    assert kwargs["type_k"] == kwargs["type_v"] == 8  # GGML_TYPE_Q8_0 in ggml.h
    assert kwargs["flash_attn"] is True and kwargs["n_threads"] == 2
    assert "--cache-type-k q8_0" in profile.llama_server and "--flash-attn on" in profile.llama_cli


def test_quantized_kv_turns_flash_attention_on_unless_asked_off(tiny_model: Path, tmp_path: Path) -> None:
    """llama.cpp refuses a quantized V cache without flash attention; its auto mode turns it on."""
    with pytest.raises(UsageError, match="flash attention") as refused:
        run_settings({"kv_type": "q4_0", "flash_attn": False})
    assert refused.value.param == "kv_type"
    profile = publish_fitted(own_copy(tiny_model, tmp_path), CPU, settings=RunSettings(kv_type="q4_0"))
    assert profile.run.flash_attn is True and "--flash-attn on" in profile.llama_server


def test_a_model_that_does_not_fit_is_not_published(tiny_model: Path, tmp_path: Path) -> None:
    small = HardwareClass.model_validate({"name": "tiny-box", "ram": "1M", "ram_bandwidth_gbps": 10})
    with pytest.raises(FitError, match="does not fit tiny-box"):
        publish_fitted(own_copy(tiny_model, tmp_path), small)


def test_bad_names_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a valid profile name"):
        publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="../escape")
    with pytest.raises(UsageError):
        get_profile("a/b")


def _quantize_output(model: Path, folder: Path) -> Path:
    """A file laid out as quantize leaves it: the output and its `.mm.json` record beside it."""
    output = own_copy(model, folder, "src-q8_0.gguf")
    digest = sha256_of(output)
    source = SourceRef(
        kind="hub", path="/x/src.gguf", sha256="ab" * 32, size_bytes=1, repo="o/src", commit="c" * 40, file="src.gguf"
    )
    write_record(
        QuantRecord(
            output_path=str(output),
            sha256=digest,
            size_bytes=output.stat().st_size,
            file_type=0,
            n_tensors=1,
            source=source,
            params=QuantParams(type="q8_0"),
            engine="api",
            llama_cpp_version="test",
            seconds=0.1,
        )
    )
    return output


def test_provenance_comes_from_the_quantize_record_and_gc_removes_unused_outputs(tiny_model: Path) -> None:
    output = _quantize_output(tiny_model, mm_home().quant / "abc")
    profile = publish_fitted(output, CPU, name="quantized")
    assert profile.provenance.source.repo == "o/src" and profile.provenance.engine == "api"
    assert profile.provenance.quantize is not None and profile.provenance.quantize.type == "q8_0"
    assert profile.model == "src"
    assert gc().removed == []  # referenced: kept
    remove_profile("quantized")
    report = gc(dry_run=True)
    assert {i.kind for i in report.removed} == {"blob", "quant", "record"}
    assert output.exists()  # dry run
    blob = Path(profile.blob.path)
    size = output.stat().st_size + output.with_name(output.name + ".mm.json").stat().st_size + blob.stat().st_size
    report = gc()
    assert report.freed_bytes == size  # output and blob are two files (a blob is a copy): both freed
    assert not output.exists() and not output.with_name(output.name + ".mm.json").exists()
    assert not any(mm_home().blobs.iterdir())


def test_a_record_that_disagrees_with_the_file_is_refused(tiny_model: Path) -> None:
    output = _quantize_output(tiny_model, mm_home().quant / "abc")
    flip_byte(output)
    with pytest.raises(IntegrityError, match="quantize record"):
        publish_fitted(output, CPU)


def test_a_crash_between_blob_and_profile_leaves_only_an_unreferenced_blob(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(target: Path, document: object) -> None:
        raise KeyboardInterrupt  # as a kill would, after the blob is in place

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(registry, "atomic_write_json", crash)
        publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="crashed")
    assert list_profiles() == ([], [])
    assert verify().ok
    assert len(gc().removed) == 1 and not any(mm_home().blobs.iterdir())


def test_gc_removes_stale_temp_files(tiny_model: Path, tmp_path: Path) -> None:
    publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="kept")
    stale = mm_home().profiles / ".kept.json.abc.tmp"
    stale.write_text("{")
    assert [i.kind for i in gc().removed] == ["temp"] and not stale.exists()


def test_a_broken_profile_is_reported_and_the_others_still_list(tiny_model: Path, tmp_path: Path) -> None:
    good = publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="good")
    broken = mm_home().profiles / "broken.json"
    broken.write_text('{"name": "broken", "blob": {"sha256": "' + good.blob.sha256 + '"')
    (mm_home().profiles / "edited.json").write_text(
        json.dumps({**good.model_dump(mode="json"), "name": "edited", "run": 3})
    )
    profiles, errors = list_profiles()
    assert [p.name for p in profiles] == ["good"]
    assert sorted(Path(str(e).split(":")[0]).name for e in errors) == ["broken.json", "edited.json"]
    assert any("run" in str(e) for e in errors)
    with pytest.raises(RegistryError, match=r"broken\.json"):
        get_profile("broken")
    remove_profile("good")
    assert gc().removed == []  # the broken profiles still name the blob: never collect what might be used


def test_check_blob_is_cheap_but_catches_size_and_stat_changes(tiny_model: Path, tmp_path: Path) -> None:
    profile = publish_fitted(own_copy(tiny_model, tmp_path), CPU, name="checked")
    blob = Path(profile.blob.path)
    assert check_blob(profile) == blob
    flip_byte(blob, keep_mtime=True)  # same size, same stat: only a full hash can see it
    assert check_blob(profile) == blob
    with pytest.raises(IntegrityError, match="corrupted"):
        check_blob(profile, full=True)
    flip_byte(blob)  # back to the right bytes, but a new mtime: the cheap check re-hashes and accepts
    assert check_blob(profile) == blob
    flip_byte(blob)  # wrong bytes and a new mtime: refused without --verify
    with pytest.raises(IntegrityError, match="checked"):
        check_blob(profile)
    with open(blob, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError, match="bytes, expected"):
        check_blob(profile)


def test_verify_names_only_the_corrupted_profiles(tiny_model: Path, tiny_model_f16: Path, tmp_path: Path) -> None:
    bad = publish_fitted(own_copy(tiny_model, tmp_path / "a"), CPU, name="bad")
    publish_fitted(own_copy(tiny_model, tmp_path / "a2"), CPU, name="bad-too")  # same content, same blob
    publish_fitted(own_copy(tiny_model_f16, tmp_path / "b"), CPU, name="fine")
    assert verify().ok
    flip_byte(Path(bad.blob.path), keep_mtime=True)
    report = verify()
    assert not report.ok and sorted(report.corrupted) == ["bad", "bad-too"]
    broken = next(c for c in report.checked if c.name == "bad")
    assert broken.path == bad.blob.path and broken.expected == f"sha256 {bad.blob.sha256}"
    assert broken.actual == f"sha256 {sha256_of(Path(bad.blob.path))}" and broken.actual != broken.expected
    assert verify("fine").ok
    with pytest.raises(ProfileNotFoundError):
        verify("nope")


def test_gc_leaves_an_output_that_quantize_is_working_on(tiny_model: Path) -> None:
    output = _quantize_output(tiny_model, mm_home().quant / "busy")
    with locked(mm_home(), quantize_lock_name(output)):  # as quantize holds it while (re)making output
        assert [i.kind for i in gc().removed] == []
    assert {i.kind for i in gc().removed} == {"quant", "record"}
