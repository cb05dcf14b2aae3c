"""Header stubs: a Hub model's GGUF header fetched with Range requests, without downloading its tensors."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from pipeline.base.errors import EntryNotFoundError, IntegrityError, ModelFormatError, OfflineError, UsageError
from pipeline.base.home import mm_home
from pipeline.gguf.header import GGUFHeader, read_header, read_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.hub import remote_header
from pipeline.hub.download import pull
from pipeline.hub.remote_header import header_stub
from pipeline.resolve.model_ref import local_model_file, parse_model_arg
from tests.conftest import write_recipe
from tests.hub import LocalHub, sha256_hex

REPO = "org/model-GGUF"


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~39 MB of f16 weights behind a ~10 kB header: what a real model looks like, in miniature."""
    spec = TinySpec(n_layers=2, n_embd=1024, n_ff=2048, dtype="f16")
    return write_tiny_model(tmp_path_factory.mktemp("big") / "model.gguf", spec)


@pytest.fixture(scope="module")
def big_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100k-token vocabulary: the header alone is ~2.5 MB, more than the first Range request asks for."""
    spec = TinySpec(n_vocab=100_000, n_embd=32, n_ff=64, dtype="f16", tie_embeddings=True)
    return write_tiny_model(tmp_path_factory.mktemp("vocab") / "vocab.gguf", spec)


def _served_bytes(hub: LocalHub, filename: str) -> int:
    return sum(r.body_bytes for r in hub.file_gets(filename))


def _facts(header: GGUFHeader) -> tuple[object, ...]:
    tensors = [(t.name, t.type_name, t.shape, t.offset, t.n_bytes) for t in header.tensors]
    return header.version, header.metadata, tensors, header.data_offset, header.file_size


def test_stub_has_the_real_header_and_size_but_no_data(local_hub: LocalHub, big_model: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": big_model})
    [stub] = header_stub(REPO, "model.gguf")

    size = big_model.stat().st_size
    assert stub == mm_home().headers / sha256_hex(big_model.read_bytes()) / "model.gguf"
    assert stub.stat().st_size == size
    assert _facts(read_header(stub))[1:3] == _facts(read_header(big_model))[1:3]
    assert read_header(stub).data_offset == read_header(big_model).data_offset
    reference = gguf.GGUFReader(str(stub))  # the upstream reader agrees on where every tensor lies
    assert [int(t.data_offset) for t in reference.tensors] == [t.offset for t in read_header(big_model).tensors]
    fetched = _served_bytes(local_hub, "model.gguf")
    assert 0 < fetched < size / 10, f"fetched {fetched} of {size} bytes"
    assert stub.stat().st_blocks * 512 < size / 10  # sparse: the hole takes no disk
    assert not any(mm_home().hub.rglob("*.gguf"))  # a stub never looks like a pulled model


def test_commit_revision_reuses_the_stub_without_requests(local_hub: LocalHub, big_model: Path) -> None:
    commit = local_hub.add_repo(REPO, {"model.gguf": big_model})
    first = header_stub(REPO, "model.gguf", commit)
    local_hub.clear_log()

    assert header_stub(REPO, "model.gguf", commit) == first
    assert local_hub.requests == []


def test_branch_costs_one_request_then_works_offline(local_hub: LocalHub, big_model: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": big_model})
    first = header_stub(REPO, "model.gguf")
    local_hub.clear_log()

    assert header_stub(REPO, "model.gguf") == first
    assert local_hub.file_gets("model.gguf") == [] and len(local_hub.requests) == 1  # resolving main only
    local_hub.clear_log()
    assert header_stub(REPO, "model.gguf", offline=True) == first
    assert local_hub.requests == []


def test_new_commit_on_the_branch_gets_a_new_stub(local_hub: LocalHub, big_model: Path, tiny_model: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": big_model})
    [old] = header_stub(REPO, "model.gguf")
    local_hub.update_file(REPO, "model.gguf", tiny_model)

    [new] = header_stub(REPO, "model.gguf")
    assert new != old and new.stat().st_size == tiny_model.stat().st_size
    assert _facts(read_header(new))[1:] == _facts(read_header(tiny_model))[1:]


def test_header_longer_than_the_first_fetch(local_hub: LocalHub, big_vocab_model: Path) -> None:
    real = read_header(big_vocab_model)
    assert real.data_offset > remote_header.FIRST_FETCH  # the premise of this test
    local_hub.add_repo(REPO, {"vocab.gguf": big_vocab_model})

    [stub] = header_stub(REPO, "vocab.gguf")
    header = read_header(stub)
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 100_000
    assert _facts(header)[1:] == _facts(real)[1:]
    gets = local_hub.file_gets("vocab.gguf")
    assert len(gets) >= 2
    assert _served_bytes(local_hub, "vocab.gguf") < big_vocab_model.stat().st_size


def test_header_over_the_cap_is_a_clear_error(
    local_hub: LocalHub, big_vocab_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_hub.add_repo(REPO, {"vocab.gguf": big_vocab_model})
    monkeypatch.setattr(remote_header, "HEADER_CAP", 1 << 20)

    with pytest.raises(ModelFormatError, match="larger than 1 MiB") as caught:
        header_stub(REPO, "vocab.gguf")
    assert f"mm pull {REPO}:vocab.gguf" in str(caught.value)
    assert _served_bytes(local_hub, "vocab.gguf") <= 1 << 20
    assert not any(p.suffix == ".gguf" for p in mm_home().headers.rglob("*"))


def test_offline_without_a_stub_is_a_clear_error(local_hub: LocalHub, big_model: Path) -> None:
    commit = local_hub.add_repo(REPO, {"model.gguf": big_model})
    for revision in ("main", commit):
        with pytest.raises(OfflineError, match="offline"):
            header_stub(REPO, "model.gguf", revision, offline=True)
    assert local_hub.requests == []


def test_not_a_gguf_file_is_rejected_and_nothing_is_kept(local_hub: LocalHub) -> None:
    local_hub.add_repo(REPO, {"model.gguf": b"<html>not a model</html>" * 100})
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        header_stub(REPO, "model.gguf")
    assert not any(p.is_file() and p.suffix == ".gguf" for p in mm_home().headers.rglob("*"))


def test_split_model_shards_sit_side_by_side(local_hub: LocalHub, tmp_path: Path) -> None:
    names = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    files = {n: write_tiny_model(tmp_path / n, TinySpec(seed=i)) for i, n in enumerate(names)}
    local_hub.add_repo(REPO, files)

    stubs = header_stub(REPO, names[1])  # any shard names the whole model; the first comes first
    assert [p.name for p in stubs] == names and stubs[0].parent == stubs[1].parent
    assert len(read_model(stubs[0])) == 2


def test_local_model_file_prefers_a_pulled_file(local_hub: LocalHub, tiny_model: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": tiny_model})
    arg = parse_model_arg(f"{REPO}:model.gguf")
    with pytest.raises(UsageError, match=f"mm pull {REPO}:model.gguf"):
        local_model_file(arg)

    stub, is_stub = local_model_file(arg, allow_header_stub=True)
    assert is_stub and stub.is_relative_to(mm_home().headers)
    [pulled] = pull(REPO, "model.gguf")
    assert local_model_file(arg, allow_header_stub=True) == (pulled.path, False)
    assert local_model_file(parse_model_arg(str(tiny_model))) == (tiny_model, False)


def test_local_model_file_for_a_recipe(local_hub: LocalHub, tiny_model: Path, recipes_folder: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": tiny_model})
    digest = sha256_hex(tiny_model.read_bytes())
    source = f'hardware = "rtx3060-12g"\n[source]\nrepo = "{REPO}"\nfile = "model.gguf"\n'
    write_recipe(recipes_folder, "hubby", source + f'sha256 = "{digest}"\n')
    write_recipe(recipes_folder, "wrongpin", source + f'sha256 = "{"0" * 64}"\n')
    write_recipe(recipes_folder, "local", f'hardware = "rtx3060-12g"\n[source]\npath = "{tiny_model}"\n')

    path, is_stub = local_model_file(parse_model_arg("hubby", recipes_folder), allow_header_stub=True)
    assert is_stub and path.parent.name == digest
    with pytest.raises(IntegrityError, match=r"pin \(source\.sha256\)") as refused:
        local_model_file(parse_model_arg("wrongpin", recipes_folder), allow_header_stub=True)
    assert (refused.value.expected, refused.value.actual) == ("0" * 64, digest)
    assert refused.value.path is not None and refused.value.path.endswith(":model.gguf")
    assert local_model_file(parse_model_arg("local", recipes_folder)) == (tiny_model, False)


def test_missing_file_lists_what_the_repo_has(local_hub: LocalHub, tiny_model: Path) -> None:
    local_hub.add_repo(REPO, {"model.gguf": tiny_model})
    with pytest.raises(EntryNotFoundError, match=r"nope\.gguf not found") as caught:
        header_stub(REPO, "nope.gguf")
    assert "model.gguf" in str(caught.value)
