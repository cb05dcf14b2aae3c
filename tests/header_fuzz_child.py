"""Run `mm inspect` and `mm fit` in-process on each GGUF named on stdin, under a memory limit and a per-case
time limit; print one JSON line per run. Started by tests/test_header_fuzz.py in its own process."""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
import traceback

MEMORY_LIMIT_BYTES = 3 << 30  # address space: imports and a tiny model need ~1.5 GiB of it
CASE_SECONDS = 3


class Slow(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Slow


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    signal.signal(signal.SIGALRM, _alarm)
    import typer.testing
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    command = typer.main.get_command(app)
    typer.testing._get_command = lambda _: command  # built once: the runner rebuilds it on every call
    for line in sys.stdin:
        path = line.strip()
        for args in (["inspect", path], ["fit", path, "--vram", "0", "--ram", "8G"]):
            started = time.monotonic()
            record: dict[str, object] = {"path": path, "command": args[0]}
            signal.alarm(CASE_SECONDS)
            try:
                result = runner.invoke(app, args, catch_exceptions=True)
                record["exit_code"] = result.exit_code
                record["stderr"] = result.stderr[-2000:]
                record["output"] = result.output[-4000:]
                if isinstance(result.exception, Slow):
                    record["slow"] = True
                elif result.exception is not None and not isinstance(result.exception, SystemExit):
                    exc = result.exception
                    record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            except Slow:
                record["slow"] = True
            except BaseException as exc:  # MemoryError outside the runner, and the like
                record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            finally:
                signal.alarm(0)
            record["seconds"] = round(time.monotonic() - started, 3)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
