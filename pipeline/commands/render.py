"""How commands show results: JSON for scripts, aligned tables and short lines for people."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from pipeline.base.safe_names import printable

if TYPE_CHECKING:  # huggingface_hub loads with pipeline.hub.transfer: only when a transfer runs; tqdm with a bar
    from tqdm import tqdm

    from pipeline.hub.transfer import Progress


def emit_json(document: Any) -> None:
    """Print a pydantic model, a dataclass, or plain data, as JSON on stdout."""
    from pydantic import BaseModel  # late: a command that prints no JSON need not load pydantic

    if isinstance(document, BaseModel):
        text = document.model_dump_json(indent=2)
    else:
        text = json.dumps(_plain(document), indent=2, default=str)
    typer.echo(text)


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table (no colour codes, so it pipes cleanly; control characters from files escaped)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else printable(str(c), 4096) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            typer.echo("  ".join("-" * w for w in widths))


def note(message: str) -> None:
    """A diagnostic line for people, on stderr so stdout stays parseable."""
    typer.echo(message, err=True)


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


def byte_bar(label: str, total: int, initial: int) -> Progress:
    """A download's bar on stderr (bytes, binary units)."""
    from tqdm import tqdm

    bar: Progress = tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr
    )
    return bar


def tensor_bar(label: str, total: int, initial: int) -> Progress:
    """A quantize's bar on stderr (tensors done of total); gone when it finishes."""
    from tqdm import tqdm

    bar: Progress = tqdm(total=total, initial=initial, unit="tensor", desc=label, file=sys.stderr, leave=False)
    return bar


@contextmanager
def work_bar(label: str, unit: str, quiet: bool) -> Iterator[tqdm[Any]]:
    """A bar for long work on stderr, shown to a person at a terminal, closed however the work ends."""
    from tqdm import tqdm

    bar: tqdm[Any] = tqdm(desc=label, unit=unit, disable=not show_progress(quiet), leave=False)
    try:
        yield bar
    finally:
        bar.close()


def counting(bar: tqdm[Any]) -> Callable[[int, int], None]:
    """The library's `progress(done, total)` callback, drawn on `bar`."""

    def progress(done: int, total: int) -> None:
        bar.total = total or None
        bar.update(done - bar.n)

    return progress
