"""llama.cpp RPC workers: start one (`ggml-rpc-server`) and ask running ones for their devices and free memory.

A worker lends its devices to a llama.cpp process on another host (`--rpc HOST:PORT,...`). mm asks each
worker the way llama.cpp's RPC client does (ggml/src/ggml-rpc/ggml-rpc.cpp, protocol 7): a HELLO handshake,
RPC_CMD_DEVICE_COUNT, then RPC_CMD_GET_DEVICE_MEMORY per device. Every request is `| cmd (1 byte) | size
(u64) | data |` and every answer `| size (u64) | data |`, little-endian. The protocol has no authentication:
a worker must never face an untrusted network, so `serve` binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.child import die_with_parent, run_foreground, stop
from pipeline.base.errors import LlamaError, UsageError
from pipeline.llama.tools import require_llama_tool
from pipeline.spec.devices import device_name_problem, endpoint_problem

log = logging.getLogger(__name__)

RPC_SERVER = "ggml-rpc-server"
DEFAULT_PORT = 50052  # tools/rpc/rpc-server.cpp rpc_server_params.port
LOOPBACK = "127.0.0.1"
# ggml-rpc.h RPC_PROTO_MAJOR_VERSION; a worker of another major version speaks another protocol.
PROTO_MAJOR = 7
_CMD_GET_DEVICE_MEMORY = 11
_CMD_HELLO = 14
_CMD_DEVICE_COUNT = 15
_CONN_CAPS_SIZE = 24  # ggml-rpc/transport.h RPC_CONN_CAPS_SIZE: all zero = plain TCP, no RDMA upgrade
# tools/rpc/rpc-server.cpp's words when the worker binds anything but 127.0.0.1
UNAUTHENTICATED_WARNING = (
    "WARNING: Host ('{host}') is != '127.0.0.1'\n"
    "         Never expose the RPC server to an open network!\n"
    "         This is an experimental feature and is not secure!"
)
QUERY_TIMEOUT_SECONDS = 5.0


class RpcDevice(BaseModel):
    """One device a worker offers, named as llama.cpp names its buffers: RPC<index>[HOST:PORT]."""

    name: str
    endpoint: str
    index: int  # the device's index on its worker
    free_bytes: int
    total_bytes: int


class Worker(BaseModel):
    endpoint: str
    version: str  # the worker's protocol version, major.minor.patch
    devices: list[RpcDevice]


def parse_endpoints(text: str) -> list[str]:
    """`--rpc HOST:PORT[,HOST:PORT...]` as llama.cpp splits it (common/arg.cpp add_rpc_devices), checked."""
    endpoints = [part.strip() for part in text.split(",") if part.strip()]
    if not endpoints:
        raise UsageError("no RPC worker given: expected HOST:PORT[,HOST:PORT...]", param="rpc")
    for endpoint in endpoints:
        problem = endpoint_problem(endpoint)
        if problem:
            raise UsageError(f"RPC worker {problem}", hint="e.g. 192.168.1.10:50052", param="rpc")
    if len(set(endpoints)) != len(endpoints):
        raise UsageError(f"RPC workers {text!r}: one is named twice", param="rpc")
    return endpoints


def query_worker(endpoint: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> Worker:
    """Ask a running worker for its protocol version, devices and their free/total memory."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS_SIZE), 4 + _CONN_CAPS_SIZE)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != PROTO_MAJOR:
                raise LlamaError(
                    f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, mm's llama.cpp {PROTO_MAJOR}.x",
                    hint="run a worker built from the same llama.cpp (`mm llama build`, then `mm rpc serve`)",
                )
            (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for index in range(count):
                free, total = struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16))
                name = f"RPC{index}[{endpoint}]"
                devices.append(RpcDevice(name=name, endpoint=endpoint, index=index, free_bytes=free, total_bytes=total))
    except (OSError, ValueError) as exc:
        raise LlamaError(
            f"RPC worker {endpoint} is not reachable: {exc}",
            hint=f"start it there with `mm rpc serve --port {port}` (and open the port to this host only)",
        ) from None
    return Worker(endpoint=endpoint, version=f"{major}.{minor}.{patch}", devices=devices)


def query_workers(endpoints: list[str]) -> list[Worker]:
    """Every worker, in the order given (llama.cpp's device order); the first one down is the error."""
    return [query_worker(endpoint) for endpoint in endpoints]


def _call(sock: socket.socket, cmd: int, payload: bytes, answer_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv(sock, 8))
    if size != answer_size:
        raise ValueError(f"answered {size} bytes to command {cmd}, expected {answer_size}")
    return _recv(sock, size)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("the worker closed the connection")
        data += chunk
    return data


def serve_argv(
    host: str = LOOPBACK, port: int = DEFAULT_PORT, threads: int | None = None, devices: list[str] | None = None,
    binary: Path | None = None,
) -> list[str]:  # fmt: skip
    """The ggml-rpc-server command line for these options."""
    problem = endpoint_problem(f"{host}:{port}")
    if problem:
        raise UsageError(f"address to serve on: {problem}", param="host" if 0 < port < 65536 else "port")
    bad = [p for p in map(device_name_problem, devices or []) if p]
    if bad:
        raise UsageError(f"devices to lend: {bad[0]}", param="device")
    argv = [str(binary or require_llama_tool(RPC_SERVER)), "--host", host, "--port", str(port)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    if devices:
        argv += ["--device", ",".join(devices)]
    return argv


def start_worker(
    host: str = LOOPBACK, port: int = DEFAULT_PORT, threads: int | None = None, devices: list[str] | None = None,
    *, log_path: Path | None = None, ready_seconds: float = 30.0, binary: Path | None = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start a worker in the background and return once it answers (its output to `log_path`)."""
    argv = serve_argv(host, port, threads, devices, binary)
    sink = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115  # the child keeps it
    try:
        proc = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
    finally:
        if log_path:
            sink.close()  # type: ignore[union-attr]
    endpoint = f"{LOOPBACK if host in ('0.0.0.0', '') else host}:{port}"
    deadline = time.monotonic() + ready_seconds
    while True:
        if proc.poll() is not None:
            raise LlamaError(f"{RPC_SERVER} on {endpoint} exited with status {proc.returncode}", hint=f"see {log_path}")
        try:
            query_worker(endpoint, timeout=1.0)
            return proc
        except LlamaError:
            if time.monotonic() > deadline:
                stop(proc, grace_seconds=0)
                raise
            time.sleep(0.1)


def run_worker(
    host: str = LOOPBACK, port: int = DEFAULT_PORT, threads: int | None = None, devices: list[str] | None = None
) -> int:
    """Run a worker in the foreground until it exits or is interrupted; its exit status."""
    return run_foreground(serve_argv(host, port, threads, devices))
