"""Exporting a profile: a llama-server command line, an Ollama Modelfile whose FROM is the blob, or its JSON."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from pipeline.base.errors import UsageError
from pipeline.registry.export import export
from pipeline.registry.profile import Profile
from pipeline.spec.hardware import get_hardware
from tests.conftest import publish_fitted


@pytest.fixture
def profile(tiny_model: Path) -> Profile:
    return publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny")


def test_llama_server_runs_the_blob_with_the_profiles_settings(profile: Profile) -> None:
    words = shlex.split(export(profile, "llama-server"))
    assert words[:3] == ["llama-server", "-m", profile.blob.path]
    assert words[words.index("--ctx-size") + 1] == str(profile.run.n_ctx)


def test_the_modelfile_names_a_gguf_link_to_the_blob(profile: Profile) -> None:
    text = export(profile, "ollama")
    source = Path(next(line for line in text.splitlines() if line.startswith("FROM ")).removeprefix("FROM "))
    assert source.suffix == ".gguf" and source.is_symlink()
    assert os.path.samefile(source, profile.blob.path)
    assert f"PARAMETER num_ctx {profile.run.n_ctx}" in text and f"PARAMETER num_gpu {profile.run.n_gpu_layers}" in text
    assert export(profile, "ollama") == text  # the link is reused


def test_json_round_trips_and_an_unknown_format_is_refused(profile: Profile) -> None:
    assert Profile.model_validate_json(export(profile, "json")) == profile
    with pytest.raises(UsageError, match="llama-server"):
        export(profile, "docker")
