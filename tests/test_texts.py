"""Texts for eval and calibration: local files, and pinned Hub dataset files pulled through mm's own Hub code."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import pytest

from pipeline.base.errors import IntegrityError, UsageError
from pipeline.llama.imatrix import calibration_text
from pipeline.resolve.texts import DEFAULT_TEXT, WIKITEXT_COMMIT, TextRef, parse_text, resolve_text
from tests.hub import LocalHub

TEXT = b"The quick brown fox jumps over the lazy dog.\n" * 50


def test_local_text_resolves_with_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT)
    resolved = resolve_text(parse_text(str(path)))
    assert resolved.path == path
    assert resolved.sha256 == hashlib.sha256(TEXT).hexdigest()


def test_missing_local_text_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        resolve_text(parse_text(str(tmp_path / "nope.txt")))


def test_parse_hub_text_and_default() -> None:
    ref = parse_text("org/texts:sub/wiki.txt@0123456789abcdef0123456789abcdef01234567")
    assert (ref.repo, ref.file, ref.revision, ref.member) == (
        "org/texts", "sub/wiki.txt", "0123456789abcdef0123456789abcdef01234567", None,
    )  # fmt: skip
    default = parse_text(None)
    assert str(default) == DEFAULT_TEXT and default.member == "wikitext-2-raw/wiki.test.raw"


def test_the_default_texts_are_pinned_to_a_commit_and_a_digest() -> None:
    for default in (parse_text(None), calibration_text(None)):
        assert re.fullmatch(r"[0-9a-f]{40}", default.revision), default
        assert default.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", default.sha256)
    assert parse_text("ggml-org/ci:wikitext-2-raw-v1.zip@main").sha256 is None  # a branch moves: no content pin


def test_the_default_text_with_other_bytes_at_its_commit_is_refused(local_hub: LocalHub) -> None:
    """The pin is checked, not decorative: a server answering the pinned commit with another zip is refused."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("wikitext-2-raw/wiki.test.raw", TEXT)
    local_hub.add_repo("datasets/ggml-org/ci", {"wikitext-2-raw-v1.zip": buffer.getvalue()})
    repo = local_hub.repos["datasets/ggml-org/ci"]
    repo.commits[WIKITEXT_COMMIT] = repo.commits[repo.refs["main"]]  # the pinned commit, serving other bytes
    with pytest.raises(IntegrityError):
        resolve_text(parse_text(None))


def test_dataset_text_is_pulled_verified_and_cached(local_hub: LocalHub) -> None:
    commit = local_hub.add_repo("datasets/org/texts", {"wiki.txt": TEXT})
    ref = parse_text(f"org/texts:wiki.txt@{commit}")
    first = resolve_text(ref)
    assert first.path.read_bytes() == TEXT
    assert first.sha256 == hashlib.sha256(TEXT).hexdigest() and first.commit == commit
    assert "datasets--org--texts" in str(first.path)
    local_hub.clear_log()
    again = resolve_text(ref)
    assert again.path == first.path and local_hub.file_gets("wiki.txt") == []  # a pinned commit: no request


def test_dataset_text_pin_mismatch_is_refused(local_hub: LocalHub) -> None:
    commit = local_hub.add_repo("datasets/org/texts", {"wiki.txt": TEXT})
    ref = TextRef(repo="org/texts", file="wiki.txt", revision=commit, sha256="0" * 64)
    with pytest.raises(IntegrityError):
        resolve_text(ref)


def test_zip_member_is_extracted_from_a_verified_archive(local_hub: LocalHub) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("wikitext-2-raw/wiki.test.raw", TEXT)
    commit = local_hub.add_repo("datasets/ggml-org/ci", {"wikitext-2-raw-v1.zip": buffer.getvalue()})
    resolved = resolve_text(parse_text(f"ggml-org/ci:wikitext-2-raw-v1.zip#wikitext-2-raw/wiki.test.raw@{commit}"))
    assert resolved.path.read_bytes() == TEXT
    assert resolved.sha256 == hashlib.sha256(TEXT).hexdigest()
    assert resolved.source.startswith("ggml-org/ci:wikitext-2-raw-v1.zip#wikitext-2-raw/wiki.test.raw@")
    with pytest.raises(UsageError, match="relative path"):
        resolve_text(parse_text("ggml-org/ci:wikitext-2-raw-v1.zip#../../x@main"))
