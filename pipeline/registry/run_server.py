"""`mm run` of a profile spread over several devices: llama.cpp's own llama-server with the profile's flags.

Why not llama-cpp-python, which runs every other profile: its 0.3.36 wheel is built without the RPC
backend (`llama_cpp.llama_supports_rpc()` is False) and its `Llama(...)` has no way to name RPC servers,
so it cannot reach a worker. The llama-server that `mm llama build` compiles (-DGGML_RPC=ON) can, and takes
the profile's settings as the same flags `mm export --format llama-server` writes. Every worker is asked
first (pipeline/llama/rpc.py): one that is down is one clear error naming it, before anything loads.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.base.child import die_with_parent, run_foreground, stop
from pipeline.base.errors import LlamaError, UsageError
from pipeline.llama.rpc import query_workers
from pipeline.llama.tools import require_llama_tool
from pipeline.registry.blobs import check_blob
from pipeline.registry.profile import Profile, llama_server_args
from pipeline.registry.run import Generation
from pipeline.registry.server import LOOPBACK, bind_port

log = logging.getLogger(__name__)
READY_SECONDS = 600.0  # loading a large model over a network takes minutes


def needs_server(profile: Profile) -> bool:
    """A profile whose layout names RPC workers runs through llama-server (see the module docstring)."""
    return bool(profile.run.devices and profile.run.devices.rpc)


def server_argv(profile: Profile, port: int, *, verify: bool = False) -> list[str]:
    """llama-server's command line for this profile, after its blob and its workers were checked."""
    blob = check_blob(profile, full=verify)
    if profile.run.devices and profile.run.devices.rpc:
        query_workers(profile.run.devices.rpc)
    binary = require_llama_tool("llama-server")
    # --fit off: the profile's layout is the plan; llama.cpp must not re-fit it on this host
    return [str(binary), *llama_server_args(str(blob), profile.run, port), "--fit", "off"]


@contextmanager
def running_server(profile: Profile, port: int, *, verify: bool = False) -> Iterator[str]:
    """llama-server with the profile loaded on 127.0.0.1:`port`; yields its URL, stops it afterwards."""
    bind_port(port).close()  # a taken port is an error before the model loads
    argv = server_argv(profile, port, verify=verify)
    log.info("starting %s", " ".join(argv))
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        _wait_ready(proc, url)
        yield url
    finally:
        stop(proc, grace_seconds=30)


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise LlamaError(f"llama-server exited with status {proc.returncode} while loading: {out[-600:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise LlamaError(f"llama-server did not answer on {url} within {READY_SECONDS:.0f}s")


def generate_on_server(
    profile: Profile, prompt: str, *, max_tokens: int = 128, temperature: float = 0.8, seed: int | None = None,
    port: int | None = None, verify: bool = False, raw: bool = True,
) -> Generation:  # fmt: skip
    """Complete `prompt` as plain text (raw, llama-server's /completion) or answer it as one chat turn in the
    GGUF's chat template (/v1/chat/completions)."""
    if max_tokens < 1:
        raise UsageError("max_tokens must be at least 1", param="max_tokens")
    body: dict[str, object] = {"temperature": temperature, "cache_prompt": False}
    body.update({"seed": seed} if seed is not None else {})
    if raw:
        path, body = "/completion", {**body, "prompt": prompt, "n_predict": max_tokens}
    else:
        path, body = "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
        body["max_tokens"] = max_tokens
    with running_server(profile, port or _free_port(), verify=verify) as url:
        request = urllib.request.Request(
            url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=READY_SECONDS) as response:
            answer = json.loads(response.read())
        seconds = time.perf_counter() - started
    if raw:
        return Generation(str(answer.get("content", "")), int(answer.get("tokens_predicted", 0)), seconds)
    text = answer["choices"][0]["message"].get("content") or ""
    return Generation(str(text), int(answer.get("usage", {}).get("completion_tokens", 0)), seconds)


def _free_port() -> int:
    """A port nothing listens on (a one-shot run's server is private to it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def serve_with_server(profile: Profile, port: int, *, verify: bool = False) -> int:
    """llama-server in the foreground on 127.0.0.1:`port` (its own OpenAI-compatible API) until interrupted."""
    bind_port(port).close()  # a taken port is an error before the model loads
    return run_foreground(server_argv(profile, port, verify=verify))
