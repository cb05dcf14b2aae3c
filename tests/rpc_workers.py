"""Test helpers: llama.cpp RPC workers on 127.0.0.1 and the buffer sizes llama.cpp reports for each device.

The truth is llama.cpp's own log: llama-server, loading a model across `--rpc` workers, prints one
`<buffer type> model|KV|compute buffer size = X MiB` line per device (RPC<i>[HOST:PORT] for a worker).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline.base.child import stop
from pipeline.llama.rpc import start_worker
from pipeline.llama.tools import BuiltTools

BUFFER_RE = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def workers(tools: BuiltTools, count: int, log_dir: Path, threads: int = 1) -> Iterator[list[str]]:
    """`count` ggml-rpc-server workers on 127.0.0.1 (each lends its CPU), stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    endpoints = []
    try:
        for i in range(count):
            port = free_port()
            log_path = log_dir / f"rpc-{i}.log"
            binary = tools.path("ggml-rpc-server")
            procs.append(start_worker(port=port, threads=threads, log_path=log_path, binary=binary))
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for proc in procs:
            stop(proc)


def reported_buffers(
    tools: BuiltTools, model: Path, args: list[str], timeout: float = 120
) -> dict[str, dict[str, float]]:
    """Load `model` in llama-server with `args` (--rpc, -ts, -c ...) and return {buffer name: {kind: MiB}}."""
    port = free_port()
    argv = [str(tools.path("llama-server")), "-m", str(model), "--port", str(port), "--host", "127.0.0.1"]
    argv += ["--fit", "off", "-np", "1", "--no-warmup", "-t", "1", "--log-verbosity", "4", *args]  # 4: buffer sizes
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # a server that never gets there is killed, not awaited
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # tools/server/server.cpp: "model loaded" after the context (and its buffers) exists
            if "model loaded" in line or "exiting due to" in line:
                break
    finally:
        watchdog.cancel()
        stop(proc)
    text = "".join(lines)
    found: dict[str, dict[str, float]] = {}
    for match in BUFFER_RE.finditer(text):
        kinds = found.setdefault(match.group(1), {})
        kinds[match.group(2)] = kinds.get(match.group(2), 0.0) + float(match.group(3))
    assert found, text[-3000:]
    return found
