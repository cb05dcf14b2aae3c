"""`mm cache ls|rm` (as `hf cache ls/rm`), `mm gc` naming what the Hub cache holds, and the Ollama export."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from typer.testing import Result

from pipeline.base.home import mm_home
from pipeline.spec.hardware import get_hardware
from tests.conftest import publish_fitted
from tests.hub import LocalHub

Mm = Callable[..., Result]


def test_cache_ls_and_rm_remove_what_pull_placed(mm: Mm, local_hub: LocalHub, tiny_model: Path) -> None:
    local_hub.add_repo("org/two-GGUF", {"a.gguf": tiny_model.read_bytes(), "b.gguf": b"GGUF" + b"b" * 4000})
    assert mm("pull", "org/two-GGUF", "a.gguf").exit_code == 0
    assert mm("pull", "org/two-GGUF", "b.gguf").exit_code == 0
    listed = json.loads(mm("cache", "ls", "--json").stdout)
    assert sorted((f["repo"], f["filename"], f["refs"]) for f in listed["files"]) == [
        ("org/two-GGUF", "a.gguf", ["main"]), ("org/two-GGUF", "b.gguf", ["main"])
    ]  # fmt: skip
    assert listed["size_bytes"] == tiny_model.stat().st_size + 4004

    gc = mm("gc")  # gc keeps Hub files but says how much they hold and how to remove them
    assert gc.exit_code == 0 and "mm cache rm" in gc.stderr and "2 file(s)" in gc.stderr

    dry = mm("cache", "rm", "org/two-GGUF:a.gguf", "--dry-run")
    assert dry.exit_code == 0 and "would remove org/two-GGUF:a.gguf" in dry.stdout
    assert try_to_load_from_cache("org/two-GGUF", "a.gguf", cache_dir=mm_home().hub) is not None

    removed = mm("cache", "rm", "org/two-GGUF:a.gguf", "--json")
    assert removed.exit_code == 0, removed.output
    blob = Path(json.loads(removed.stdout)["removed"][0]["blob"])
    assert not blob.exists()
    # huggingface_hub itself no longer finds it; the other file is untouched
    assert try_to_load_from_cache("org/two-GGUF", "a.gguf", cache_dir=mm_home().hub) is None
    assert isinstance(try_to_load_from_cache("org/two-GGUF", "b.gguf", cache_dir=mm_home().hub), str)
    assert [f["filename"] for f in json.loads(mm("cache", "ls", "--json").stdout)["files"]] == ["b.gguf"]


def test_cache_rm_of_something_absent_is_one_error(mm: Mm) -> None:
    result = mm("cache", "rm", "org/nothing:x.gguf")
    assert result.exit_code == 2 and result.stderr.startswith("error: not in the Hub cache")


def test_ollama_modelfile_from_ends_in_gguf_and_names_its_versions(mm: Mm, tiny_model: Path) -> None:
    profile = publish_fitted(tiny_model, get_hardware("cpu-32g"), name="olla")
    text = mm("export", "olla").stdout
    line = next(x for x in text.splitlines() if x.startswith("FROM "))
    source = Path(line.removeprefix("FROM "))
    # Ollama 0.5.5 picks its importer by the FROM file's extension (server/create.go)
    assert source.suffix == ".gguf" and os.path.samefile(source, mm_home().blobs / profile.blob.sha256)
    assert "for Ollama 0.5.5 and later" in text
