"""Issue 22 point 1: an export answers in the chat format `mm run` uses. The truth is llama.cpp's own
llama-server (its /apply-template renders the prompt it would decode) and llama-cpp-python's formatter,
which `mm run` loads."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from llama_cpp import llama_chat_format
from typer.testing import Result

from pipeline.base.child import stop
from pipeline.base.home import mm_home
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.tools import BuiltTools
from pipeline.registry.store import profile_path
from tests.rpc_workers import free_port

Mm = Callable[..., Result]
HI = [{"role": "user", "content": "hi"}]


def _server_prompt(tools: BuiltTools, line: str) -> str:
    """Start the exported llama-server line (its program and port swapped for the built one and a free port)
    and return the prompt llama-server renders for one user turn."""
    words = shlex.split(line)
    port = free_port()
    words[0], words[words.index("--port") + 1] = str(tools.path("llama-server")), str(port)
    proc = subprocess.Popen([*words, "--no-warmup"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, "llama-server exited"
                time.sleep(0.2)
        body = json.dumps({"messages": HI}).encode()
        request = urllib.request.Request(
            f"{url}/apply-template", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["prompt"])
    finally:
        stop(proc)


@pytest.fixture
def untemplated(mm: Mm, tmp_path: Path) -> str:
    """A Gemma-3 GGUF without tokenizer.chat_template (as Gemma-3-270M ships), published for the CPU."""
    model = write_tiny_model(tmp_path / "gemma.gguf", TinySpec(arch="gemma3", chat_template=None))
    result = mm("publish", str(model), "--hardware", "cpu-64g", "--name", "g3", "-c", "512")
    assert result.exit_code == 0, result.output
    return "g3"


def test_llama_server_export_renders_the_format_mm_run_uses(mm: Mm, untemplated: str, llama_tools: BuiltTools) -> None:
    line = mm("export", untemplated, "--format", "llama-server").stdout
    assert _server_prompt(llama_tools, line) == llama_chat_format.format_gemma(HI).prompt  # what `mm run` sends
    assert "using the gemma format for gemma3" in mm("run", untemplated, "hi", "-n", "1").stderr
    show = json.loads(mm("show", untemplated, "--json").stdout)
    assert show["run"]["chat_format"] == "gemma" and "--chat-template gemma" in show["llama_server"]
    # an override is one setting: the export and the run both take it
    line = mm("export", untemplated, "--format", "llama-server", "--chat-template", "llama-3").stdout
    assert _server_prompt(llama_tools, line) == llama_chat_format.format_llama3(HI).prompt


def test_the_modelfile_carries_a_template_only_where_the_gguf_has_none(
    mm: Mm, untemplated: str, tmp_path: Path
) -> None:
    modelfile = mm("export", untemplated).stdout
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for marker in ("<start_of_turn>", "model\n", "<end_of_turn>\n"):
        assert marker in template
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and 'PARAMETER stop "<start_of_turn>"' in modelfile
    templated = write_tiny_model(tmp_path / "own.gguf", TinySpec(arch="gemma3"))  # has tokenizer.chat_template
    assert mm("publish", str(templated), "--hardware", "cpu-64g", "--name", "own", "-c", "512").exit_code == 0
    own = mm("export", "own").stdout
    assert "TEMPLATE" not in own and "PARAMETER stop" not in own and "Ollama reads the GGUF's own" in own


def test_a_published_chat_format_is_what_run_and_export_use(mm: Mm, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "g.gguf", TinySpec(arch="gemma3", chat_template=None))
    assert mm("publish", str(model), "--hardware", "cpu-64g", "--name", "cm", "--chat-format", "chatml").exit_code == 0
    assert "--no-jinja --chat-template chatml" in mm("export", "cm", "--format", "llama-server").stdout
    assert "<|im_start|>" in mm("export", "cm").stdout
    assert "gemma format" not in mm("run", "cm", "hi", "-n", "1").stderr
    refused = mm("export", "cm", "--format", "llama-server", "--chat-format", "vicuna")
    assert refused.exit_code == 2 and "no llama-server equivalent" in refused.stderr
    unknown = mm("publish", str(model), "--hardware", "cpu-64g", "--name", "x", "--chat-format", "gemmma")
    assert unknown.exit_code == 2 and "unknown chat format 'gemmma'; did you mean gemma?" in unknown.stderr
    # llama.cpp's spelling of a format (as llama-server's --chat-template takes it) is the same format
    assert (
        mm("publish", str(model), "--hardware", "cpu-64g", "--name", "l3", "--chat-template", "llama3").exit_code == 0
    )
    assert json.loads(mm("show", "l3", "--json").stdout)["run"]["chat_format"] == "llama-3"


def test_a_profile_published_before_mm_stored_the_format_exports_the_architectures(mm: Mm, untemplated: str) -> None:
    path = profile_path(mm_home(), untemplated)
    document = json.loads(path.read_text())
    del document["run"]["chat_format"]  # as mm wrote profiles before issue 22
    path.chmod(0o644)
    path.write_text(json.dumps(document))
    assert "--no-jinja --chat-template gemma" in mm("export", untemplated, "--format", "llama-server").stdout
    assert "<start_of_turn>" in mm("export", untemplated).stdout
