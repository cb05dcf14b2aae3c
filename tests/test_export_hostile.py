"""Profiles carrying control characters in any string field: refused before a Modelfile, shell line or terminal
line is made of them (a newline in `model` must never become a `FROM /etc/passwd` directive)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from pipeline.base.errors import RegistryError
from pipeline.base.home import mm_home
from pipeline.base.plain_text import CONTROL
from pipeline.registry.store import get_profile, profile_path
from pipeline.spec.hardware import get_hardware
from tests.conftest import publish_fitted

Mm = Callable[..., Result]
CONTROLS = [chr(c) for c in [*range(0x20), 0x7F]] + ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\u2028", "\x9b31m"]
INJECTED = "\nFROM /etc/passwd\nSYSTEM evil\nADAPTER /tmp/x"


def _string_fields(value: Any, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, str):
        return [at]
    if isinstance(value, dict):
        return [path for key, item in value.items() for path in _string_fields(item, (*at, key))]
    if isinstance(value, list):
        return [path for index, item in enumerate(value) for path in _string_fields(item, (*at, index))]
    return []


def _set(document: Any, path: tuple[str | int, ...], text: str) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = document[path[-1]] + text


@pytest.fixture
def document(tiny_model: Path) -> dict[str, Any]:
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name="victim")
    return dict(json.loads(profile_path(mm_home(), "victim").read_text()))


def _write(document: dict[str, Any]) -> None:
    profile_path(mm_home(), "victim").write_text(json.dumps(document))


def test_every_control_character_in_every_string_field_is_refused_on_load(document: dict[str, Any]) -> None:
    fields = [path for path in _string_fields(document) if path != ("name",)]  # the name is a file name: own rule
    assert len(fields) >= 15
    cases = 0
    for path in fields:
        for control in CONTROLS:
            mutant = json.loads(json.dumps(document))
            _set(mutant, path, control + "x")
            _write(mutant)
            with pytest.raises(RegistryError) as refused:
                get_profile("victim")
            assert not CONTROL.search(str(refused.value).replace("\n  hint:", " hint:")), (path, control)
            cases += 1
    assert cases == len(fields) * len(CONTROLS)


@pytest.mark.parametrize("field", ["model", "quant", "hardware", "architecture"])
@pytest.mark.parametrize("form", ["ollama", "llama-server", "json"])
def test_an_injected_directive_never_reaches_an_export(mm: Mm, document: dict[str, Any], field: str, form: str) -> None:
    document[field] += INJECTED
    _write(document)
    result = mm("export", "victim", "--format", form)
    assert result.exit_code == RegistryError.exit_code, result.output
    assert "FROM /etc/passwd" not in result.stdout and "\x1b" not in result.stdout + result.stderr
    assert "victim" in result.stderr and field in result.stderr


def test_terminal_lines_show_escape_sequences_instead_of_running_them(mm: Mm, document: dict[str, Any]) -> None:
    document["model"] += "\x1b]0;owned\x07\x1b[2J"
    _write(document)
    (mm_home().root / "profiles" / "ev\x1b[2Jil.json").write_text("{}")  # a file name is shown, escaped
    for args in (["ls"], ["show", "victim"], ["verify"], ["run", "victim", "hi"]):
        result = mm(*args)
        assert result.exit_code != 0 or args == ["ls"], args
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stderr, args
    assert "ev\\x1b[2Jil" in mm("ls").stderr
