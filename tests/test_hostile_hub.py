"""A hostile Hub (issue 10): lying commits, ETags, names and sizes, empty 206s, 429/5xx.

Each case must end in one clear message with the right exit code, a bounded number of requests, and
nothing created, changed or deleted outside MM_HOME (the folder around it is listed before and after).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.hub import transfer
from tests.conftest import write_recipe
from tests.hub import Fault, LocalHub

REPO = "org/tiny-GGUF"
FILE = "tiny.gguf"
Mm = Callable[..., Result]


def snapshot(folder: Path, home: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under `folder` but outside the mm home: (mode, size, content digest or link target)."""
    found: dict[str, tuple[int, int, str]] = {}
    for path in sorted(folder.rglob("*")):
        if path == home or home in path.parents:
            continue
        st = path.lstat()
        if path.is_symlink():
            what = "link:" + str(path.readlink())
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        found[str(path.relative_to(folder))] = (st.st_mode, st.st_size, what)
    return found


@pytest.fixture
def around(tmp_path: Path, isolated_env: Path) -> Callable[[], dict[str, tuple[int, int, str]]]:
    """The mm home sits in tmp_path/mm-home: plant victims beside it (a shell startup file among them) and
    return a lister of tmp_path."""
    (tmp_path / "victim.part").write_bytes(b"precious")
    (tmp_path / "victim").write_bytes(b"precious")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("# the user's own\n")
    (tmp_path / "x.gguf").write_bytes(b"precious model")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
    return lambda: snapshot(tmp_path, isolated_env)


def refused(result: Result, code: int, *words: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.count("error:") == 1, result.stderr
    for word in words:
        assert word in result.output, (word, result.output)
    return result.output


@pytest.fixture
def repo(local_hub: LocalHub, tiny_model: Path) -> LocalHub:
    local_hub.add_repo(REPO, {FILE: tiny_model.read_bytes()})
    return local_hub


@pytest.mark.parametrize("command", ["pull", "fit", "inspect"])
@pytest.mark.parametrize("commit", ["../../../elsewhere", "/tmp/evil", "a" * 39 + "/", "../" * 20 + "tmp"])
def test_lying_commit_is_refused_and_nothing_outside_changes(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]], command: str, commit: str
) -> None:
    before = around()
    repo.hostile.commit = commit
    args = [command, f"{REPO}:{FILE}"] + (["--vram", "0", "--ram", "8G"] if command == "fit" else [])
    refused(mm(*args), 3, "invalid value", "40-hex git commit")
    assert around() == before
    assert len(repo.requests) <= 2


def test_commit_in_file_headers_differing_from_the_one_asked_for_is_refused(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]]
) -> None:
    commit = repo.repos[REPO].refs["main"]
    before = around()
    repo.hostile.commit = "f" * 40  # model info is asked nothing (a commit revision); the file HEAD lies
    refused(mm("pull", f"{REPO}:{FILE}@{commit}"), 3, "answered for commit")
    assert around() == before


@pytest.mark.parametrize("command", ["pull", "inspect"])
@pytest.mark.parametrize("etag", ["../../victim", "../../../victim", "0" * 63, "/abs/victim"])
def test_lying_etag_is_refused_and_the_victim_survives(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]], command: str, etag: str
) -> None:
    before = around()
    repo.hostile.etag = etag
    refused(mm(command, f"{REPO}:{FILE}"), 3, "ETag", "not a sha256 or git sha1 digest")
    assert around() == before
    assert not repo.file_gets(FILE)


@pytest.mark.parametrize("name", ["../../x.gguf", "/abs/x.gguf", "a/../../x.gguf", "./x.gguf", "a//x.gguf"])
def test_unsafe_name_in_the_listing_is_refused(
    mm: Mm,
    local_hub: LocalHub,
    tiny_model: Path,
    around: Callable[[], dict[str, tuple[int, int, str]]],
    name: str,
) -> None:
    local_hub.add_repo(REPO, {name: tiny_model.read_bytes()})
    before = around()
    refused(mm("pull", REPO), 3, "file name", "refusing")
    assert around() == before
    assert not local_hub.file_gets("x.gguf")


@pytest.mark.parametrize(
    "ref",
    [
        f"{REPO}:../../x.gguf",
        f"{REPO}:{FILE}@../../x",
        f"{REPO}:{FILE}@a..b",
        f"{REPO}:{FILE}@-x",
        f"org/a..b:{FILE}",
        f"org/a--b:{FILE}",
        f".org/x:{FILE}",
    ],
)
@pytest.mark.parametrize("command", ["pull", "fit"])
def test_unsafe_name_or_revision_on_the_command_line_is_a_usage_error(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]], ref: str, command: str
) -> None:
    before = around()
    refused(mm(command, ref), 2)
    assert around() == before
    assert not repo.requests


def test_revision_flag_with_dots_is_refused(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]]
) -> None:
    before = around()
    refused(mm("pull", REPO, "--file", FILE, "-r", "../../../refs-elsewhere"), 2, "revision")
    assert around() == before


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("file", "../../x.gguf", ["source.file", "climbs out"]),
        ("file", "/tmp/x.gguf", ["source.file", "absolute"]),
        ("revision", "../../x", ["source.revision", "git branch"]),
    ],
)
def test_recipe_with_unsafe_source_is_refused(
    mm: Mm,
    recipes_folder: Path,
    around: Callable[[], dict[str, tuple[int, int, str]]],
    field: str,
    value: str,
    words: list[str],
) -> None:
    source = {"repo": REPO, "file": FILE, field: value}
    body = "\n".join(f'{k} = "{v}"' for k, v in source.items())
    path = write_recipe(recipes_folder, "evil", f'hardware = "cpu-32g"\n[source]\n{body}\n')
    before = around()
    refused(mm("recipe", "validate", str(path)), 2, str(path), *words)
    refused(mm("build", "evil", "--recipes", str(recipes_folder)), 10, *words)  # a failed recipe: 10
    assert around() == before


# --- download budgets ---------------------------------------------------------------------------------


def test_announced_size_larger_than_served_is_an_integrity_error_not_a_loop(
    mm: Mm, repo: LocalHub, tiny_model: Path, isolated_env: Path
) -> None:
    repo.advertise_size(REPO, FILE, tiny_model.stat().st_size + 1000)
    refused(mm("pull", f"{REPO}:{FILE}"), 5, "announced", "deleted")
    assert len(repo.file_gets(FILE)) == 1
    assert not list((isolated_env / "partial").glob("*.part"))


def test_announced_size_larger_than_served_after_a_resume_is_an_integrity_error(
    mm: Mm, repo: LocalHub, tiny_model: Path
) -> None:
    size = tiny_model.stat().st_size
    repo.advertise_size(REPO, FILE, size + 1000)
    repo.inject(REPO, FILE, Fault(cut_after=size // 2, times=1))
    refused(mm("pull", f"{REPO}:{FILE}"), 5, "announced")
    assert len(repo.file_gets(FILE)) <= 3


@pytest.mark.slow  # waits out the backoff (0.25 + 0.5 + 1 + 2 s)
def test_empty_206_counts_against_the_budget(mm: Mm, repo: LocalHub, tiny_model: Path) -> None:
    repo.inject(REPO, FILE, Fault(cut_after=tiny_model.stat().st_size // 2, times=1))
    repo.hostile.empty_206 = True
    refused(mm("pull", f"{REPO}:{FILE}"), 3, "stopped at", "run the same command again")
    gets = repo.file_gets(FILE)
    assert len(gets) == 1 + transfer.MAX_STALLED_ATTEMPTS
    repo.hostile.empty_206 = False  # the next run resumes from the bytes kept
    assert mm("pull", f"{REPO}:{FILE}").exit_code == 0
    assert repo.file_gets(FILE)[-1].range is not None


def test_429_retry_after_is_honoured_then_the_download_completes(mm: Mm, repo: LocalHub) -> None:
    repo.hostile.statuses = [429, 429]
    repo.hostile.retry_after = "1"
    result = mm("pull", f"{REPO}:{FILE}", "--json")
    assert result.exit_code == 0, result.output
    gets = repo.file_gets(FILE)
    assert [g.status for g in gets] == [429, 429, 200]
    assert gets[1].at - gets[0].at >= 0.95 and gets[2].at - gets[1].at >= 0.95


def test_retry_after_beyond_the_cap_fails_at_once(mm: Mm, repo: LocalHub) -> None:
    repo.hostile.statuses = [429]
    repo.hostile.retry_after = "3600"
    started = time.monotonic()
    refused(mm("pull", f"{REPO}:{FILE}"), 3, "asks to wait 3600 s")
    assert time.monotonic() - started < 5
    assert len(repo.file_gets(FILE)) == 1


def test_5xx_is_retried_then_the_download_completes(mm: Mm, repo: LocalHub) -> None:
    repo.hostile.statuses = [503, 502]
    result = mm("pull", f"{REPO}:{FILE}", "--json")
    assert result.exit_code == 0, result.output
    assert [g.status for g in repo.file_gets(FILE)] == [503, 502, 200]


@pytest.mark.slow  # waits out the backoff (0.25 + 0.5 + 1 + 2 s)
def test_5xx_forever_gives_up_after_a_bounded_number_of_requests(mm: Mm, repo: LocalHub) -> None:
    repo.hostile.statuses = [500] * 1000
    refused(mm("pull", f"{REPO}:{FILE}"), 3, "answered 500", "stopped at 0")
    assert len(repo.file_gets(FILE)) == transfer.MAX_STALLED_ATTEMPTS


@pytest.mark.parametrize("command", ["pull", "inspect"])
def test_impossible_announced_size_is_refused_before_any_get(
    mm: Mm, repo: LocalHub, around: Callable[[], dict[str, tuple[int, int, str]]], command: str
) -> None:
    before = around()
    repo.advertise_size(REPO, FILE, 1 << 62)
    refused(mm(command, f"{REPO}:{FILE}"), 3, "impossible size")
    assert not repo.file_gets(FILE)
    assert around() == before
