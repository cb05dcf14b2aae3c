"""A real `mm run --server` in a subprocess, and a client that sends it raw bytes (tests and bench/server_load.py)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer at all (connection refused or reset, timeout)
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


def request(port: int, path: str, body: bytes | None = None, *, headers: dict[str, str] | None = None,
            timeout: float = 60) -> Answer:  # fmt: skip
    """One HTTP request to the server on loopback; any transport failure is status 0, never an exception."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})}
        connection.request("GET" if body is None else "POST", path, body=body, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
    except (OSError, http.client.HTTPException):
        return Answer(0, b"", {})
    finally:
        connection.close()


class Server:
    """The `mm run NAME --server` process; `wait_ready` polls /health."""

    def __init__(self, name: str, port: int, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop()); not a pipe: a server logging more than a pipe holds would block
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", name, "--server", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env,
        )  # fmt: skip

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while request(self.port, "/health", timeout=2).status != 200:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError("server did not answer /health in time")
            time.sleep(0.2)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def peak_rss_bytes(self) -> int:
        """VmHWM of the server process (Linux): the most memory it has held at once."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()


@contextmanager
def running(name: str, env: dict[str, str] | None = None, args: Sequence[str] = ()) -> Iterator[Server]:
    server = Server(name, free_port(), dict(env if env is not None else os.environ), args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def hammer(port: int, bodies: Sequence[tuple[str, bytes]], concurrency: int) -> list[Answer]:
    """Send every (path, body) with `concurrency` clients at once; the answers in the same order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda item: request(port, item[0], item[1]), bodies))


def mixed_bodies(count: int) -> list[tuple[str, bytes]]:
    """Valid completions and chats between hostile bodies: bad grammar, huge, deep, NaN, out-of-range fields."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    kinds: list[tuple[str, bytes]] = [
        ("/v1/completions", json.dumps({"prompt": "hello", "max_tokens": 4}).encode()),
        ("/v1/chat/completions", json.dumps(chat).encode()),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 2, "grammar": "root ::= [a-"}).encode()),
        ("/v1/completions", b"a" * (2 << 20)),
        ("/v1/completions", b"[" * 100_000),
        ("/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 10**9}).encode()),
        ("/v1/completions", json.dumps({"prompt": "x", "logit_bias": {"9999999": 5}}).encode()),
        ("/v1/chat/completions", json.dumps({"messages": "not a list"}).encode()),
        ("/v1/completions", b"\xff\xfe not utf-8"),
    ]  # fmt: skip
    return [kinds[i % len(kinds)] for i in range(count)]
