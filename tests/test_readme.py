"""The README's command lines stay true: every command and flag it shows exists in mm's --help."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

README = Path(__file__).resolve().parent.parent / "README.md"
GROUPS = {"recipe", "llama", "cache", "rpc"}


def _readme_command_lines() -> list[str]:
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        stripped = line.strip().removeprefix("$ ")
        if inside and stripped.startswith("mm "):
            lines.append(stripped)
    return lines


def _command_and_flags(line: str) -> tuple[list[str], set[str]]:
    words = line.split("#")[0].split()[1:]
    command = words[:2] if words and words[0] in GROUPS else words[:1]
    flags = {m.group(1) for m in re.finditer(r"(?<![\w-])(--[a-z][a-z-]*)", line.split("#")[0])}
    return command, flags


def test_readme_shows_commands() -> None:
    assert len(_readme_command_lines()) >= 20


@pytest.mark.parametrize("line", _readme_command_lines())
def test_readme_command_and_flags_exist(mm: Callable[..., Result], line: str) -> None:
    command, flags = _command_and_flags(line)
    result = mm(*command, "--help")
    assert result.exit_code == 0, f"{line!r}: `mm {' '.join(command)}` is not a command"
    help_text = result.stdout
    missing = [flag for flag in flags if flag not in help_text]
    assert not missing, f"{line!r}: flags not in `mm {' '.join(command)} --help`: {missing}"


def _development_tree() -> dict[str, set[str]]:
    """The Development section's tree: each folder (or cli.py) and the module files listed under it."""
    section = README.read_text().split("## Development", 1)[1]
    block = section.split("```\npipeline/", 1)[1].split("```", 1)[0]
    tree: dict[str, set[str]] = {}
    folder = ""
    for line in ("pipeline/" + block).splitlines():
        if line.startswith("pipeline/"):
            folder = line.split()[0]
            tree[folder] = {folder} if folder.endswith(".py") else set()
        elif line.startswith("    ") and line.strip().endswith(".py"):
            tree[folder] |= {folder + name for name in line.split()}
    return tree


def test_the_development_tree_shows_every_module_in_its_folder() -> None:
    """A module added, moved or removed without its line in the README fails here."""
    package = README.parent / "pipeline"
    modules = {
        p.relative_to(README.parent).as_posix()
        for p in package.rglob("*.py")
        if (p.name != "__init__.py" and p.parent != package) or p.name == "cli.py"
    }
    listed = set().union(*_development_tree().values())
    assert sorted(listed - modules) == [], "listed in the README but not in pipeline/"
    assert sorted(modules - listed) == [], "in pipeline/ but not in the README's Development tree"


def _quickstart_lines() -> list[str]:
    """The quickstart's mm commands, in order (the first code block after its heading), comments dropped."""
    text = README.read_text().split("## Quickstart", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("mm ")]


def test_the_quickstart_runs_offline_on_a_local_file(
    mm: Callable[..., Result], tiny_model_f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model-f16.gguf").write_bytes(tiny_model_f16.read_bytes())
    lines = [line for line in _quickstart_lines() if line != "mm demo"]  # the demo has its own test
    assert len(lines) >= 7 and len(README.read_text().split("## Quickstart", 1)[1].split("\n## ")[0].splitlines()) <= 25
    for line in lines:
        result = mm(*shlex.split(line)[1:], input="")
        assert result.exit_code == 0, f"{line}: {result.output}"
    assert "model-q4_k_m@local" in mm("ls").stdout
