"""llama.cpp's binaries: where a tool is found (and in which order), the one version string, build keys."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from pipeline.base.constants import TOOLS_DIR_ENV, tool_env_var
from pipeline.base.errors import LlamaError
from pipeline.llama.tools import build_key, find_llama_tool, llama_cpp_version


def _tool(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_version_names_the_llama_cpp_python_that_pins_llama_cpp() -> None:
    assert llama_cpp_version() == f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"


def test_an_explicit_path_wins_then_the_variable_then_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    folder_tool = _tool(tmp_path / "tools", "llama-bench")
    monkeypatch.setenv(TOOLS_DIR_ENV, str(tmp_path / "tools"))
    assert find_llama_tool("llama-bench") == folder_tool
    env_tool = _tool(tmp_path / "env", "my-bench")
    monkeypatch.setenv(tool_env_var("llama-bench"), str(env_tool))
    assert tool_env_var("llama-bench") == "LLAMA_BENCH" and find_llama_tool("llama-bench") == env_tool
    explicit = _tool(tmp_path / "explicit", "bench")
    assert find_llama_tool("llama-bench", explicit) == explicit


def test_a_named_tool_that_cannot_run_is_an_error_not_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_QUANTIZE", str(tmp_path / "missing"))
    with pytest.raises(LlamaError, match=r"LLAMA_QUANTIZE=.*not an executable llama-quantize"):
        find_llama_tool("llama-quantize")
    with pytest.raises(ValueError, match=r"unknown llama\.cpp tool"):
        find_llama_tool("llama-nonsense")


def test_a_build_is_keyed_by_version_and_options_in_any_order() -> None:
    key = build_key("0.3.36", ["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF"])
    assert key == build_key("0.3.36", ["-DGGML_NATIVE=OFF", "-DGGML_CUDA=ON"])
    assert key != build_key("0.3.37", ["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF"])
    assert key != build_key("0.3.36", ["-DGGML_CUDA=ON"])
    assert os.sep not in key
