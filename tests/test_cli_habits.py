"""The command line as users of llama.cpp, Ollama and `hf` expect it (issue 13): their spellings work,
help reads cleanly, fit says what it assumed, and a bad value is one clear error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import Result

from pipeline.cli import app
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.hub import LocalHub

Mm = Callable[..., Result]


def _all_commands() -> list[list[str]]:
    def walk(path: list[str], command: object) -> list[list[str]]:
        sub = getattr(command, "commands", None)
        return [p for name, child in sub.items() for p in walk([*path, name], child)] if sub else [path]

    return walk([], typer.main.get_command(app))


# --- 1. a bad KV type is one error with a suggestion, on fit and publish ---------------------------------


@pytest.mark.parametrize("command", ["fit", "publish"])
@pytest.mark.parametrize("value", ["q8", "Q8", "q5_1"])
def test_a_bad_kv_type_is_one_error_not_a_validation_traceback(
    mm: Mm, tiny_model: Path, command: str, value: str
) -> None:
    result = mm(command, str(tiny_model), "--hardware", "cpu-32g", "--kv-type", value)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --kv-type:") and "f16, q8_0, q4_0" in result.stderr
    assert "pydantic" not in result.output and "validation error" not in result.output
    if value.lower() == "q8":
        assert "did you mean q8_0?" in result.stderr


# --- 2. a bare number is GiB ---------------------------------------------------------------------------


def test_a_bare_ram_number_means_gib(mm: Mm, tiny_model: Path) -> None:
    """The tiny model needs ~50 MiB: 1 byte of RAM would not fit it, 1 GiB does."""
    result = mm("fit", str(tiny_model), "--vram", "0", "--ram", "1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["verdict"] == "cpu_only" and document["fits_ram"]
    assert document["hardware"] == "0 B VRAM, 1 GiB RAM"  # says what it planned for, not "local"
    assert mm("fit", str(tiny_model), "--vram", "0", "--ram", "1B").exit_code == 8  # 1 byte: does not fit


# --- 10. habits: llama.cpp's flags, hf's pull shape, browser URLs, -v after the command, HF_HOME ----------


def test_llama_cpp_spellings_set_the_profile(mm: Mm, tiny_model: Path) -> None:
    result = mm(
        "publish", str(tiny_model), "-H", "rtx3060-12g", "--name", "cpp", "-c", "2048", "-ngl", "all",
        "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on", "-t", "3", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["run"]
    assert (run["n_ctx"], run["kv_type"], run["flash_attn"], run["n_threads"]) == (2048, "q8_0", True, 3)
    assert run["n_gpu_layers"] == 3  # all: 2 layers + the output layer, as llama.cpp counts


@pytest.mark.parametrize(("ngl", "expected"), [("-1", None), ("auto", None), ("all", 999), ("2", 2)])
def test_ngl_takes_llama_cpp_values(mm: Mm, tiny_model: Path, ngl: str, expected: int | None) -> None:
    result = mm("fit", str(tiny_model), "-H", "rtx3060-12g", "-ngl", ngl, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["n_gpu_layers"] == expected


@pytest.mark.parametrize(("value", "flash"), [("on", True), ("off", False), ("auto", False)])
def test_fa_takes_on_off_auto(mm: Mm, tiny_model: Path, value: str, flash: bool) -> None:
    result = mm("fit", str(tiny_model), "-H", "cpu-32g", "-fa", value, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["flash_attn"] is flash
    bad = mm("fit", str(tiny_model), "-H", "cpu-32g", "-fa", "maybe")
    assert bad.exit_code == 2 and "'maybe' is not one of on, off, auto" in bad.stderr


def test_ctk_and_ctv_must_agree(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "-H", "cpu-32g", "-ctk", "q8_0", "-ctv", "f16")
    assert result.exit_code == 2 and "one type for K and V" in result.stderr


@pytest.mark.parametrize(
    "shape",
    [
        ["org/tiny-GGUF", "tiny.Q8_0.gguf"],  # hf download REPO FILE
        ["https://huggingface.co/org/tiny-GGUF/blob/main/tiny.Q8_0.gguf"],
        ["https://huggingface.co/org/tiny-GGUF/resolve/main/tiny.Q8_0.gguf?download=true"],
    ],
)
def test_pull_takes_hf_download_shape_and_browser_urls(
    mm: Mm, local_hub: LocalHub, tiny_model: Path, shape: list[str]
) -> None:
    local_hub.add_repo("org/tiny-GGUF", {"tiny.Q8_0.gguf": tiny_model.read_bytes(), "other.gguf": b"x" * 64})
    result = mm("pull", *shape, "--json")
    assert result.exit_code == 0, result.output
    assert [f["filename"] for f in json.loads(result.stdout)] == ["tiny.Q8_0.gguf"]
    # inspect (any MODEL argument) takes the URL too, answered from the pulled file
    assert mm("inspect", shape[-1] if shape[-1].startswith("http") else ":".join(shape)).exit_code == 0


def test_hf_home_is_the_hub_cache_when_set(
    mm: Mm, local_hub: LocalHub, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    local_hub.add_repo("org/tiny-GGUF", {"tiny.gguf": tiny_model.read_bytes()})
    result = mm("pull", "org/tiny-GGUF:tiny.gguf", "--json")
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)[0]["path"]).is_relative_to(tmp_path / "hf" / "hub")


def test_verbose_after_the_command(mm: Mm) -> None:
    assert mm("ls", "-v").exit_code == 0
    assert mm("ls", "-vv", "--json").exit_code == 0


def test_f_means_file_only(mm: Mm) -> None:
    """`-f` is pull's --file (as elsewhere); export has --format without a conflicting -f."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert "-f" in next(p.opts for p in commands["pull"].params if p.name == "file")
    assert not [p for p in commands["export"].params if "-f" in getattr(p, "opts", [])]


# --- 11. help: an example everywhere, readable placeholders, uncut descriptions, --json where scripts want it


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_has_an_example_and_plain_placeholders(mm: Mm, path: list[str]) -> None:
    text = mm(*path, "--help").stdout
    assert "Example:" in text, f"mm {' '.join(path)} --help has no example"
    for placeholder in ("<str>", "<int", "<float", "<list", "<path>", "{"):
        assert placeholder not in text, f"mm {' '.join(path)} --help shows {placeholder}"


def test_root_help_does_not_cut_descriptions(mm: Mm) -> None:
    text = mm("--help").stdout
    assert "..." not in text.split("Commands:")[1]


@pytest.mark.parametrize("path", [["export"], ["rm"], ["run"], ["cache", "ls"], ["cache", "rm"], ["gc"]])
def test_commands_scripts_use_have_json(mm: Mm, path: list[str]) -> None:
    assert "--json" in mm(*path, "--help").stdout


def test_export_and_rm_json(mm: Mm, tiny_model: Path) -> None:
    assert mm("publish", str(tiny_model), "-H", "cpu-32g", "--name", "j").exit_code == 0
    exported = json.loads(mm("export", "j", "--format", "llama-server", "--json").stdout)
    assert exported["format"] == "llama-server" and exported["text"].startswith("llama-server -m ")
    assert json.loads(mm("rm", "j", "--json").stdout) == {"removed": "j"}


# --- 12. fit says what it assumed, and what does not fit is not a success -------------------------------


def test_fit_text_states_its_settings_and_no_gpu_means_no_vram_verdict(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "-H", "cpu-32g", "-c", "1024", "-ctk", "q8_0", "-fa", "on")
    assert result.exit_code == 0, result.output
    assert "assuming ctx 1024, batch 2048/512, kv q8_0, flash-attn on, parallel 1" in result.stdout
    assert "fits VRAM: n/a (no GPU)" in result.stdout


def test_does_not_fit_exits_8_without_a_speed(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "--vram", "0", "--ram", "1M")
    assert result.exit_code == 8, result.output
    assert result.stdout.startswith("does not fit") and "tokens/s" not in result.stdout.splitlines()[0]
    assert result.stderr.count("error:") == 1 and "does not fit" in result.stderr


def test_gpu_layers_on_a_cpu_class_is_an_error(mm: Mm, tiny_model: Path) -> None:
    result = mm("fit", str(tiny_model), "-H", "cpu-32g", "--n-gpu-layers", "5")
    assert result.exit_code == 2 and "cpu-32g has no GPU" in result.stderr


def test_a_context_beyond_training_is_warned(mm: Mm, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "short.gguf", TinySpec(context_length=2048))
    result = mm("fit", str(model), "-H", "cpu-64g", "--ctx", "8192")
    assert result.exit_code == 0, result.output
    assert "warning: a context of 8192 tokens is beyond the 2048 the model was trained for" in result.stderr
    assert "warning" not in mm("fit", str(model), "-H", "cpu-64g", "--ctx", "2048").stderr


def test_one_registration_style_and_one_json_name() -> None:
    """Every command comes through add_command (so -v after it and -fa work everywhere) and spells --json's
    parameter as_json (pipeline/commands/registration.py says how to add one)."""
    from pipeline.commands.registration import MMCommand

    root = typer.main.get_command(app)
    for path in _all_commands():
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        assert isinstance(command, MMCommand), f"mm {' '.join(path)} is not registered with add_command"
        json_params = [p.name for p in command.params if "--json" in getattr(p, "opts", [])]
        assert json_params in ([], ["as_json"]), f"mm {' '.join(path)}: --json is {json_params}"


def _short_flags(command: object) -> dict[str, str]:
    """A command's short flags, each with its long option."""
    out = {}
    for param in getattr(command, "params", []):
        opts = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
        long = next((o for o in opts if o.startswith("--")), "")
        out.update({o: long for o in opts if o.startswith("-") and not o.startswith("--")})
    return out


def test_the_planning_flags_mean_one_thing_on_every_command() -> None:
    """mm's own short flags for planning and running (-H for --hardware, and llama.cpp's -c, -t, -ngl ... as
    `mm fit` takes them) mean the same long option on every command that has them. Elsewhere a command
    keeps the short flags of the llama.cpp tool it stands for (`mm bench -p/-n/-r` as llama-bench,
    `mm rpc serve -p` as rpc-server)."""
    root = typer.main.get_command(app)
    planning = _short_flags(root.commands["fit"])  # type: ignore[attr-defined]
    assert planning["-H"] == "--hardware" and planning["-c"] == "--ctx"
    for path in _all_commands():
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        for short, long in _short_flags(command).items():
            if short in planning:
                assert long == planning[short], f"mm {' '.join(path)}: {short} is {long}, not {planning[short]}"
