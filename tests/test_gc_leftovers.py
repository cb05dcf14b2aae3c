"""`mm gc` against running work and leftovers (issue 10): a running build keeps its quantize outputs; a
killed quantize's temp output and old partial downloads no live process holds are removed and reported;
what a live process holds, and young (resumable) partials, are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.home import locked, mm_home
from pipeline.base.leftovers import PARTIAL_MAX_AGE_SECONDS
from pipeline.base.provenance import quantize_lock_name
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.registry.gc import gc
from tests.conftest import write_recipe

Mm = Callable[..., Result]
ETAG = "ab" * 32


def killed_writer_temp(target: Path) -> Path:
    """The temp file home.atomic_path leaves when its process is killed mid-write."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.write(fd, b"\0" * 4096)
    os.close(fd)
    return Path(name)


def aged(path: Path, seconds: float) -> Path:
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def test_gc_removes_a_killed_quantizes_temp_output_but_not_a_live_ones(mm: Mm) -> None:
    home = mm_home()
    dead = killed_writer_temp(home.quant / "abc-m.q8_0.gguf")
    live_output = home.quant / "abc-m.q4_0.gguf"
    live = killed_writer_temp(live_output)
    with locked(home, quantize_lock_name(live_output)):  # a quantize at work on it
        result = mm("gc")
    assert result.exit_code == 0, result.output
    assert not dead.exists() and live.exists()
    assert "temp" in result.stdout and str(dead) in result.stdout and "removed 1 file(s)" in result.stdout


def test_gc_removes_old_unheld_partials_and_keeps_young_or_held_ones(mm: Mm) -> None:
    home = mm_home()
    home.ensure(home.partial)
    old = aged(_write(home.partial / f"{ETAG}.part", 1000), PARTIAL_MAX_AGE_SECONDS + 60)
    young = _write(home.partial / f"{'cd' * 32}.part", 2000)
    held = aged(_write(home.partial / f"{'ef' * 32}.part", 3000), PARTIAL_MAX_AGE_SECONDS + 60)
    with locked(home, f"blob-{'ef' * 32}"):  # a pull downloading it right now
        result = mm("gc", "--json")
    assert result.exit_code == 0, result.output
    assert not old.exists() and young.exists() and held.exists()
    report = json.loads(result.stdout)
    assert [(i["kind"], i["path"]) for i in report["removed"]] == [("partial", str(old))]
    assert sorted(i["path"] for i in report["kept_partials"]) == sorted([str(young), str(held)])
    again = mm("gc")  # the pull is gone now: its old partial goes too, the young one stays
    assert not held.exists() and young.exists()
    assert "kept 1 resumable partial download(s)" in again.stderr


def _write(path: Path, size: int) -> Path:
    path.write_bytes(b"x" * size)
    return path


@pytest.mark.slow
def test_gc_during_build_never_breaks_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 rounds, each a fresh home: `mm build` (a child process) runs while gc runs in a loop beside it."""
    model = write_tiny_model(tmp_path / "model.gguf", TinySpec(n_layers=1, n_embd=256, n_ff=256, n_vocab=320))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    write_recipe(
        recipes,
        "local",
        f'hardware = "cpu-32g"\n[source]\npath = "{model}"\n[quantize]\ntypes = ["q8_0", "q4_0", "q4_1"]\n'
        "[run]\nctx = 256\nbatch = 256\nubatch = 64\n",
    )
    failed, overlapped = [], 0
    for round_ in range(10):
        home = tmp_path / f"home-{round_}"
        monkeypatch.setenv("MM_HOME", str(home))
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "build", "local", "--recipes", str(recipes)],
            env={**os.environ},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while child.poll() is None:
            overlapped += gc().builds_running
            time.sleep(0.005)
        output = child.communicate()[0]
        if child.returncode != 0:
            failed.append(output)
        assert {p.name for p in (home / "profiles").glob("*.json")} == {
            f"local-{t}@cpu-32g.json" for t in ("q8_0", "q4_0", "q4_1")
        }, output
    assert not failed, failed[0]
    assert overlapped > 10  # gc really ran while builds were running
