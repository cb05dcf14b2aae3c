"""Text archives and texts are read within bounds: a zip member's expansion is capped, --chunks bounds what is
read, and colliding member names are one error."""

from __future__ import annotations

import io
import resource
import zipfile
from pathlib import Path

import pytest

from pipeline.base.errors import IntegrityError, UsageError
from pipeline.base.home import mm_home
from pipeline.resolve import texts
from pipeline.resolve.texts import parse_text, read_text, resolve_text, text_budget, text_within
from tests.hub import LocalHub


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_a_member_expanding_past_the_cap_is_refused_without_being_held(
    local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(texts, "MAX_TEXT_BYTES", 4 << 20)
    bomb = _zip({"bomb.txt": b"\0" * (64 << 20)})  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 1 << 20
    commit = local_hub.add_repo("datasets/org/texts", {"t.zip": bomb})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UsageError, match="uncompressed; at most 4194304"):
        resolve_text(parse_text(f"org/texts:t.zip#bomb.txt@{commit}"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB: never read whole
    assert not list((mm_home().root / "texts").rglob("*bomb*"))


def test_colliding_member_names_are_one_error(local_hub: LocalHub) -> None:
    commit = local_hub.add_repo("datasets/org/texts", {"t.zip": _zip({"sub": b"a file", "sub/x.txt": b"text"})})
    for member in ("sub", "sub/x.txt"):
        with pytest.raises(IntegrityError, match="'sub' is both a file and a folder"):
            resolve_text(parse_text(f"org/texts:t.zip#{member}@{commit}"))


def test_members_of_one_archive_never_collide_on_disk(local_hub: LocalHub) -> None:
    commit = local_hub.add_repo("datasets/org/texts", {"t.zip": _zip({"a/x.txt": b"one", "b/x.txt": b"two"})})
    first = resolve_text(parse_text(f"org/texts:t.zip#a/x.txt@{commit}"))
    second = resolve_text(parse_text(f"org/texts:t.zip#b/x.txt@{commit}"))
    assert (first.path.read_bytes(), second.path.read_bytes()) == (b"one", b"two")


def test_chunks_bound_how_much_text_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * (4 << 20))  # 20 MiB
    budget = text_budget(2, 128)
    assert budget < 64 << 10 and text_budget(None, 128) == texts.MAX_TEXT_BYTES
    assert len(read_text(big, budget)) == budget
    with text_within(big, budget) as prefix:
        assert prefix != big and prefix.stat().st_size == budget
    assert not prefix.exists()
    with text_within(big, big.stat().st_size) as whole:
        assert whole == big
