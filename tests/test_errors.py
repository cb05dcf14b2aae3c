"""The error hierarchy: each class says what it means, and also is the built-in it matches, so callers can
catch either (`except FileNotFoundError` as well as `except ProfileNotFoundError`), with exit codes and
messages unchanged."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pipeline.base import errors
from pipeline.base.errors import (
    EntryNotFoundError,
    HubConnectionError,
    LockTimeoutError,
    MMError,
    ModelFormatError,
    ProfileNotFoundError,
    RecipeError,
    UsageError,
)
from pipeline.base.home import locked, mm_home
from pipeline.gguf.header import read_header
from pipeline.hub.api import resolve_commit
from pipeline.registry.store import get_profile

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, MMError)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_says_what_it_means(cls: type[MMError]) -> None:
    assert (cls.__dict__.get("__doc__") or "").strip(), f"{cls.__name__} has no docstring of its own"


@pytest.mark.parametrize(
    ("cls", "builtin", "exit_code"),
    [
        (HubConnectionError, ConnectionError, 3),
        (EntryNotFoundError, FileNotFoundError, 3),
        (ProfileNotFoundError, FileNotFoundError, 9),
        (UsageError, ValueError, 2),
        (RecipeError, ValueError, 2),
        (ModelFormatError, ValueError, 6),
        (LockTimeoutError, TimeoutError, 11),
    ],
)
def test_an_error_is_also_the_matching_builtin(cls: type[MMError], builtin: type[Exception], exit_code: int) -> None:
    assert issubclass(cls, builtin) and issubclass(cls, MMError)
    assert cls.exit_code == exit_code


def test_an_unreachable_hub_is_caught_as_a_connection_error() -> None:
    with pytest.raises(ConnectionError) as caught:
        resolve_commit("someone/repo", "main")  # HF_ENDPOINT points at a closed port (conftest)
    assert isinstance(caught.value, HubConnectionError) and caught.value.exit_code == 3
    assert str(caught.value).startswith("cannot reach ")


def test_a_missing_profile_is_caught_as_file_not_found() -> None:
    with pytest.raises(FileNotFoundError) as caught:
        get_profile("absent")
    assert isinstance(caught.value, ProfileNotFoundError) and caught.value.name == "absent"
    assert str(caught.value).startswith("no profile named 'absent'")


def test_a_file_that_is_not_gguf_is_caught_as_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError) as caught:
        read_header(bad)
    assert isinstance(caught.value, ModelFormatError) and "not a GGUF file" in str(caught.value)


def test_a_busy_lock_is_caught_as_a_timeout() -> None:
    home = mm_home()
    home.ensure(home.root)
    with locked(home, "held"), pytest.raises(TimeoutError) as caught, locked(home, "held", wait=False):
        pass
    assert isinstance(caught.value, LockTimeoutError) and "is busy" in str(caught.value)
