"""The profile document: safe names, short model names, and command lines llama.cpp's own parser knows."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pipeline.llama.tools import BuiltTools
from pipeline.registry.profile import (
    check_name,
    llama_cli_command,
    llama_kwargs,
    llama_server_command,
    model_name,
)
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.conftest import publish_fitted

# An unpacked llama-cpp-python sdist (conftest's llama_tools reads the same variable).
SOURCE = os.environ.get("MM_TEST_LLAMA_SOURCE")
ARG_CPP = Path(SOURCE or "/nonexistent") / "vendor" / "llama.cpp" / "common" / "arg.cpp"
RUN = RunSettings(n_gpu_layers=10, n_ctx=4096, n_batch=512, n_ubatch=256, kv_type="q8_0", flash_attn=True,
                  n_threads=4, parallel=2, use_mmap=False)  # fmt: skip


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 201, "sp ace"])
def test_names_that_could_leave_the_profiles_folder_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid profile name"):
        check_name(name)


def test_the_short_model_name_drops_the_quant_suffix() -> None:
    assert model_name(Path("/m/Llama-3-8B-Instruct.Q4_K_M.gguf"), None, None) == "Llama-3-8B-Instruct"
    assert model_name(Path("/m/tiny-llama-f16.gguf"), None, None) == "tiny-llama"


def test_command_lines_carry_every_setting() -> None:
    server = shlex.split(llama_server_command("/b/m.gguf", RUN, port=9000))
    assert server[:3] == ["llama-server", "-m", "/b/m.gguf"]
    pairs = {flag: value for flag, value in itertools.pairwise(server) if flag.startswith("--")}
    assert pairs["--n-gpu-layers"] == "10" and pairs["--ctx-size"] == "4096" and pairs["--port"] == "9000"
    assert pairs["--cache-type-k"] == pairs["--cache-type-v"] == "q8_0" and pairs["--parallel"] == "2"
    assert "--load-mode none" in llama_cli_command("/b/m.gguf", RUN)
    assert llama_kwargs("/b/m.gguf", RUN)["type_k"] == 8 and llama_kwargs("/b/m.gguf", RUN)["use_mmap"] is False


def _flags(run: RunSettings) -> set[str]:
    words = shlex.split(llama_server_command("m", run) + " " + llama_cli_command("m", run))
    return {w for w in words if w.startswith("--")}


def _declared() -> set[str]:
    if not ARG_CPP.is_file():
        pytest.skip("set MM_TEST_LLAMA_SOURCE to an unpacked llama-cpp-python sdist to check flags against it")
    return set(re.findall(r'"(--[a-z][a-z0-9-]*)"', ARG_CPP.read_text()))


def test_every_flag_is_one_llama_cpps_argument_parser_declares() -> None:
    flags = _flags(RUN.model_copy(update={"use_mmap": True}))
    assert flags and flags <= _declared(), flags - _declared()


def test_a_profile_without_mmap_writes_a_flag_llama_cpp_knows() -> None:
    assert "--load-mode none" in llama_cli_command("m", RUN)
    assert _flags(RUN) <= _declared(), _flags(RUN) - _declared()


@pytest.mark.parametrize(
    "run",
    [RUN, RUN.model_copy(update={"use_mmap": True, "threads": None, "n_cpu_moe": 3}),
     RUN.model_copy(update={"tensor_overrides": ["blk\\.0\\.ffn_.*_exps=CPU"]})],
    ids=["no-mmap", "n-cpu-moe", "override-tensor"],
)  # fmt: skip
def test_the_built_llama_server_and_llama_cli_accept_their_command_lines(
    run: RunSettings, llama_tools: BuiltTools, tmp_path: Path
) -> None:
    """Each binary parses its line (common/arg.cpp keeps per-tool flag sets: llama-cli refuses --conversation,
    which only llama-completion takes) and gets as far as opening the model, which is absent here."""
    missing = str(tmp_path / "absent.gguf")
    for line in (llama_server_command(missing, run, port=0), llama_cli_command(missing, run)):
        argv = shlex.split(line)
        done = subprocess.run(
            [str(llama_tools.path(argv[0])), *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60, cwd=tmp_path,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert "invalid argument" not in output, (argv[0], output[-2000:])
        assert f"failed to load model '{missing}'" in output, (argv[0], output[-2000:])


def test_a_published_profile_records_where_the_model_came_from(tiny_model: Path) -> None:
    profile = publish_fitted(tiny_model, get_hardware("cpu-64g"), name="tiny")
    source = profile.provenance.source
    assert (source.kind, source.path, source.sha256) == ("local", str(tiny_model), profile.blob.sha256)
    assert profile.provenance.llama_cpp_version is not None
    assert profile.provenance.llama_cpp_version.startswith("llama-cpp-python ")
