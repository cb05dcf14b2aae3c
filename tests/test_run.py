"""`mm run`: real llama.cpp generation with exactly a profile's settings, chat, and the loopback server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.errors import IntegrityError
from pipeline.registry.run import generate, load
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.conftest import publish_fitted

CPU = get_hardware("cpu-64g")


def test_generate_streams_tokens_to_the_callback(tiny_model: Path) -> None:
    profile = publish_fitted(tiny_model, CPU, name="gen")
    pieces: list[str] = []
    result = generate(profile, "the model runs", max_tokens=6, on_token=pieces.append, seed=3)
    assert pieces and "".join(pieces) == result.text
    assert 1 <= result.n_tokens <= 6


def test_the_model_is_loaded_with_exactly_the_profile_settings(tiny_model: Path) -> None:
    settings = RunSettings(n_ctx=256, n_batch=64, n_ubatch=32, kv_type="q8_0", flash_attn=True)
    profile = publish_fitted(tiny_model, CPU, name="exact", settings=settings, threads=1)
    llm = load(profile)
    assert (llm.n_ctx(), llm.n_batch, llm.context_params.n_ubatch) == (256, 64, 32)
    assert llm.context_params.type_k == llm.context_params.type_v == 8  # GGML_TYPE_Q8_0
    assert llm.context_params.n_threads == 1
    assert llm.model_params.n_gpu_layers == profile.run.n_gpu_layers


def test_a_missing_blob_refuses_to_load(tiny_model: Path, tmp_path: Path) -> None:
    model = Path(tmp_path / "copy.gguf")
    model.write_bytes(tiny_model.read_bytes())
    profile = publish_fitted(model, CPU, name="gone")
    Path(profile.blob.path).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load(profile)


def test_chat_without_prompt_uses_stdin_turns(mm: Callable[..., Result], tiny_model: Path) -> None:
    publish_fitted(tiny_model, CPU, name="chatty")
    chatted = mm("run", "chatty", "--max-tokens", "4", input="hello\nhow are you\n")
    assert chatted.exit_code == 0, chatted.stderr
    assert chatted.stdout.count("> ") == 3  # two turns answered, then end of input


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


@pytest.mark.slow
def test_server_answers_openai_completions_on_loopback(tiny_model: Path) -> None:
    publish_fitted(tiny_model, CPU, name="served", settings=RunSettings(n_ctx=512))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "served", "--server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                    models = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not come up in 60 s"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["served"]
        answer = _post(f"http://127.0.0.1:{port}/v1/completions", {"prompt": "hello", "max_tokens": 4})
        choices = answer["choices"]
        assert isinstance(choices, list) and isinstance(choices[0]["text"], str)
        usage = answer["usage"]
        assert isinstance(usage, dict) and usage["completion_tokens"] >= 1 and usage["prompt_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
