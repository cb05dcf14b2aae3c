"""`mm pull REPO --profile NAME` is strict and atomic (issue 19 point 2): documents are capped, a document
must be the profile it is named for, a local profile is replaced only with --force, and a failed
install registers nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from tests.hub import VALID_TOKEN, LocalHub
from tests.test_hostile_hub import refused

Mm = Callable[..., Result]
REPO = "fleet/tiny-GGUF"


@pytest.fixture
def document(
    mm: Mm, tiny_model: Path, tmp_path: Path, local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Profile `m` (the f32 tiny model) pushed to REPO from a publisher's home; then a fresh user home."""
    monkeypatch.setenv("MM_HOME", str(tmp_path / "publisher"))
    own = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--ctx", "256", "--name", "m").exit_code == 0
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert mm("push", "m", "--repo", REPO).exit_code == 0
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("MM_HOME", str(tmp_path / "user"))
    state = local_hub.repos[REPO]
    parsed: dict[str, Any] = json.loads(state.commits[state.refs["main"]]["profiles/m.json"])
    return parsed


def profiles(home: Path) -> dict[str, bytes]:
    folder = home / "profiles"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def test_a_document_over_the_cap_is_refused_before_its_body_is_read(
    mm: Mm, document: dict[str, Any], local_hub: LocalHub, tmp_path: Path
) -> None:
    local_hub.update_file(REPO, "profiles/big.json", b" " * (2 << 20) + json.dumps(document).encode())
    refused(mm("pull", REPO, "--profile", "big"), 3, "profiles/big.json", "more than the 1 MiB")
    assert local_hub.file_gets("profiles/big.json") == []
    assert profiles(tmp_path / "user") == {}


def test_a_document_naming_another_profile_is_refused_and_the_local_one_survives(
    mm: Mm, document: dict[str, Any], local_hub: LocalHub, tmp_path: Path
) -> None:
    assert mm("pull", REPO, "--profile", "m", "--hardware", "cpu-64g").exit_code == 0
    kept = profiles(tmp_path / "user")
    hostile = {**document, "profile": {**document["profile"], "name": "m", "quant": "evil"}}
    local_hub.update_file(REPO, "profiles/innocent.json", json.dumps(hostile).encode())
    refused(mm("pull", REPO, "--profile", "innocent"), 9, "names itself 'm'", "refusing")
    assert profiles(tmp_path / "user") == kept
    listed = mm("pull", REPO, "--list-profiles", "--json")
    assert listed.exit_code == 0 and [p["name"] for p in json.loads(listed.stdout)] == ["m"]


def test_a_local_profile_with_other_content_is_replaced_only_with_force(
    mm: Mm, document: dict[str, Any], tiny_model_f16: Path, tmp_path: Path
) -> None:
    own = tmp_path / "mine.gguf"
    shutil.copyfile(tiny_model_f16, own)
    assert mm("publish", str(own), "--hardware", "cpu-64g", "--name", "m").exit_code == 0
    mine = profiles(tmp_path / "user")
    refused(mm("pull", REPO, "--profile", "m"), 9, "already exists with other content", "flag: --force")
    assert profiles(tmp_path / "user") == mine
    assert mm("pull", REPO, "--profile", "m", "--name", "theirs").exit_code == 0  # beside it: fine
    forced = mm("pull", REPO, "--profile", "m", "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(forced.stdout)["profile"]["blob"]["sha256"] == document["profile"]["blob"]["sha256"]
    again = mm("pull", REPO, "--profile", "m")  # the same content again needs no --force
    assert again.exit_code == 0, again.stderr


def test_an_install_that_fails_registers_nothing(
    mm: Mm, document: dict[str, Any], local_hub: LocalHub, tmp_path: Path
) -> None:
    junk = b"this is not a GGUF file at all\n" * 64
    sha256 = hashlib.sha256(junk).hexdigest()
    profile = {**document["profile"], "name": "junk", "blob": {**document["profile"]["blob"], "sha256": sha256,
               "size_bytes": len(junk)}}  # fmt: skip
    local_hub.commit(REPO, {"junk.gguf": junk, "profiles/junk.json": json.dumps(
        {**document, "file": "junk.gguf", "profile": profile}).encode()})  # fmt: skip
    refused(mm("pull", REPO, "--profile", "junk"), 6, "junk.gguf")
    assert profiles(tmp_path / "user") == {}
    listed = mm("ls", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["profiles"] == []
