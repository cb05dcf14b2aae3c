"""mm's constants: one truthiness rule for flag variables, and environment variables read in one module only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.base.constants import DEBUG_ENV, HF_OFFLINE_ENV, env_flag, env_value
from pipeline.base.errors import MMError
from pipeline.cli import app
from pipeline.hub.api import offline_mode

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "On", " on "])
def test_a_flag_is_set_by_any_true_spelling(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(HF_OFFLINE_ENV, value)
    assert env_flag(HF_OFFLINE_ENV) and offline_mode()


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2", "y"])
def test_a_flag_is_unset_by_anything_else(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(HF_OFFLINE_ENV, value)
    assert not env_flag(HF_OFFLINE_ENV) and not offline_mode()


def test_an_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_RECIPES", "")
    assert env_value("MM_RECIPES") is None
    monkeypatch.setenv("MM_RECIPES", "elsewhere")
    assert env_value("MM_RECIPES") == "elsewhere"


def test_mm_debug_follows_the_same_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MM_DEBUG=yes shows the error itself (its traceback), as MM_DEBUG=1 always did."""
    from typer.testing import CliRunner

    missing = str(tmp_path / "absent.gguf")
    monkeypatch.setenv(DEBUG_ENV, "yes")
    result = CliRunner().invoke(app, ["inspect", missing])
    assert isinstance(result.exception, MMError)
    monkeypatch.setenv(DEBUG_ENV, "0")
    result = CliRunner().invoke(app, ["inspect", missing])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)


def _reads_environment(node: ast.AST) -> bool:
    """`os.environ.get(...)`, `os.environ[...]` (read) or `os.getenv(...)`; copying it for a child is no read."""
    text = ast.unparse(node)
    if isinstance(node, ast.Call):
        return text.startswith(("os.environ.get(", "os.getenv("))
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        return ast.unparse(node.value) == "os.environ"
    return False


def test_environment_variables_are_read_only_through_constants() -> None:
    readers = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "constants.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if _reads_environment(node)
    ]
    assert readers == []


def test_the_check_finds_a_direct_read() -> None:
    assert _reads_environment(ast.parse('os.environ.get("MM_HOME")').body[0].value)  # type: ignore[attr-defined]
    assert _reads_environment(ast.parse('os.environ["MM_HOME"]').body[0].value)  # type: ignore[attr-defined]
    assert not _reads_environment(ast.parse("dict(os.environ, LC_ALL='C')").body[0].value)  # type: ignore[attr-defined]
