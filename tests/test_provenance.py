"""Provenance: one SourceRef per source (every shard's digest, the Hub commit), one digest check, and quantize
records that follow the source to the commit it now comes from."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.errors import IntegrityError
from pipeline.base.provenance import check_sha256, read_record, source_ref
from pipeline.hub import download
from tests.hub import LocalHub

REPO = "org/model-GGUF"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_source_ref_of_a_pulled_split_model_names_every_shard_and_its_digest(local_hub: LocalHub) -> None:
    shards = {f"s-{i:05d}-of-00002.gguf": os.urandom(1000 * i) for i in (1, 2)}
    commit = local_hub.add_repo(REPO, shards)
    files = download.pull(REPO, "s-00002-of-00002.gguf")  # any shard names the model

    ref = source_ref(files[1].path, revision="main")

    assert (ref.kind, ref.repo, ref.commit, ref.revision) == ("hub", REPO, commit, "main")
    assert ref.file == "s-00001-of-00002.gguf" and ref.size_bytes == 3000
    assert [Path(p).name for p in ref.shards] == sorted(shards)
    assert ref.sha256 == sha256_of(shards["s-00001-of-00002.gguf"])
    assert ref.shard_sha256 == [sha256_of(shards[name]) for name in sorted(shards)]


def test_source_ref_of_a_local_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights")
    ref = source_ref(model)
    assert (ref.kind, ref.path, ref.sha256, ref.size_bytes) == ("local", str(model), sha256_of(b"weights"), 7)
    assert ref.repo is None and ref.shards == [] and ref.shard_sha256 == []


def test_a_later_shard_changes_what_counts_as_the_same_source(tmp_path: Path) -> None:
    for index, data in ((1, b"one"), (2, b"two")):
        (tmp_path / f"m-{index:05d}-of-00002.gguf").write_bytes(data)
    before = source_ref(tmp_path / "m-00001-of-00002.gguf")
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"TWO")
    after = source_ref(tmp_path / "m-00001-of-00002.gguf")
    assert before.sha256 == after.sha256  # the first shard did not change
    assert not before.same_bytes(after) and before.same_bytes(before)


def test_the_digest_check_carries_path_expected_and_actual() -> None:
    check_sha256("x.gguf", "a" * 64, None, against="nothing", hint="-")  # no expectation: nothing to check
    check_sha256("x.gguf", "a" * 64, "a" * 64, against="the pin", hint="-")
    with pytest.raises(IntegrityError, match="does not match the pin") as caught:
        check_sha256("x.gguf", "a" * 64, "b" * 64, against="the pin", hint="fix it")
    error = caught.value
    assert (error.path, error.expected, error.actual, error.hint) == ("x.gguf", "b" * 64, "a" * 64, "fix it")
    assert error.exit_code == 5


def test_quantize_record_follows_the_source_to_a_new_commit_with_the_same_bytes(
    mm: Callable[..., Result], local_hub: LocalHub, tiny_model: Path
) -> None:
    """The Hub moves main to a commit whose file has the same bytes: the output is up to date, and its
    record names the commit it now comes from (it used to keep the old one)."""
    first = local_hub.add_repo(REPO, {"m.gguf": tiny_model})
    assert mm("pull", f"{REPO}:m.gguf").exit_code == 0
    made = mm("quantize", f"{REPO}:m.gguf", "--to", "q8_0", "--json")
    assert made.exit_code == 0, made.stderr
    output = Path(json.loads(made.stdout)[0]["output"])
    record = read_record(output)
    assert record is not None and record.source.commit == first

    second = local_hub.update_file(REPO, "m.gguf", tiny_model)  # a new commit, identical bytes
    assert second != first and mm("pull", f"{REPO}:m.gguf").exit_code == 0
    again = mm("quantize", f"{REPO}:m.gguf", "--to", "q8_0", "--json")
    assert again.exit_code == 0, again.stderr
    assert "up to date" in json.loads(again.stdout)[0]["skipped"]
    record = read_record(output)
    assert record is not None and record.source.commit == second


# The field names each record has always stored (`<file>.mm.json`, build stamps): one base must not rename any.
# QuantRecord's `requested` is new (gc keeps what `mm quantize` was asked for); an older record reads it as False.
STORED_FIELDS = {
    "QuantRecord": "schema_version output_path sha256 size_bytes file_type n_tensors source params engine "
    "llama_cpp_version threads seconds created_at requested mix",
    "ConvertRecord": "schema_version output_path sha256 size_bytes file_type n_tensors architecture outtype snapshot "
    "key converter seconds created_at",
    "ImatrixRecord": "schema_version output_path sha256 size_bytes n_entries chunks_done perplexity model_path "
    "model_sha256 text_source text_sha256 params key llama_cpp_version seconds created_at",
    "OutputRecord": "path size_bytes sha256",
}


def test_every_record_of_a_made_file_extends_one_base_and_keeps_its_field_names() -> None:
    from pipeline.base.provenance import FileRecord, KeyedRecord, QuantRecord, SidecarRecord
    from pipeline.build.stage import OutputRecord
    from pipeline.convert.converter import ConvertRecord
    from pipeline.llama.imatrix import ImatrixRecord

    records: list[type[FileRecord]] = [QuantRecord, ConvertRecord, ImatrixRecord, OutputRecord]
    for record in records:
        assert issubclass(record, FileRecord)
        assert set(record.model_fields) == set(STORED_FIELDS[record.__name__].split()), record.__name__
    assert issubclass(QuantRecord, SidecarRecord)
    assert issubclass(ConvertRecord, KeyedRecord) and issubclass(ImatrixRecord, KeyedRecord)


def test_a_record_written_in_the_old_field_order_still_reads(tmp_path: Path) -> None:
    output = tmp_path / "m.q8_0.gguf"
    output.write_bytes(b"x")
    ref = {"kind": "local", "path": str(tmp_path / "m.gguf"), "sha256": "a" * 64, "size_bytes": 2}
    old = {
        "schema_version": 1, "output_path": str(output), "sha256": "b" * 64, "size_bytes": 1, "file_type": 7,
        "n_tensors": 3, "source": ref, "params": {"type": "Q8_0"}, "engine": "api",
        "llama_cpp_version": "llama-cpp-python 0.3.36", "threads": None, "seconds": 0.5,
        "created_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    (tmp_path / "m.q8_0.gguf.mm.json").write_text(json.dumps(old, indent=2))
    record = read_record(output)
    assert record is not None and record.model_dump(mode="json", exclude_defaults=False) == {
        **old,
        "source": {**ref, **dict.fromkeys(["repo", "revision", "commit", "file"]), "shards": [], "shard_sha256": []},
        "params": record.params.model_dump(mode="json"),
        "requested": False,  # not in the old record: a build's output, which gc may collect
        "mix": None,  # not in the old record: not a budget quant
    }
    assert record.params.type == "Q8_0"
