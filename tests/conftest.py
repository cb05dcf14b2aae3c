"""Shared fixtures: an isolated mm home per test, no route to the real Hub, tiny models, a CLI runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pipeline.tiny_model import TinySpec, write_tiny_model
from tests.hub import LocalHub

# Nothing in a test may reach the internet: an endpoint on a closed loopback port fails fast.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own MM_HOME and no Hub credentials, cache or endpoint of the user's."""
    home = tmp_path / "mm-home"
    monkeypatch.setenv("MM_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "MM_RECIPES",
        "MM_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama-style F32 model (GQA 4/2 heads); read-only, shared by the session."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-f32.gguf", TinySpec())


@pytest.fixture(scope="session")
def tiny_model_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-f16.gguf", TinySpec(dtype="f16"))


@pytest.fixture
def mm() -> Callable[..., Result]:
    """Run `mm ARGS…` in-process the way a user would; returns click's Result (stdout, stderr, exit_code)."""
    from pipeline.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def recipes_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "recipes"
    folder.mkdir()
    yield folder


def write_recipe(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A local Hub-compatible server on 127.0.0.1 (random port); HF_ENDPOINT points at it for this test."""
    hub = LocalHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.stop()
