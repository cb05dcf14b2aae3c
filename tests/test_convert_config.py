"""Converter hygiene: config.json's shape is checked before any converter is set up or run, and the converter
child gets a minimal environment (no tokens)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.errors import ConvertError
from pipeline.convert.converter import converter_env, local_snapshot

Mm = Callable[..., Result]


def _folder(tmp_path: Path, config: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (b"[1, 2, 3]", "not an object"),
        (b'{"architectures": "LlamaForCausalLM"}', "architectures"),
        (b'{"architectures": [1]}', "architectures"),
        (b'{"architectures": []}', "architectures"),
        (b'{"architectures": ["../../evil"]}', "architectures"),
        (b'{"text_config": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "text_config.a.a"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "cannot read"),
        (b'{"architectures": ["LlamaForCausalLM"], "text_config": 5}', "text_config"),
        (b"\xff\xfe{", "cannot read"),
        (b"{" + b" " * (5 << 20) + b"}", "at most"),
    ],
)
def test_a_malformed_config_is_one_error_naming_the_field_before_the_converter(
    mm: Mm, tmp_path: Path, config: bytes, field: str
) -> None:
    folder = _folder(tmp_path, config)
    result = mm("convert", str(folder))
    assert result.exit_code == ConvertError.exit_code, result.output
    assert result.stderr.startswith("error: ") and field in result.stderr and "config.json" in result.stderr
    assert "setting up llama.cpp's converter" not in result.stderr  # refused before any setup


def test_a_well_formed_config_passes(tmp_path: Path) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "text_config": {"rope_scaling": {"type": "linear"}}}
    assert local_snapshot(_folder(tmp_path, json.dumps(config).encode())).kind == "local"


def test_the_converter_child_environment_holds_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("NO_LOCAL_GGUF", "1")
    env = converter_env()
    assert "secret-value" not in env.values() and "NO_LOCAL_GGUF" not in env
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "HF_HUB_OFFLINE",
                        "TRANSFORMERS_OFFLINE", "PYTHONNOUSERSITE", "HF_HUB_DISABLE_TELEMETRY"}  # fmt: skip
