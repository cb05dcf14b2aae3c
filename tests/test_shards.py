"""Shard names of a split GGUF, as llama.cpp's llama_split_path writes them ("%s-%05d-of-%05d.gguf")."""

from __future__ import annotations

from pathlib import Path

from pipeline.base.shards import shard_names, shard_paths, unsplit_stem


def test_any_shard_names_them_all() -> None:
    names = ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
    assert shard_names("m-00002-of-00003.gguf") == names
    assert shard_names("m.gguf") == ["m.gguf"]
    assert shard_names("m-1-of-3.gguf") == ["m-1-of-3.gguf"]  # not llama.cpp's naming: one file


def test_paths_sit_beside_the_one_given(tmp_path: Path) -> None:
    assert shard_paths(tmp_path / "x-00002-of-00002.gguf") == [tmp_path / "x-00001-of-00002.gguf",
                                                                tmp_path / "x-00002-of-00002.gguf"]  # fmt: skip
    assert shard_paths(tmp_path / "x.gguf") == [tmp_path / "x.gguf"]


def test_the_stem_drops_the_shard_suffix() -> None:
    assert unsplit_stem("llama-7b-00001-of-00002.gguf") == "llama-7b"
    assert unsplit_stem("llama-7b.gguf") == "llama-7b"
