"""`mm pull owner/name` on a terminal lists the repo's GGUF files and asks which one to pull."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.hub import LocalHub

REPO_ROOT = Path(__file__).resolve().parent.parent


def _read_until(fd: int, needle: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _pull_a_two_file_repo_on_a_terminal(local_hub: LocalHub) -> tuple[subprocess.Popen[bytes], int]:
    """`mm pull acme/Two-GGUF` with a pseudo-terminal for its input and output: (child, controller fd)."""
    local_hub.add_repo("acme/Two-GGUF", {"small.Q2_K.gguf": b"a" * 1000, "small.Q8_0.gguf": b"b" * 3000})
    controller, terminal = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "pull", "acme/Two-GGUF"],
        stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=dict(os.environ),
    )  # fmt: skip
    os.close(terminal)
    return child, controller


def test_pull_without_a_file_asks_on_a_terminal(local_hub: LocalHub, isolated_env: Path) -> None:
    child, controller = _pull_a_two_file_repo_on_a_terminal(local_hub)
    try:
        listing = _read_until(controller, b"pull which file", 30).decode()
        assert "small.Q2_K.gguf" in listing and "small.Q8_0.gguf" in listing, listing
        second = re.search(r"^2\s+(\S+\.gguf)", listing, re.MULTILINE)
        assert second is not None, listing
        os.write(controller, b"2\n")
        rest = _read_until(controller, b"sha256 verified", 30).decode()
        assert child.wait(timeout=30) == 0, rest
    finally:
        child.kill()
        os.close(controller)
    snapshots = list((isolated_env / "hub").glob("models--acme--Two-GGUF/snapshots/*/*.gguf"))
    assert [p.name for p in snapshots] == [second.group(1)]


def test_the_file_pick_asks_again_and_takes_a_name(local_hub: LocalHub, isolated_env: Path) -> None:
    child, controller = _pull_a_two_file_repo_on_a_terminal(local_hub)
    try:
        _read_until(controller, b"pull which file", 30)
        os.write(controller, b"9\n")  # out of range: asked again, not an exit
        again = _read_until(controller, b"pull which file", 30).decode()
        assert "type a number from 1 to 2, or a file name" in again and child.poll() is None, again
        os.write(controller, b"small.Q8_0.gguf\n")  # a typed name works too
        rest = _read_until(controller, b"sha256 verified", 30).decode()
        assert child.wait(timeout=30) == 0, rest
    finally:
        child.kill()
        os.close(controller)
    snapshots = list((isolated_env / "hub").glob("models--acme--Two-GGUF/snapshots/*/*.gguf"))
    assert [p.name for p in snapshots] == ["small.Q8_0.gguf"]
