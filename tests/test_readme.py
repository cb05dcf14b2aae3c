"""The README's command lines stay true: every command and flag it shows exists in mm's --help."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

README = Path(__file__).resolve().parent.parent / "README.md"
GROUPS = {"recipe", "llama", "cache"}


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
