"""`mm push` against a hostile or broken Hub (issue 19 point 5): bounded waits, the token kept home, only
mm's own files replaced or deleted, and every odd answer one clear error."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.hub import VALID_TOKEN, LocalHub
from tests.test_hostile_hub import refused

Mm = Callable[..., Result]
REPO = "fleet/tiny-GGUF"


@pytest.fixture
def published(mm: Mm, tiny_model: Path, tmp_path: Path, local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local profile `m` on its own copy of the tiny model, and a write token in the environment."""
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--ctx", "256", "--name", "m").exit_code == 0
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    return "m"


def tree(hub: LocalHub) -> dict[str, bytes]:
    state = hub.repos[REPO]
    return dict(state.commits[state.refs["main"]])


def test_a_stalled_commit_endpoint_ends_in_one_error_within_the_timeout(
    mm: Mm, published: str, local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_HUB_TIMEOUT", "1")
    local_hub.uploads.stall_commit_seconds = 4.0
    started = time.monotonic()
    refused(mm("push", published, "--repo", REPO), 3, "did not answer", "MM_HUB_TIMEOUT")
    # huggingface_hub does not retry a commit POST; 1 s of read timeout, not the server's 4 s stall
    assert time.monotonic() - started < 3.5


def test_a_trickling_answer_is_cut_at_the_request_deadline(
    mm: Mm, published: str, local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read arrives within the timeout, but the whole answer would take far longer than the deadline."""
    monkeypatch.setenv("MM_HUB_DEADLINE", "1")
    assert mm("push", published, "--repo", REPO).exit_code == 0
    (gguf,) = [p for p in tree(local_hub) if p.endswith(".gguf")]
    from tests.hub import Fault

    local_hub.inject(REPO, "README.md", Fault(bytes_per_second=200))  # a 2 KiB card: ~10 s at this rate
    local_hub.commit(REPO, {"README.md": tree(local_hub)["README.md"] + b"\nBy hand.\n"})
    started = time.monotonic()
    refused(mm("push", published, "--repo", REPO), 3, "did not answer")
    assert time.monotonic() - started < 5
    assert gguf in tree(local_hub)


def test_the_token_never_goes_to_an_lfs_href_on_another_host(mm: Mm, published: str, local_hub: LocalHub) -> None:
    port = local_hub.url.rsplit(":", 1)[1]
    local_hub.uploads.verify_host = f"localhost:{port}"  # the same server under another host name
    assert mm("push", published, "--repo", REPO).exit_code == 0
    verifies = [r for r in local_hub.requests if r.path.endswith("/verify")]
    assert verifies and not any(r.authorized for r in verifies)
    commits = [r for r in local_hub.requests if "/commit/" in r.path]
    assert commits and all(r.authorized for r in commits)  # the endpoint's own host still gets it


def test_a_stray_profile_document_cannot_make_a_push_delete_what_mm_did_not_write(
    mm: Mm, published: str, local_hub: LocalHub
) -> None:
    local_hub.add_repo(REPO, {"README.md": b"# Ours\nHand-written.\n", "LICENSE": b"MIT\n", "data.gguf": b"GGUF"})
    stray = {"schema_version": 1, "bits_per_weight": 4.0, "n_params": 1, "file": "README.md"}
    assert mm("push", published, "--repo", REPO).exit_code == 0
    document = json.loads(tree(local_hub)["profiles/m.json"])
    # A document under another name that claims to be `m` and to own README.md and data.gguf:
    for path, file in (("profiles/other.json", "README.md"), ("profiles/x.json", "data.gguf")):
        local_hub.update_file(REPO, path, json.dumps({**document, **stray, "file": file}).encode())
    before = tree(local_hub)
    pushed = mm("push", published, "--repo", REPO, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert json.loads(pushed.stdout)["deleted"] == []
    after = tree(local_hub)
    for path in ("LICENSE", "data.gguf", "profiles/other.json", "profiles/x.json"):
        assert after[path] == before[path]
    assert b"Hand-written." in after["README.md"]


def test_a_file_mm_did_not_write_is_never_replaced(mm: Mm, published: str, local_hub: LocalHub) -> None:
    local_hub.add_repo(REPO, {"profiles/m.json": b'{"a person": "wrote this"}'})
    before = tree(local_hub)
    refused(mm("push", published, "--repo", REPO), 3, "profiles/m.json", "did not write", "refusing")
    assert tree(local_hub) == before and local_hub.uploads.commits == []


def test_a_gguf_changed_by_hand_is_not_deleted_when_its_profile_moves_on(
    mm: Mm, published: str, tiny_model_f16: Path, tmp_path: Path, local_hub: LocalHub
) -> None:
    assert mm("push", published, "--repo", REPO).exit_code == 0
    (old,) = [p for p in tree(local_hub) if p.endswith(".gguf")]
    local_hub.update_file(REPO, old, b"someone replaced this by hand")
    second = tmp_path / "m2.gguf"
    shutil.copyfile(tiny_model_f16, second)
    assert mm("publish", str(second), "--hardware", "cpu-64g", "--name", published).exit_code == 0
    pushed = mm("push", published, "--repo", REPO, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert json.loads(pushed.stdout)["deleted"] == []
    assert tree(local_hub)[old] == b"someone replaced this by hand"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"commitOid": "../../\x1b[31mevil"}, ["invalid value", "40-hex git commit"]),
        ({"commitOid": 12}, ["invalid value", "40-hex git commit"]),
        ({"commitUrl": "not a url"}, ["not a Hub commit answer"]),
        ({"commitUrl": None}, ["not a Hub commit answer"]),
    ],
)
def test_an_odd_commit_answer_is_one_error_and_never_printed_raw(
    mm: Mm, published: str, local_hub: LocalHub, answer: dict[str, object], words: list[str]
) -> None:
    local_hub.uploads.commit_answer = answer
    output = refused(mm("push", published, "--repo", REPO), 3, *words)
    assert "\x1b" not in output


def test_a_readme_that_is_not_utf8_is_left_byte_for_byte(mm: Mm, published: str, local_hub: LocalHub) -> None:
    """huggingface_hub (and the Hub) take only UTF-8 cards: the person's bytes stay, the rest is pushed."""
    person = b"# Notes\n\xff\xfe Latin-1 caf\xe9, and a lone \x80 byte.\n"
    local_hub.add_repo(REPO, {"README.md": person})
    pushed = mm("push", published, "--repo", REPO)
    assert pushed.exit_code == 0, pushed.stderr
    assert "README.md is not UTF-8" in pushed.stderr
    files = tree(local_hub)
    assert files["README.md"] == person and "profiles/m.json" in files


def test_a_readme_over_the_document_cap_is_left_as_it_is_without_reading_it(
    mm: Mm, published: str, local_hub: LocalHub
) -> None:
    person = b"# A long card\n" + b"x" * (2 << 20)
    local_hub.add_repo(REPO, {"README.md": person})
    pushed = mm("push", published, "--repo", REPO)
    assert pushed.exit_code == 0, pushed.stderr
    assert "left as it is" in pushed.stderr
    assert tree(local_hub)["README.md"] == person and local_hub.file_gets("README.md") == []
