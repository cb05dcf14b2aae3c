"""The rules for values that become paths (commit, ETag, repo file name, revision) and the last guard,
home.inside, which refuses a path that resolves outside its folder — through '..' or a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.base.errors import UnsafePathError
from pipeline.base.home import inside
from pipeline.base.safe_names import (
    UnsafeValue,
    check_commit,
    check_etag,
    check_repo_filename,
    check_repo_id,
    check_revision,
    printable,
)


@pytest.mark.parametrize("value", ["a" * 40, "0123456789abcdef0123456789abcdef01234567"])
def test_commit_accepts_40_hex(value: str) -> None:
    assert check_commit(value) == value


@pytest.mark.parametrize("value", ["A" * 40, "a" * 39, "a" * 41, "../" * 13 + "a", "", None, 7, "a" * 39 + "/"])
def test_commit_refuses_anything_else(value: object) -> None:
    with pytest.raises(UnsafeValue, match="40-hex"):
        check_commit(value)


@pytest.mark.parametrize("value", ["b" * 40, "c" * 64])
def test_etag_accepts_git_sha1_and_sha256(value: str) -> None:
    assert check_etag(value) == value


@pytest.mark.parametrize("value", ["../../victim", "c" * 63, "c" * 65, "/abs", 'W/"abc"', "C" * 64, ""])
def test_etag_refuses_anything_else(value: str) -> None:
    with pytest.raises(UnsafeValue, match="digest"):
        check_etag(value)


@pytest.mark.parametrize("value", ["model.gguf", "q4/model-00001-of-00002.gguf", "a b/c.gguf", "..x.gguf"])
def test_repo_filename_accepts_relative_names(value: str) -> None:
    assert check_repo_filename(value) == value


@pytest.mark.parametrize(
    "value",
    ["../x.gguf", "a/../../x.gguf", "/etc/x.gguf", "C:\\x.gguf", "\\\\host\\share\\x", "./x.gguf", "a//x.gguf",
     "a/./x.gguf", "a\\..\\x.gguf", "x\n.gguf", "", "a/", "x" * 256 + ".gguf", "a/" * 600 + "x"],
)  # fmt: skip
def test_repo_filename_refuses_escapes_and_odd_forms(value: str) -> None:
    with pytest.raises(UnsafeValue):
        check_repo_filename(value)


@pytest.mark.parametrize("value", ["main", "v1.0", "refs/pr/1", "feature/x-y_z", "a" * 40])
def test_revision_accepts_git_refs(value: str) -> None:
    assert check_revision(value) == value


@pytest.mark.parametrize(
    "value",
    ["../x", "a/../b", "/abs", "a//b", ".hidden", "a/.b", "x.lock", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[",
     "a\\b", "@", "a@{1}", "-x", "a/", "a.", "", "x" * 256],
)  # fmt: skip
def test_revision_refuses_what_git_refuses(value: str) -> None:
    with pytest.raises(UnsafeValue, match="revision"):
        check_revision(value)


def test_inside_refuses_dot_dot_and_symlinked_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert inside(root, root / "sub" / "file") == root / "sub" / "file"
    assert inside(root, root / "link-itself")  # the last name is replaced by writers, never followed
    for escape in (root / ".." / "x", root / "sub" / ".." / ".." / "x", root / "link" / "x", Path("/etc/x"), root):
        with pytest.raises(UnsafePathError, match="not inside"):
            inside(root, escape)


def test_printable_escapes_control_characters_and_shortens() -> None:
    assert printable("plain name") == "plain name"
    assert printable("a\nerror: x\x1b[31m") == "a\\nerror: x\\x1b[31m"
    assert len(printable("y" * 1000, 50)) == 50


@pytest.mark.parametrize("value", ["org/name", "TheBloke/Llama-2-7B-GGUF", "a/b.c_d-e"])
def test_repo_id_accepts_owner_name(value: str) -> None:
    assert check_repo_id(value) == value


@pytest.mark.parametrize("value", ["a..b/c", "a/b--c", ".a/b", "a/b.", "name", "a/b/c", "a/" + "x" * 97, "a b/c"])
def test_repo_id_refuses_what_the_hub_refuses(value: str) -> None:
    with pytest.raises(UnsafeValue, match="repository id"):
        check_repo_id(value)
