"""The one way a command of the `mm` CLI is registered, and the habits every command shares.

Each group module under pipeline/commands/ defines plain functions (`<name>_command`, docstring ending with an
`Example:` line) and a `register(app)` that calls `add_command(app, "name", function)`; a group of
subcommands is `group = add_group(app, "name", help)` followed by `add_command(group, ...)`.
`add_command` gives every command the same habits: `-v/--verbose` after the command name too, llama.cpp's
`-fa on|off|auto`, and the first docstring line, uncut, in `mm --help`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import typer
from typer import _click  # typer vendors click; its Context/Option are the ones its commands use
from typer.core import TyperArgument, TyperCommand, TyperGroup

from pipeline.commands.plain_values import PlainValuesFirst

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it
FLASH_ATTN_VALUES = {"on": "--flash-attn", "off": "--no-flash-attn", "auto": None}


def set_verbosity(count: int) -> None:
    """-v info, -vv debug; diagnostics go to stderr."""
    level = logging.WARNING if count <= 0 else logging.INFO if count == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def _take_verbosity(args: list[str]) -> list[str]:
    """`mm ls -v` as well as `mm -v ls`: -v/-vv/--verbose after the command name set the log level too."""
    count, out = 0, []
    for index, arg in enumerate(args):
        if arg == "--":
            out += args[index:]
            break
        if arg == "--verbose" or (len(arg) > 1 and arg.startswith("-") and set(arg[1:]) == {"v"}):
            count += 1 if arg == "--verbose" else len(arg) - 1
            continue
        out.append(arg)
    if count:
        set_verbosity(count)
    return out


def _normalize_flash_attn(args: list[str]) -> list[str]:
    """llama.cpp spells flash attention `-fa on|off|auto` (and `--flash-attn on`); mm's flag pair takes those too."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        name, _, attached = arg.partition("=")
        if name in ("-fa", "--flash-attn"):
            value = attached or (args[i + 1] if i + 1 < len(args) else "")
            consumed = not attached and value.lower() in FLASH_ATTN_VALUES
            if attached or consumed or name == "-fa":
                if value.lower() not in FLASH_ATTN_VALUES and (attached or (value and not value.startswith("-"))):
                    raise typer.BadParameter(f"{value!r} is not one of on, off, auto", param_hint=f"'{name}'")
                flag = FLASH_ATTN_VALUES.get(value.lower(), "--flash-attn")
                out.extend([flag] if flag else [])
                i += 2 if consumed else 1
                continue
        out.append(arg)
        i += 1
    return out


def _returns(text: str) -> Callable[..., str]:
    return lambda *args, **kwargs: text


class MMCommand(PlainValuesFirst, TyperCommand):
    """A typer command with mm's shared habits (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar:
                # typer 0.29 would print `{MODEL}` in the usage line and `MODEL <str>` in the list
                param._usage_display_name = _returns(param.metavar)  # type: ignore[method-assign]
                param._rich_display_name = _returns(param.metavar)  # type: ignore[method-assign]
                param.display_type_rich = _returns("")  # type: ignore[method-assign]

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        args = _take_verbosity(args)
        if any(p.name == "flash_attn" for p in self.params):
            args = _normalize_flash_attn(args)
        return super().parse_args(ctx, args)


def first_line(function: Callable[..., Any]) -> str:
    return (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""


def add_command(app: typer.Typer, name: str, function: Callable[..., Any]) -> None:
    """Register `function` as `mm <name>` with mm's command class; the short help is its first line, uncut."""
    app.command(name, cls=MMCommand, short_help=first_line(function))(function)


def add_group(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """A group of subcommands (`mm recipe …`); commands are added to it with add_command."""
    group = typer.Typer(cls=TyperGroup, help=help, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name, short_help=help.splitlines()[0])
    return group
