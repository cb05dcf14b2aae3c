"""Local commands import only what they use: the top-level packages `mm --version`, `mm inspect LOCAL` and
`mm fit LOCAL` may load, read from a fresh interpreter's sys.modules (bench/startup.py times them)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import Result

from pipeline.cli import COMMAND_MODULES

ROOT = Path(__file__).resolve().parent.parent
# Runs one command line as `mm` does, then writes the top-level packages it loaded (outside the standard
# library) to the file named by argv[1].
PROBE = """
import json, sys
out, sys.argv = sys.argv[1], ["mm", *sys.argv[2:]]
from pipeline.cli import app
try:
    app()
except SystemExit:
    pass
top = {name.split(".")[0] for name in sys.modules}
json.dump(sorted(t for t in top - set(sys.stdlib_module_names) if not t.startswith("_")), open(out, "w"))
"""
CLI = {"pipeline", "typer", "shellingham", "annotated_doc"}  # typer and what it always loads
# a local model's path resolves under the mm home (filelock)
HOME = {"filelock"}
# typer checks a value that is not plain with pydantic (commands/plain_values.py); fit's run settings are models
PARAMS = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"}
ALLOWED = {
    "--version": CLI,
    "inspect": CLI | HOME,
    "fit": CLI | HOME | PARAMS | {"pynvml"},  # nvidia-ml-py, where installed, to find this machine's GPUs
}
NEVER = {"huggingface_hub", "httpx", "httpx2", "requests", "urllib3", "numpy", "gguf", "llama_cpp", "tqdm"}


def loaded_packages(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


@pytest.mark.parametrize("command", ["--version", "inspect", "fit"])
def test_a_local_command_loads_only_its_floors(command: str, tiny_model: Path, tmp_path: Path) -> None:
    args = [command] if command.startswith("-") else [command, str(tiny_model)]
    loaded = loaded_packages(tmp_path, *args)
    assert "pipeline" in loaded and "typer" in loaded  # the probe saw mm run
    assert not loaded & NEVER, f"mm {command} loaded {sorted(loaded & NEVER)}"
    assert loaded <= ALLOWED[command], f"mm {command} loaded more than before: {sorted(loaded - ALLOWED[command])}"


def test_the_probe_sees_what_a_hub_command_loads(tmp_path: Path) -> None:
    """The check above can fail: `mm pull` of a Hub file loads the Hub client (offline: nothing is fetched)."""
    loaded = loaded_packages(tmp_path, "pull", "org/name:m.gguf", "--offline")
    assert "huggingface_hub" in loaded


@pytest.mark.parametrize("module", sorted(set(COMMAND_MODULES.values())))
def test_each_command_is_listed_with_the_module_that_registers_it(module: str) -> None:
    """cli.COMMAND_MODULES lets `mm X` load X's module alone; it must name every command of every module."""
    group = typer.Typer()
    importlib.import_module(f"pipeline.commands.{module}").register(group)
    registered = set(typer.main.get_group(group).commands)
    assert registered == {name for name, owner in COMMAND_MODULES.items() if owner == module}


def test_every_group_module_is_in_the_table() -> None:
    """A module of pipeline/commands/ with a `register(app)` is a group; helpers (options, render) are not."""
    package = ROOT / "pipeline" / "commands"
    groups = {p.stem for p in package.glob("*.py") if re.search(r"^def register\(", p.read_text(), re.MULTILINE)}
    assert groups == set(COMMAND_MODULES.values())


@pytest.mark.parametrize("command", [["cache"], ["recipe", "ls"], ["inspect"]])
def test_a_command_loaded_late_helps_in_plain_text_as_before(mm: Callable[..., Result], command: list[str]) -> None:
    result = mm(*command, "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ")  # no rich panels


def _every_parameter() -> list[tuple[str, object]]:
    """Every typer parameter of every mm command (and the root's), each with its command's name."""
    from pipeline.cli import app

    root = typer.main.get_group(app)
    params: list[tuple[str, object]] = [("mm", p) for p in root.params]
    for name in COMMAND_MODULES:
        command = root.commands[name]
        subcommands = getattr(command, "commands", {name: command})
        params += [(f"{name} {sub}", p) for sub, c in subcommands.items() for p in c.params]
    return params


@pytest.mark.parametrize(("where", "param"), _every_parameter(), ids=lambda x: x if isinstance(x, str) else "")
def test_plain_values_coerce_as_typer_does(where: str, param: typer.core.TyperOption) -> None:
    """The plain-value path (commands/plain_values.py) returns what typer's own coercion returns, for every
    parameter mm has: None, a str, an int; typer's answer, or its refusal, is the truth."""
    from typer._coercion import build_runtime_param

    from pipeline.cli import app

    ctx = typer.Context(typer.main.get_group(app))
    typers = build_runtime_param(param.type_descriptor)
    for value in (None, "7", 7, "text"):
        try:
            expected: object = typers.coerce(value, param=param, ctx=ctx)
        except Exception as refusal:
            with pytest.raises(type(refusal)):
                param.get_runtime_param().coerce(value, param=param, ctx=ctx)
            continue
        got = param.get_runtime_param().coerce(value, param=param, ctx=ctx)
        assert (got, type(got)) == (expected, type(expected)), f"{where} {param.name} {value!r}"
