"""Shared fixtures: an isolated mm home per test, no route to the real Hub, tiny models, a CLI runner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from pipeline.convert.env import ConverterEnv
from pipeline.fitting.fit import fit_model
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.tools import BuiltTools
from pipeline.registry.profile import Profile
from pipeline.registry.store import publish
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.run_settings import RunSettings
from tests.hub import LocalHub

# A suite started in the background by a shell without job control (`cmd &` in a script, some CI runners) inherits
# SIGINT ignored, and every child would inherit that too: the Ctrl-C tests would test nothing but the shell. A
# handler here is reset to the default in each child at exec, so the children get SIGINT as a terminal sends it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Nothing in a test may reach the internet: an endpoint on a closed loopback port fails fast.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


def publish_fitted(
    model: Path, hardware: HardwareClass, *, settings: RunSettings | None = None, **kwargs: Any
) -> Profile:
    """Fit `model` to `hardware`, then publish it with that fit, as `mm publish` does."""
    return publish(model, hardware, fit_model(model.resolve(), hardware, settings), **kwargs)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own MM_HOME and no Hub credentials, cache or endpoint of the user's."""
    home = tmp_path / "mm-home"
    monkeypatch.setenv("MM_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
    # HF_HOME would move the Hub cache (mm honours it as huggingface_hub does): keep it unset, and point
    # the token files huggingface_hub reads at an empty place instead.
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setenv("HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # saved hardware classes: never the user's
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "MM_RECIPES",
        "MM_DEBUG",
        "MM_LLAMA_TOOLS",
        "MM_CONVERTER",
        "MM_CALIBRATION_TEXT",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@contextlib.contextmanager
def _shared_home(tmp_path_factory: pytest.TempPathFactory, name: str, variable: str) -> Iterator[None]:
    """MM_HOME for a session-wide build: `variable`, else MM_TEST_LLAMA_HOME (reused across runs), else a
    fresh folder."""
    home = os.environ.get(variable) or os.environ.get("MM_TEST_LLAMA_HOME") or str(tmp_path_factory.mktemp(name))
    saved = os.environ.get("MM_HOME")
    os.environ["MM_HOME"] = home
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MM_HOME", None)
        else:
            os.environ["MM_HOME"] = saved


def _test_source() -> Path | None:
    """MM_TEST_LLAMA_SOURCE: an unpacked llama-cpp-python sdist (else mm downloads the matching one)."""
    return Path(os.environ["MM_TEST_LLAMA_SOURCE"]) if os.environ.get("MM_TEST_LLAMA_SOURCE") else None


# Compiling llama.cpp's tools takes 6-10 minutes on 2 cores, more than the default per-test timeout; the
# build happens in whichever test first asks for the session fixture, so every such test gets this limit.
LLAMA_BUILD_TIMEOUT_SECONDS = 2400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "llama_tools" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LLAMA_BUILD_TIMEOUT_SECONDS))


@pytest.fixture(scope="session")
def llama_tools(tmp_path_factory: pytest.TempPathFactory) -> BuiltTools:
    """llama.cpp's tools, built once per session by `mm llama build`'s code (minutes on 2 cores).

    MM_TEST_LLAMA_HOME reuses an mm home that already holds a build; MM_TEST_LLAMA_SOURCE is an unpacked
    llama-cpp-python sdist (else mm downloads the matching one from the package index).
    """
    from pipeline.llama.tools import build_llama_tools

    with _shared_home(tmp_path_factory, "llama-build-home", "MM_TEST_LLAMA_HOME"):
        return build_llama_tools(source=_test_source(), jobs=os.cpu_count() or 2)


@pytest.fixture(scope="session")
def converter_env(tmp_path_factory: pytest.TempPathFactory) -> ConverterEnv:
    """llama.cpp's converter environment, set up once per session by `mm llama converter`'s code (~1 min,
    1.2 GB; torch's CPU wheel) in MM_TEST_CONVERTER_HOME, else the tools' shared home."""
    from pipeline.convert.env import ensure_converter

    with _shared_home(tmp_path_factory, "converter-home", "MM_TEST_CONVERTER_HOME"):
        return ensure_converter(_test_source())


@pytest.fixture
def converter(converter_env: ConverterEnv, monkeypatch: pytest.MonkeyPatch) -> ConverterEnv:
    """The shared converter environment, found by this test's mm through MM_CONVERTER."""
    monkeypatch.setenv("MM_CONVERTER", str(converter_env.root))
    return converter_env


@pytest.fixture(scope="session")
def hf_tiny_model(converter_env: ConverterEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face llama checkpoint (safetensors, bf16, a trained SentencePiece tokenizer), written by
    transformers' own save_pretrained in the converter's environment; read-only, shared by the session."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    script = Path(__file__).with_name("hf_tiny_model.py")
    subprocess.run([str(converter_env.python), str(script), str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama-style F32 model (GQA 4/2 heads); read-only, shared by the session."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-f32.gguf", TinySpec())


@pytest.fixture(scope="session")
def tiny_model_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-f16.gguf", TinySpec(dtype="f16"))


@pytest.fixture
def mm() -> Callable[..., Result]:
    """Run `mm ARGS…` in-process the way a user would; returns click's Result (stdout, stderr, exit_code).

    Exceptions are not caught: anything but an MMError escaping the CLI fails the test with its traceback,
    which is the real "no traceback" check (asserting "Traceback" is absent from the output cannot fail).
    """
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
