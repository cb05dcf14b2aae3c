"""`mm build` as its operator meets it (issue 13): bars in a terminal, stages that never ran said so, one
error line, the Hub cache's refs written so offline use works, and typos answered with a suggestion."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from typer.testing import Result

from pipeline.base.home import mm_home
from tests.conftest import write_recipe
from tests.hub import LocalHub
from tests.test_cli_build import hub_recipe, model_bytes
from tests.test_pull_tty import REPO_ROOT, _read_until

Mm = Callable[..., Result]


def test_build_writes_the_refs_pull_and_offline_use_need(
    mm: Mm, local_hub: LocalHub, recipes_folder: Path, tmp_path: Path
) -> None:
    local_hub.add_repo("org/alpha", {"alpha.gguf": model_bytes(tmp_path, 1)})
    write_recipe(recipes_folder, "alpha", hub_recipe("org/alpha", "alpha.gguf", ["q8_0"]))
    assert mm("build", "alpha", "--recipes", str(recipes_folder)).exit_code == 0
    # huggingface_hub resolves `main` through refs/main, as for a plain `mm pull`
    assert isinstance(try_to_load_from_cache("org/alpha", "alpha.gguf", cache_dir=mm_home().hub), str)
    pulled = mm("pull", "alpha", "--recipes", str(recipes_folder), "--offline", "--json")
    assert pulled.exit_code == 0, pulled.output
    rebuilt = mm("build", "alpha", "--recipes", str(recipes_folder), "--offline", "--force")
    assert rebuilt.exit_code == 0, rebuilt.output


def test_a_failed_stage_leaves_the_rest_not_run_and_says_its_error_once(
    mm: Mm, recipes_folder: Path, tmp_path: Path
) -> None:
    write_recipe(recipes_folder, "gone", 'hardware = "cpu-32g"\n[source]\npath = "missing.gguf"\n'
                 '[quantize]\ntypes = ["q8_0", "q4_0"]\n')  # fmt: skip
    report_file = tmp_path / "report.json"
    result = mm("build", "gone", "--recipes", str(recipes_folder), "--report", str(report_file))
    assert result.exit_code == 10, result.output
    stages = {s["name"]: s["status"] for s in json.loads(report_file.read_text())["recipes"][0]["stages"]}
    assert stages["resolve"] == "failed"
    assert {name: status for name, status in stages.items() if name != "resolve"} == {
        name: "not_run" for name in stages if name != "resolve"
    } and len(stages) == 8  # verify, 2 x (quantize, fit, publish) never attempted
    assert result.stderr.count("no such file") == 1, result.stderr  # the stage's error, shown once
    header, _, row = result.stdout.splitlines()[:3]
    assert "not run" in header and row.split()[2:5] == ["0", "0", "7"]  # ran, skipped, not run


def test_the_summarys_why_column_stays_short(mm: Mm, recipes_folder: Path, tmp_path: Path) -> None:
    long_name = "m" * 200
    write_recipe(recipes_folder, "long", f'hardware = "cpu-32g"\n[source]\npath = "{long_name}.gguf"\n'
                 '[quantize]\ntypes = ["q8_0"]\n')  # fmt: skip
    result = mm("build", "long", "--recipes", str(recipes_folder))
    row = result.stdout.splitlines()[2]
    assert len(row) < 160 and row.endswith("…")
    assert long_name in result.stderr  # the whole message once, where the failure is reported


def test_build_draws_bars_for_download_and_quantize_in_a_terminal(
    local_hub: LocalHub, recipes_folder: Path, tmp_path: Path
) -> None:
    local_hub.add_repo("org/alpha", {"alpha.gguf": model_bytes(tmp_path, 1)})
    write_recipe(recipes_folder, "alpha", hub_recipe("org/alpha", "alpha.gguf", ["q8_0"]))
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "build", "alpha", "--recipes", str(recipes_folder)],
        stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=dict(os.environ),
    )  # fmt: skip
    os.close(terminal)
    try:
        output = _read_until(controller, b"\xff", 60).decode(errors="replace")
        assert child.wait(timeout=60) == 0, output
    finally:
        child.kill()
        os.close(controller)
    assert "alpha.gguf: 100%" in output  # tqdm's download bar, in bytes
    assert "quantize q8_0:" in output and "tensor" in output  # the quantize bar, in tensors


def test_typos_get_suggestions(mm: Mm, tiny_model: Path, recipes_folder: Path) -> None:
    result = mm("quantize", str(tiny_model), "--to", "q4km")
    assert result.exit_code == 2 and "did you mean q4_k_m?" in result.stderr
    path = write_recipe(recipes_folder, "typo", f'hardware = "cpu-32g"\n[source]\npath = "{tiny_model}"\n'
                        '[quantize]\ntypes = ["q8_0"]\nallow_requantise = true\n')  # fmt: skip
    checked = mm("recipe", "validate", str(path))
    assert checked.exit_code == 2
    assert "quantize.allow_requantise: unknown key; did you mean 'allow_requantize'?" in checked.stdout


def test_a_quantized_source_without_allow_requantize_is_caught_before_building(
    mm: Mm, tiny_model: Path, recipes_folder: Path, tmp_path: Path
) -> None:
    q8 = tmp_path / "tiny.q8_0.gguf"
    assert mm("quantize", str(tiny_model), "--to", "q8_0", "--output", str(q8), "-q").exit_code == 0
    recipe = f'hardware = "cpu-32g"\n[source]\npath = "{q8}"\n[quantize]\ntypes = ["q4_0"]\n'
    path = write_recipe(recipes_folder, "requant", recipe)
    checked = mm("recipe", "validate", str(path))
    assert checked.exit_code == 2 and "already quantized (q8_0)" in checked.stdout
    assert "quantize.allow_requantize = true" in checked.stdout
    planned = mm("build", "requant", "--recipes", str(recipes_folder), "--dry-run")
    assert planned.exit_code == 10 and planned.stderr.count("already quantized (q8_0)") == 1, planned.output
    write_recipe(recipes_folder, "requant", recipe + "allow_requantize = true\n")
    assert mm("recipe", "validate", str(path)).exit_code == 0


def test_a_quantized_source_already_of_the_target_type_is_not_refused_before_building(
    mm: Mm, tiny_model: Path, recipes_folder: Path, tmp_path: Path
) -> None:
    """A Q8_0 source with types = ["q8_0"] has nothing to do: the quantize stage skips it, so the early checks
    must not call it a refused re-quantization."""
    q8 = tmp_path / "tiny.q8_0.gguf"
    assert mm("quantize", str(tiny_model), "--to", "q8_0", "--output", str(q8), "-q").exit_code == 0
    recipe = f'hardware = "cpu-32g"\n[source]\npath = "{q8}"\n[quantize]\ntypes = ["q8_0"]\n'
    path = write_recipe(recipes_folder, "same", recipe)
    checked = mm("recipe", "validate", str(path))
    assert checked.exit_code == 0 and "already quantized" not in checked.output, checked.output
    planned = mm("build", "same", "--recipes", str(recipes_folder), "--dry-run")
    assert planned.exit_code == 0 and "already quantized" not in planned.output, planned.output
    skipped = mm("quantize", str(q8), "--to", "q8_0", "-q")
    assert skipped.exit_code == 0, skipped.output
