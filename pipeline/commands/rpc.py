"""`mm rpc`: start a llama.cpp RPC worker on this host, and list what running workers offer."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.base.units import format_size
from pipeline.commands.options import JsonOpt, ThreadsOpt, parse_device_names
from pipeline.commands.registration import add_command, add_group
from pipeline.commands.render import emit_json, note, table


def serve_command(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to bind (anything but 127.0.0.1 is unsafe).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", metavar="PORT", help="TCP port.")] = 50052,
    threads: ThreadsOpt = None,
    device: Annotated[
        str | None, typer.Option("--device", "-d", metavar="DEV,...", help="This host's devices to lend (default all).")
    ] = None,
) -> None:
    """Start a llama.cpp RPC worker (ggml-rpc-server) that lends this host's devices to `--rpc` runs.

    The RPC protocol has no authentication: the worker binds 127.0.0.1 unless --host says otherwise, and then
    must only be reachable from the hosts that use it. Runs until interrupted.

    Example: mm rpc serve --port 50052 -t 8
    """
    from pipeline.llama.rpc import LOOPBACK, UNAUTHENTICATED_WARNING, run_worker
    from pipeline.spec.devices import endpoint_problem

    if host != LOOPBACK and endpoint_problem(f"{host}:{port}") is None:
        note(UNAUTHENTICATED_WARNING.format(host=host))
    raise typer.Exit(run_worker(host, port, threads, parse_device_names(device)))


def ls_command(
    endpoints: Annotated[str, typer.Argument(metavar="HOST:PORT,...", help="Workers to ask, comma-separated.")],
    as_json: JsonOpt = False,
) -> None:
    """Ask running RPC workers for their devices and free memory, as llama.cpp's --rpc does.

    Devices are listed in llama.cpp's order (workers in the order given), named as llama.cpp names their buffers.

    Example: mm rpc ls 192.168.1.10:50052,192.168.1.11:50052
    """
    from pipeline.llama.rpc import parse_endpoints, query_workers

    workers = query_workers(parse_endpoints(endpoints))
    if as_json:
        emit_json(workers)
        return
    table(
        ["device", "worker", "protocol", "free", "total"],
        [
            [d.name, w.endpoint, w.version, format_size(d.free_bytes), format_size(d.total_bytes)]
            for w in workers
            for d in w.devices
        ],
    )


def register(app: typer.Typer) -> None:
    group = add_group(app, "rpc", "llama.cpp RPC workers: lend this host's devices to a run on another (--rpc).")
    add_command(group, "serve", serve_command)
    add_command(group, "ls", ls_command)
