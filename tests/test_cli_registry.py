"""The registry through the command line, as a user drives it: publish → ls → show → run → export → rm → gc."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.home import mm_home
from tests.conftest import write_recipe
from tests.hub import LocalHub

Mm = Callable[..., Result]


def own_copy(model: Path, folder: Path, name: str = "tiny-llama-f32.gguf") -> Path:
    """A private copy of the shared model, for tests that damage files."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(model, folder / name))


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    stat = path.stat()
    path.chmod(stat.st_mode | 0o200)  # blobs are read-only: damage comes from rot or a forced write
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    with open(path, "r+b") as handle:  # in place: same inode, as disk rot or a stray write would
        handle.write(data)
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_publish_ls_show_run_export_rm_gc(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    model = own_copy(tiny_model, tmp_path)
    published = mm("publish", str(model), "--hardware", "cpu-64g", "--ctx", "512", "--json")
    assert published.exit_code == 0, published.stderr
    profile = json.loads(published.stdout)
    name = profile["name"]
    assert name == "tiny-llama-f32@cpu-64g"

    listed = mm("ls")
    assert listed.exit_code == 0 and name in listed.stdout and "cpu-64g" in listed.stdout
    rows = json.loads(mm("ls", "--json").stdout)["profiles"]
    assert [(r["name"], r["quant"], r["size_bytes"]) for r in rows] == [(name, "f32", model.stat().st_size)]

    shown = json.loads(mm("show", name, "--json").stdout)
    assert shown["run"]["n_ctx"] == 512 and shown["provenance"]["source"]["path"] == str(model)
    assert "tiny-llama-f32@cpu-64g" in mm("show", name).stdout

    ran = mm("run", name, "-p", "hello world", "--max-tokens", "4", "--seed", "1")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip() and "tokens in" in ran.stderr

    modelfile = mm("export", name, "--format", "ollama").stdout
    blob = mm_home().blobs / profile["blob"]["sha256"]
    from_path = Path(re.search(r"^FROM (.+)$", modelfile, re.MULTILINE).group(1))  # type: ignore[union-attr]
    # Ollama 0.5.5 picks its importer by the FROM file's extension: the path ends in .gguf, and is the blob.
    assert from_path.suffix == ".gguf" and from_path.resolve() == blob.resolve()
    assert "PARAMETER num_ctx 512\n" in modelfile and "Ollama 0.5.5" in modelfile
    assert mm("export", name, "--format", "llama-server").stdout.startswith(f"llama-server -m {blob} ")
    assert json.loads(mm("export", name, "--format", "json").stdout)["name"] == name
    bad = mm("export", name, "--format", "docker")
    assert bad.exit_code == 2 and "ollama, llama-server, json" in bad.stderr

    assert mm("rm", name).exit_code == 0
    assert mm("show", name).exit_code == 9
    assert blob.exists()  # rm leaves blobs to gc
    collected = mm("gc", "--json")
    removed = {Path(i["path"]) for i in json.loads(collected.stdout)["removed"]}
    assert removed == {blob, from_path}  # the blob and export's link to it
    assert not blob.exists() and model.exists()  # the user's own file is never touched


def test_unknown_profile_and_model_are_clear_errors(mm: Mm) -> None:
    missing = mm("run", "nope", "-p", "x")
    assert missing.exit_code == 9 and "no profile named 'nope'" in missing.stderr
    bad_model = mm("publish", "missing.gguf", "--hardware", "cpu-64g")
    assert bad_model.exit_code == 2 and "missing.gguf" in bad_model.stderr
    bad_hw = mm("publish", "missing.gguf", "--hardware", "no-such-card")
    assert bad_hw.exit_code != 0


def test_flipped_byte_is_caught_by_verify_and_refused_by_run(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    assert mm("publish", str(own_copy(tiny_model, tmp_path / "a")), "-H", "cpu-64g", "--name", "bad").exit_code == 0
    assert (
        mm("publish", str(own_copy(tiny_model, tmp_path / "b", "o.gguf")), "-H", "cpu-32g", "--name", "other").exit_code
        == 0
    )
    assert mm("verify").exit_code == 0
    blob = next(mm_home().blobs.iterdir())
    flip_byte(blob, keep_mtime=True)
    verified = mm("verify")
    assert verified.exit_code == 5 and "CORRUPT  bad" in verified.stdout and "bad" in verified.stderr
    assert json.loads(mm("verify", "--json").stdout)["corrupted"] == ["bad", "other"]
    refused = mm("run", "bad", "-p", "hi", "--max-tokens", "2", "--verify")
    assert refused.exit_code == 5 and "corrupted" in refused.stderr


def test_run_refuses_a_blob_whose_size_changed(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    assert mm("publish", str(own_copy(tiny_model, tmp_path)), "-H", "cpu-64g", "--name", "short").exit_code == 0
    blob = next(mm_home().blobs.iterdir())
    with open(blob, "r+b") as handle:
        handle.truncate(blob.stat().st_size - 32)
    refused = mm("run", "short", "-p", "hi", "--max-tokens", "2")
    assert refused.exit_code == 5 and "expected" in refused.stderr and "short" in refused.stderr


def test_a_broken_profile_file_does_not_break_ls_or_run(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    assert mm("publish", str(own_copy(tiny_model, tmp_path)), "-H", "cpu-64g", "--name", "good").exit_code == 0
    broken = mm_home().profiles / "broken.json"
    broken.write_text("{ not json")
    listed = mm("ls")
    assert listed.exit_code == 0 and "good" in listed.stdout and str(broken) in listed.stderr
    assert json.loads(mm("ls", "--json").stdout)["errors"][0].startswith(str(broken))
    shown = mm("show", "broken")
    assert shown.exit_code == 9 and str(broken) in shown.stderr
    assert mm("run", "good", "-p", "hi", "--max-tokens", "2").exit_code == 0
    assert mm("verify").exit_code == 5  # an unreadable profile is a failed verify
    assert mm("rm", "broken").exit_code == 0 and mm("verify").exit_code == 0


def _mm_process(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_concurrent_publishers_all_land_consistently(mm: Mm, tiny_model: Path, tiny_model_f16: Path) -> None:
    models = [tiny_model, tiny_model_f16, tiny_model, tiny_model_f16]
    procs = [_mm_process("publish", str(m), "-H", "cpu-64g", "--name", f"p{i}") for i, m in enumerate(models)]
    procs.append(_mm_process("publish", str(tiny_model), "-H", "cpu-64g", "--name", "p0"))  # same name twice
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    rows = json.loads(mm("ls", "--json").stdout)
    assert rows["errors"] == [] and [r["name"] for r in rows["profiles"]] == ["p0", "p1", "p2", "p3"]
    assert len(list(mm_home().blobs.iterdir())) == 2  # two contents, each stored once
    assert mm("verify").exit_code == 0
    assert not list(mm_home().profiles.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_during_publish_leaves_the_registry_consistent(
    mm: Mm, tiny_model: Path, tiny_model_f16: Path, tmp_path: Path
) -> None:
    assert mm("publish", str(tiny_model), "-H", "cpu-64g", "--name", "before").exit_code == 0
    # Kill at spread-out moments of startup, fit, hashing, linking and writing; each must leave a registry
    # where every profile is whole and points at an intact blob.
    for index, delay in enumerate((0.3, 0.6, 0.8, 1.0, 1.2)):
        model = own_copy(tiny_model_f16, tmp_path / str(index), f"m{index}.gguf")  # a blob not yet stored
        proc = _mm_process("publish", str(model), "-H", "cpu-64g", "--name", "victim")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        verified = mm("verify")
        assert verified.exit_code == 0, verified.stdout + verified.stderr
        listed = json.loads(mm("ls", "--json").stdout)
        assert listed["errors"] == [] and "before" in [r["name"] for r in listed["profiles"]]
    again = mm("publish", str(tiny_model), "-H", "cpu-64g", "--name", "victim")  # the next run simply works
    assert again.exit_code == 0, again.stderr
    mm("gc")
    assert len(list(mm_home().blobs.iterdir())) == 1 and mm("verify").exit_code == 0


def test_publish_a_pulled_hub_file_records_repo_and_commit(mm: Mm, local_hub: LocalHub, tiny_model: Path) -> None:
    commit = local_hub.add_repo("someone/tiny-GGUF", {"tiny-llama-f32.gguf": tiny_model})
    assert mm("pull", "someone/tiny-GGUF:tiny-llama-f32.gguf", "--quiet").exit_code == 0
    published = mm("publish", "someone/tiny-GGUF:tiny-llama-f32.gguf", "-H", "cpu-64g", "--json")
    assert published.exit_code == 0, published.stderr
    source = json.loads(published.stdout)["provenance"]["source"]
    assert (source["kind"], source["repo"], source["commit"], source["file"]) == (
        "hub", "someone/tiny-GGUF", commit, "tiny-llama-f32.gguf"
    )  # fmt: skip


def test_publish_a_recipe_uses_its_hardware_and_run_settings(mm: Mm, recipes_folder: Path, tiny_model: Path) -> None:
    body = f'hardware = "cpu-32g"\n[source]\npath = "{tiny_model}"\n[run]\nctx = 384\nthreads = 2\n'
    write_recipe(recipes_folder, "tiny-chat", body)
    published = mm("publish", "tiny-chat", "--recipes", str(recipes_folder), "--json")
    assert published.exit_code == 0, published.stderr
    profile = json.loads(published.stdout)
    assert profile["name"] == "tiny-chat-f32@cpu-32g" and profile["hardware"] == "cpu-32g"
    assert (profile["run"]["n_ctx"], profile["run"]["n_threads"]) == (384, 2)
    assert profile["provenance"]["recipe"] == "tiny-chat" and len(profile["provenance"]["recipe_sha256"]) == 64
