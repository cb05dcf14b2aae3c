"""The one run-settings model: its rules, the older spellings it still reads, and hostile stored settings
that `mm run` refuses with one message (exit 9) before llama.cpp sees them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from pipeline.base.errors import UsageError
from pipeline.base.home import mm_home
from pipeline.registry.profile import SCHEMA_VERSION
from pipeline.registry.store import get_profile, profile_path, read_profile
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import (
    MAX_TOKENS,
    RunSettings,
    expert_overrides,
    override_layer,
    run_settings,
)
from tests.conftest import publish_fitted

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = get_hardware("cpu-64g")
Mm = Callable[..., Result]


def test_recipe_spellings_and_llama_cpp_names_are_one_model() -> None:
    old = RunSettings.model_validate({"ctx": 1024, "batch": 256, "ubatch": 64, "threads": 3, "mmap": False})
    new = RunSettings(n_ctx=1024, n_batch=256, n_ubatch=64, n_threads=3, use_mmap=False)
    assert old == new and RunSettings.model_validate(new.model_dump()) == new


def test_ubatch_is_at_most_batch_as_llama_cpp_clamps_it() -> None:
    assert RunSettings(n_batch=256).n_ubatch == 256  # llama-context.cpp: min(n_batch, n_ubatch)
    assert RunSettings(n_batch=256).with_flags(n_batch=4096).n_ubatch == 512  # the default again


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"type_k": -1}, "type_k"),
        ({"type_v": 1 << 40}, "type_v"),
        ({"type_k": "q8_0"}, "type_k"),
        ({"kv_type": "f16", "type_k": 8}, "type_k"),
        ({"kv_type": "q5_1"}, "kv_type"),
        ({"kv_type": "q8_0", "flash_attn": False}, "kv_type"),
        ({"n_ctx": 2**40}, "n_ctx"),
        ({"n_ctx": MAX_TOKENS + 1}, "n_ctx"),
        ({"n_batch": 0}, "n_batch"),
        ({"n_ubatch": 2**40}, "n_ubatch"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_threads": 100_000}, "n_threads"),
        ({"parallel": 1000}, "parallel"),
        ({"n_gpu_layers": -1}, "n_gpu_layers"),
        ({"tensor_overrides": ["(a+)+$"]}, "tensor_overrides"),
    ],
)
def test_each_bad_setting_is_one_error_naming_its_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(UsageError) as caught:
        run_settings(document, where="profile.json: run.")
    assert caught.value.param == field and f"run.{field}: " in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        "(a+)+$",
        ".*=CPU",
        r"blk\.0\.ffn_up_exps=CUDA0",
        r"blk\.01\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU",
        r"blk\.123456\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU",
        r"\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU" + "x" * 10_000,
        "",
    ],
)
def test_only_the_overrides_mm_writes_are_read(text: str) -> None:
    with pytest.raises(ValueError, match="not a tensor override mm writes"):
        override_layer(text)


def test_every_override_fit_writes_reads_back_with_its_layer() -> None:
    for held in range(5):
        written = expert_overrides(held, 4)
        layers = [override_layer(text) for text in written]
        assert layers == ([None] if held >= 4 else list(range(held)))
        assert RunSettings(tensor_overrides=written).tensor_overrides == written


@pytest.fixture
def stored(tiny_model: Path, tmp_path: Path) -> Callable[[Callable[[dict[str, Any]], None]], None]:
    """Publish the tiny model as profile `p`; the returned function edits its stored document in place."""
    model = Path(shutil.copyfile(tiny_model, tmp_path / "tiny.gguf"))
    publish_fitted(model, CPU, name="p", settings=RunSettings(n_ctx=512))

    def edit(change: Callable[[dict[str, Any]], None]) -> None:
        path = profile_path(mm_home(), "p")
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    return edit


def test_a_profile_written_by_older_mm_still_reads(stored: Callable[..., None]) -> None:
    before = get_profile("p").run

    def older(document: dict[str, Any]) -> None:
        run = document["run"]
        run["threads"] = run.pop("n_threads")
        for key in ("cpu_moe", "swa_full", "kv_unified", "n_cpu_moe", "tensor_overrides"):
            run.pop(key)
        document["schema_version"] = 1

    stored(older)
    assert get_profile("p").run == before


def test_a_profile_from_a_newer_mm_is_refused_by_its_version(stored: Callable[..., None]) -> None:
    """A later schema may add fields this mm does not know: the error names the version, not one field."""

    def newer(document: dict[str, Any]) -> None:
        document["schema_version"] = SCHEMA_VERSION + 1
        document["run"]["some_later_setting"] = True

    stored(newer)
    result = _mm_run("p")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"schema version {SCHEMA_VERSION + 1} is not supported" in result.stderr, result.stderr
    assert "some_later_setting" not in result.stderr and "upgrade mm" in result.stderr


def _mm_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`mm run` in its own process, as a user runs it: a segfault or a hang would show here."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", *args], capture_output=True, text=True, timeout=120,
        cwd=REPO_ROOT, env=dict(os.environ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type_k", -1),
        ("n_ctx", 2**40),
        ("tensor_overrides", ["(a+)+$"]),
        ("n_ctx", 8192),  # past the tiny model's 4096-token training
        ("n_cpu_moe", 3),  # the tiny model has 2 layers
        ("tensor_overrides", [r"blk\.7\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"]),
    ],
)
def test_mm_run_refuses_a_hostile_stored_setting_with_one_message(
    stored: Callable[..., None], field: str, value: object
) -> None:
    stored(lambda document: document["run"].__setitem__(field, value))
    result = _mm_run("p", "hi", "--raw", "-n", "1")
    assert result.returncode == 9, result.stderr  # README: 9 registry
    assert result.stderr.startswith("error: ") and f"{field}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_stored_setting_past_the_model_is_refused_where_it_is_read(stored: Callable[..., None]) -> None:
    stored(lambda document: document["run"].__setitem__("n_ctx", 2**40))
    with pytest.raises(Exception, match=r"run\.n_ctx: Input should be less than or equal to 16777216"):
        read_profile(profile_path(mm_home(), "p"))


def test_mm_run_never_runs_the_documents_own_kwargs(stored: Callable[..., None]) -> None:
    """llama_kwargs and the command lines in a document are for other tools: mm derives its own."""
    stored(lambda document: document["llama_kwargs"].update(type_k=-1, n_ctx=2**40))
    result = _mm_run("p", "hi", "--raw", "-n", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_tokens"] == 1


def test_every_command_that_runs_a_model_takes_the_same_run_flags(mm: Mm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    flags = ("--ctx", "--kv-type", "--flash-attn", "--batch", "--ubatch", "--parallel", "--n-gpu-layers",
             "--threads", "--n-cpu-moe", "--cpu-moe")  # fmt: skip
    for command in ("fit", "publish", "bench", "run"):
        shown = mm(command, "--help").stdout
        assert all(flag in shown for flag in flags), (command, shown)


def test_a_run_flag_beyond_its_range_is_one_usage_error(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "-H", "cpu-64g", "--batch", str(2**30))
    assert result.exit_code == 2 and "n_batch: " in result.stderr and "flag: --batch" in result.stderr
