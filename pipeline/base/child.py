"""Running an external tool as a child of mm: its output kept in a log, tailed line by line, its life tied to mm's.

A child gets SIGKILL when mm dies (PR_SET_PDEATHSIG), so a `kill -9` of mm never leaves a converter or
llama.cpp tool writing into a temporary file that a later run has already cleaned up or replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded up front: the pre-exec hook below only calls into it
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a forked child before exec: get SIGKILL when mm dies, so a killed mm never leaves a writer."""
    with contextlib.suppress(AttributeError):
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_child(
    argv: list[str],
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    separators: bytes = b"\r\n",
) -> tuple[int, list[str]]:
    """Run `argv` to its end with stdout and stderr appended to `log_path`; `on_line` sees each line, a
    line ending at any byte of `separators` (a carriage return too, as progress bars write them; a comma
    for llama.cpp's `[1]5.2,[2]5.1,` chunk reports). Returns (exit status, last 20 lines).

    Ctrl-C or an error in `on_line` kills the child before this returns.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    to_newline = bytes.maketrans(separators, b"\n" * len(separators))
    with open(log_path, "ab") as sink:
        sink.write(f"\n=== mm: {' '.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=die_with_parent,
        )
        assert proc.stdout is not None
        try:
            pending = b""
            while chunk := os.read(proc.stdout.fileno(), 65536):
                sink.write(chunk)
                sink.flush()  # the log is live: a person (or a test) can tail it
                pending += chunk.translate(to_newline)
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    _feed(raw, tail, on_line)
            if pending:
                _feed(pending, tail, on_line)
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode, tail


def _feed(raw: bytes, tail: list[str], on_line: Callable[[str], None] | None) -> None:
    line = raw.decode(errors="replace").rstrip()
    if not line:
        return
    tail.append(line)
    del tail[:-20]
    if on_line is not None:
        on_line(line)


def describe_exit(returncode: int) -> str:
    return f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"


def stop(proc: subprocess.Popen[Any], grace_seconds: float = 10.0) -> None:
    """End a child that may still run: SIGTERM, then SIGKILL after `grace_seconds`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_foreground(argv: list[str]) -> int:
    """Run a long-lived tool (a server, a worker) with the terminal, until it exits or mm is interrupted."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        return proc.wait()
    finally:
        stop(proc)
