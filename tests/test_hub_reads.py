"""Every Hub read goes through mm's checked path (issue 19 point 1): no huggingface_hub download helper that turns
a server's ETag or X-Repo-Commit into paths is used anywhere in pipeline/, and the small-file reader checks
what it is sent."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.base.errors import HubError, IntegrityError
from pipeline.hub.read import read_small_file
from tests.hub import Fault, LocalHub

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
# huggingface_hub's helpers that write files named by what the server answers (blobs/<etag>,
# snapshots/<commit>, refs, .lock files) or read through them
FORBIDDEN = {
    "hf_hub_download",
    "snapshot_download",
    "cached_download",
    "try_to_load_from_cache",
    "HfFileSystem",
    "hf_hub_download_to_local_dir",
}


def forbidden_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) of every import, name or attribute that reaches one of FORBIDDEN."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [alias.name.rsplit(".", 1)[-1] for alias in node.names]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "__import__")
        ):
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        found += [(node.lineno, name) for name in names if name in FORBIDDEN]
    return sorted(found)


def test_the_scan_finds_each_way_of_reaching_a_forbidden_helper() -> None:
    source = (
        "from huggingface_hub import hf_hub_download as dl\n"
        "import huggingface_hub\n"
        "huggingface_hub.snapshot_download('r')\n"
        "getattr(huggingface_hub, 'try_to_load_from_cache')\n"
        "api.hf_hub_download('r', 'f')\n"
    )
    assert [line for line, _ in forbidden_uses(source)] == [1, 3, 4, 5]


def test_no_module_of_mm_uses_a_download_helper_that_trusts_the_server_with_paths() -> None:
    offenders = [
        f"{path.relative_to(PIPELINE.parent)}:{line}: {name}"
        for path in sorted(PIPELINE.rglob("*.py"))
        for line, name in forbidden_uses(path.read_text())
    ]
    assert offenders == [], "read Hub files through pipeline/hub (read.py, download.py), not:\n" + "\n".join(offenders)


REPO = "org/docs"
DOC = b'{"hello": "world"}\n' * 10


@pytest.fixture
def served(local_hub: LocalHub) -> tuple[LocalHub, str]:
    return local_hub, local_hub.add_repo(REPO, {"doc.json": DOC, "big.json": b"x" * 5000})


def test_a_small_file_is_read_into_memory_and_nothing_is_written(
    served: tuple[LocalHub, str], isolated_env: Path
) -> None:
    _, commit = served
    assert read_small_file(REPO, "doc.json", commit) == DOC
    assert not isolated_env.exists() or not any(p.is_file() for p in isolated_env.rglob("*"))


def test_a_file_over_the_cap_is_refused_before_a_byte_of_it_is_fetched(served: tuple[LocalHub, str]) -> None:
    hub, commit = served
    with pytest.raises(HubError, match="more than the"):
        read_small_file(REPO, "big.json", commit, max_bytes=4096)
    assert hub.file_gets("big.json") == []


def test_bytes_that_do_not_hash_to_the_etag_are_refused(served: tuple[LocalHub, str]) -> None:
    hub, commit = served
    hub.inject(REPO, "doc.json", Fault(corrupt=True))
    with pytest.raises(IntegrityError, match="do not match"):
        read_small_file(REPO, "doc.json", commit)


@pytest.mark.parametrize("commit", ["main", "../../x", "A" * 40])
def test_only_a_full_commit_is_accepted(served: tuple[LocalHub, str], commit: str) -> None:
    hub, _ = served
    with pytest.raises(HubError, match="40-hex"):
        read_small_file(REPO, "doc.json", commit)
    assert hub.requests == []


def test_a_body_longer_than_announced_is_refused_after_one_byte_too_many(served: tuple[LocalHub, str]) -> None:
    hub, commit = served
    hub.advertise_size(REPO, "doc.json", 10)
    with pytest.raises(IntegrityError, match="announced 10 bytes but sent more"):
        read_small_file(REPO, "doc.json", commit)
