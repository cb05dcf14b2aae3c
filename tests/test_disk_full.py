"""Disk full (issue 10) on a real small filesystem (a tmpfs mounted for the test): pull, publish and quantize
each end in the disk-space error (exit 4) naming the folder and the space needed — never a traceback or
llama.cpp's "iostream error" — and leave no partial output behind."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from tests.hub import Fault, LocalHub

Mm = Callable[..., Result]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder`; the test is skipped where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine: cannot make a small filesystem")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def disk_error(result: Result, folder: Path) -> str:
    assert result.exit_code == 4, result.output
    assert result.stderr.count("error:") == 1, result.stderr
    assert "disk" in result.stderr and str(folder) in result.stderr, result.stderr
    assert "iostream" not in result.output
    return result.stderr


def test_pull_onto_a_disk_that_fills_up_is_a_disk_space_error(
    mm: Mm, local_hub: LocalHub, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = tiny_model.stat().st_size
    with small_filesystem(tmp_path / "small", f"{(size >> 20) + 2}m") as small:
        monkeypatch.setenv("MM_HOME", str(small / "home"))
        local_hub.add_repo("org/m", {"m.gguf": tiny_model.read_bytes()})
        local_hub.inject("org/m", "m.gguf", Fault(bytes_per_second=size))  # about a second to download
        partial = small / "home" / "partial"

        def fill_once_downloading() -> None:
            for _ in range(200):
                if partial.is_dir() and any(partial.glob("*.part")):
                    break
                time.sleep(0.02)
            with contextlib.suppress(OSError), open(small / "filler", "wb") as handle:
                while True:
                    handle.write(b"\0" * (64 << 10))
                    handle.flush()

        filler = threading.Thread(target=fill_once_downloading)
        filler.start()
        result = mm("pull", "org/m:m.gguf")
        filler.join()
        message = disk_error(result, partial)
        assert "needed" in message
        assert not list((small / "home" / "hub").rglob("m.gguf"))


def test_publish_onto_a_full_disk_across_filesystems(
    mm: Mm, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_filesystem(tmp_path / "small", "1m") as small:
        monkeypatch.setenv("MM_HOME", str(small / "home"))
        result = mm("publish", str(tiny_model), "--hardware", "cpu-32g")
        disk_error(result, small / "home" / "blobs" / "sha256")
        assert not list((small / "home").rglob("profiles/*.json"))


def test_quantize_without_room_says_disk_before_llama_cpp_runs(
    mm: Mm, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_filesystem(tmp_path / "small", "1m") as small:
        result = mm("quantize", str(tiny_model), "--to", "q8_0", "--output", str(small / "out.q8_0.gguf"))
        message = disk_error(result, small)
        assert "the q8_0 output (llama.cpp's dry run) needs" in message
        assert list(small.iterdir()) == []


def fill(folder: Path) -> None:
    """Write zeros into `folder` until the filesystem is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as handle:
        while True:
            handle.write(b"\0" * (64 << 10))
            handle.flush()


def test_quantize_when_the_disk_fills_during_the_write_says_disk(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "24m") as small:  # room at the check, none once it writes

        def fill_once_writing() -> None:
            for _ in range(1000):
                if any(small.glob(".out.f16.gguf.*.tmp")):
                    break
                time.sleep(0.002)
            fill(small)

        filler = threading.Thread(target=fill_once_writing)
        filler.start()
        result = mm("quantize", str(tiny_model), "--to", "f16", "--output", str(small / "out.f16.gguf"))
        filler.join()
        disk_error(result, small)
        assert sorted(p.name for p in small.iterdir()) == ["filler"]


def test_a_full_disk_on_a_small_write_is_the_disk_error(mm: Mm, tiny_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with small_filesystem(tmp_path / "small", "8m") as small:
        model = small / "m.gguf"
        shutil.copyfile(tiny_model, model)
        monkeypatch.setenv("MM_HOME", str(small / "home"))
        fill(small)
        result = mm("publish", str(model), "--hardware", "cpu-32g")
        assert result.exit_code == 4, result.output
        assert "disk is full" in result.stderr and str(small / "home") in result.stderr
