"""What a new user trips on (issue 22), typed as they type it: each mistake one clear error, with its exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.home import mm_home
from pipeline.measure.machine import cache_measurement
from pipeline.registry.store import get_profile
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.conftest import publish_fitted, write_recipe
from tests.hub import LocalHub
from tests.test_pull_tty import REPO_ROOT, _read_until

Mm = Callable[..., Result]


def quant_files() -> list[Path]:
    folder = mm_home().root / "quant"
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def test_a_multi_type_quantize_checks_every_type_before_any_work(mm: Mm, tiny_model: Path) -> None:
    needs = mm("quantize", str(tiny_model), "--to", "q4_k_m", "--to", "q5_k_m", "--to", "iq2_xxs", "--to", "iq1_s")
    assert needs.exit_code == 7, needs.output
    assert "nothing quantized: 2 of 4 types cannot be made" in needs.stderr
    assert "iq2_xxs needs an importance matrix" in needs.stderr and "iq1_s needs an importance matrix" in needs.stderr
    assert "q4_k_m needs" not in needs.stderr and "flag: --imatrix" in needs.stderr
    assert quant_files() == []  # q4_k_m and q5_k_m were not made first

    unknown = mm("quantize", str(tiny_model), "--to", "q4_k_m", "--to", "q5km", "--to", "q9_z")
    assert unknown.exit_code == 2
    assert "unknown quantization types 'q5km', 'q9_z'" in unknown.stderr and "q5km -> q5_k_m" in unknown.stderr
    assert quant_files() == []


def test_a_folder_or_a_missing_file_is_not_called_a_recipe(mm: Mm, tmp_path: Path) -> None:
    folder = mm("quantize", str(tmp_path), "--to", "q4_k_m")
    assert folder.exit_code == 2 and f"{tmp_path} is a folder, not a model" in folder.stderr
    assert "no recipe" not in folder.stderr
    missing = mm("quantize", str(tmp_path / "notes.txt"), "--to", "q4_k_m")
    assert missing.exit_code == 2 and "notes.txt: no such file" in missing.stderr
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    not_gguf = mm("quantize", str(readme), "--to", "q4_k_m")
    assert not_gguf.exit_code == 6 and "not a GGUF file" in not_gguf.stderr and "no recipe" not in not_gguf.stderr


def test_eval_without_a_text_offline_points_at_a_local_text(mm: Mm, tiny_model: Path) -> None:
    result = mm("eval", str(tiny_model), "--ref", str(tiny_model), "--offline")
    assert result.exit_code == 3
    assert "give a local text file" in result.stderr and "flag: --text FILE" in result.stderr
    assert "flag: --offline" not in result.stderr


def test_fit_of_a_repository_lists_its_gguf_files(mm: Mm, local_hub: LocalHub) -> None:
    local_hub.add_repo("someone/tiny-GGUF", {"tiny-q4_k_m.gguf": b"GGUF" + bytes(60), "README.md": b"hi"})
    result = mm("fit", "someone/tiny-GGUF", "--hardware", "cpu-64g")
    assert result.exit_code == 2
    assert "someone/tiny-GGUF is a repository; name one of its files" in result.stderr
    assert "tiny-q4_k_m.gguf" in result.stderr and "README.md" not in result.stderr


def test_a_mistyped_hardware_class_gets_a_did_you_mean(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "--hardware", "rtx3060")
    assert result.exit_code == 2 and "did you mean rtx3060-12g?" in result.stderr


def test_a_saved_hardware_class_is_known_from_any_folder(
    mm: Mm, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_measurement(get_hardware("cpu-64g"))  # as `mm hw --measure` leaves it
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    saved = mm("hw", "--save", "my-box")
    assert saved.exit_code == 0, saved.stderr
    written = tmp_path / "config" / "mm" / "hardware.toml"
    assert "my-box" in tomllib.loads(written.read_text()) and not Path("recipes/hardware.toml").exists()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    fitted = mm("fit", str(tiny_model), "--hardware", "my-box", "--json")
    assert fitted.exit_code == 0, fitted.stderr


def test_an_export_format_is_accepted_in_any_case(mm: Mm, tiny_model: Path) -> None:
    profile = publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny@cpu-64g")
    result = mm("export", profile.name, "--format", "Ollama")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("FROM ") or "\nFROM " in result.stdout


def test_recipe_validate_reports_every_mistake_in_one_pass(mm: Mm, recipes_folder: Path) -> None:
    write_recipe(
        recipes_folder,
        "four",
        'hardware = "rtx3060"\n[source]\npath = "missing-model.gguf"\n'
        '[quantize]\ntypes = ["q4km"]\nallow_requantise = true\n',
    )
    result = mm("recipe", "validate", str(recipes_folder / "four.toml"))
    assert result.exit_code == 2
    out = result.output
    assert "quantize.types: unknown quantization type 'q4km'" in out and "did you mean q4_k_m?" in out
    assert "quantize.allow_requantise: unknown key; did you mean 'allow_requantize'?" in out
    assert "hardware: unknown class 'rtx3060' (did you mean rtx3060-12g?)" in out
    assert f"source.path: no such file: {recipes_folder / 'missing-model.gguf'}" in out


def test_gc_keeps_what_mm_quantize_made_unless_all(mm: Mm, tiny_model: Path) -> None:
    made = mm("quantize", str(tiny_model), "--to", "q8_0")
    assert made.exit_code == 0, made.stderr
    [output] = quant_files()
    dry = mm("gc", "--dry-run")
    assert dry.exit_code == 0 and str(output) not in dry.stdout and "would free" in dry.stdout
    assert "kept 1 unpublished `mm quantize` output(s)" in dry.stderr and "--all removes them" in dry.stderr
    assert mm("gc").exit_code == 0 and output.is_file()
    everything = mm("gc", "--all", "--dry-run")
    assert "would remove quant" in everything.stdout and str(output) in everything.stdout and output.is_file()
    assert mm("gc", "--all").exit_code == 0 and not output.exists()


def test_run_takes_a_gguf_file_or_a_name_without_its_hardware(mm: Mm, tiny_model: Path) -> None:
    by_file = mm("run", str(tiny_model), "--raw", "Hello", "-n", "4")
    assert by_file.exit_code == 0, by_file.output
    assert "running tiny-llama-f32.gguf as tiny-llama-f32@local" in by_file.stderr
    by_name = mm("run", "tiny-llama-f32", "--raw", "Hello", "-n", "4")
    assert by_name.exit_code == 0, by_name.output
    publish_fitted(tiny_model, get_hardware("cpu-64g"))
    which = mm("run", "tiny-llama-f32", "--raw", "Hello")
    assert which.exit_code == 9, which.output
    assert "names 2 profiles, one per hardware class: which one?" in which.stderr
    assert "tiny-llama-f32@cpu-64g, tiny-llama-f32@local" in which.stderr


def test_a_gpu_profile_run_without_a_gpu_warns(mm: Mm, tiny_model: Path) -> None:
    from pipeline.probe.local_machine import local_class

    if local_class().has_gpu:
        pytest.skip("this machine has a GPU")
    publish_fitted(tiny_model, get_hardware("rtx3060-12g"), name="tiny@rtx3060-12g")
    result = mm("run", "tiny@rtx3060-12g", "--raw", "Hello", "-n", "2")
    assert result.exit_code == 0, result.output
    assert "warning: tiny@rtx3060-12g was planned for rtx3060-12g" in result.stderr
    assert "this machine has no GPU" in result.stderr


def _wait_until_reading(pid: int, seconds: float = 30) -> None:
    """Until the process sleeps in select/poll for the terminal. CPython's readline loses a SIGINT that lands
    between printing the prompt and entering select() (the signal is flagged, then select blocks), a window
    no person can hit but a test that signals on seeing "> " can; so the signal is sent once it waits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if any(word in Path(f"/proc/{pid}/wchan").read_text() for word in ("poll", "select")):
                return
        except OSError:  # no /proc here: a pause instead
            time.sleep(1)
            return
        time.sleep(0.02)


@contextlib.contextmanager
def _chat_on_a_terminal(model: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`mm run` of a profile of `model` on a pseudo-terminal, at its first prompt: (child, controller fd)."""
    publish_fitted(model, get_hardware("cpu-64g"), name="talker")
    controller, terminal = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "talker"],
        stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=dict(os.environ),
    )  # fmt: skip
    os.close(terminal)
    try:
        assert b"> " in _read_until(controller, b"> ", 60)
        yield child, controller
    finally:
        child.kill()
        os.close(controller)


def test_ctrl_c_at_an_empty_chat_prompt_leaves(tiny_model: Path) -> None:
    """Ctrl-C on an empty line ends the chat (as Ollama)."""
    with _chat_on_a_terminal(tiny_model) as (child, controller):
        _wait_until_reading(child.pid)
        child.send_signal(signal.SIGINT)
        rest = _read_until(controller, b"\xff", 5)
        assert child.wait(timeout=30) == 0 and b"Traceback" not in rest


def test_ctrl_c_with_text_typed_drops_it_and_a_second_ctrl_c_leaves(tiny_model: Path) -> None:
    with _chat_on_a_terminal(tiny_model) as (child, controller):
        os.write(controller, b"half a question")
        assert b"half a question" in _read_until(controller, b"half a question", 30)  # readline echoed it
        _wait_until_reading(child.pid)
        child.send_signal(signal.SIGINT)
        dropped = _read_until(controller, b"> ", 30)
        assert b"Ctrl-C again" in dropped and child.poll() is None  # the text is dropped; the chat goes on
        _wait_until_reading(child.pid)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0


def test_demo_help_says_seconds_and_gibberish_by_design(mm: Mm) -> None:
    text = " ".join(mm("demo", "--help").stdout.split())
    assert "seconds" in text and "about a minute" not in text and "gibberish by design" in text


def test_republishing_an_unchanged_blob_keeps_its_measurements(mm: Mm, tiny_model: Path) -> None:
    published = publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny@cpu-64g")
    benched = mm("bench", published.name, "--n-prompt", "8", "--n-gen", "4", "--repetitions", "1", "--json")
    assert benched.exit_code == 0, benched.output
    measured = get_profile(published.name).measured.benches
    assert len(measured) == 1
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny@cpu-64g")  # as a later `mm build` does
    assert get_profile(published.name).measured.benches == measured
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny@cpu-64g", settings=RunSettings(n_ctx=256))
    assert get_profile(published.name).measured.benches == []  # other settings: that measurement is not theirs
