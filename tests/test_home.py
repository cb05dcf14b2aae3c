"""The mm home: atomic writes (complete or absent, never half), paths kept inside their roots, per-artifact locks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.base.errors import LockTimeoutError, UnsafePathError
from pipeline.base.home import (
    atomic_path,
    atomic_symlink,
    atomic_write_json,
    inside,
    locked,
    mm_home,
    remove_stale_temps,
)


def test_mm_home_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_HOME", str(tmp_path / "elsewhere"))
    assert mm_home().root == (tmp_path / "elsewhere").resolve()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert mm_home().hub == tmp_path / "hf"  # an existing Hugging Face cache is reused, not copied


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_atomic_files_get_the_users_mode_not_mkstemps(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_json(target, [])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_stale_temps_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "out.gguf"
    left = tmp_path / ".out.gguf.abc123.tmp"
    left.write_bytes(b"partial")
    other = tmp_path / ".other.gguf.abc123.tmp"
    other.write_bytes(b"someone else's")
    remove_stale_temps(target)
    assert not left.exists() and other.exists()


def test_inside_refuses_dot_dot_and_the_root_itself(tmp_path: Path) -> None:
    assert inside(tmp_path, tmp_path / "a" / "b") == tmp_path / "a" / "b"
    for bad in (tmp_path / ".." / "x", tmp_path, tmp_path / "a" / ".." / ".." / "y"):
        with pytest.raises(UnsafePathError):
            inside(tmp_path, bad)


def test_a_held_lock_refuses_a_second_holder_that_will_not_wait() -> None:
    home = mm_home()
    with locked(home, "artifact"):
        with pytest.raises(LockTimeoutError), locked(home, "artifact", wait=False):
            pass
        with locked(home, "another-artifact", wait=False):  # one lock per artifact
            pass
    with locked(home, "artifact", wait=False):  # released
        pass


def test_a_symlink_is_written_relative_and_replaced_whole(tmp_path: Path) -> None:
    first, second = tmp_path / "blobs" / "a", tmp_path / "blobs" / "b"
    first.parent.mkdir()
    first.write_text("a")
    second.write_text("b")
    link = tmp_path / "snapshots" / "c1" / "m.gguf"
    assert atomic_symlink(link, first) == link and link.read_text() == "a"
    assert os.readlink(link) == os.path.join("..", "..", "blobs", "a")  # relative: the cache can move
    atomic_symlink(link, second)
    assert link.read_text() == "b" and sorted(p.name for p in link.parent.iterdir()) == ["m.gguf"]
