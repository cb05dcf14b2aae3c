"""Command-line values that need no checking pass straight through; every other value goes to typer's coercion.

typer (0.2x) coerces each parameter through a pydantic TypeAdapter, even a default None, and building the first
adapter imports pydantic: most of a local `mm inspect`'s start-up time (issue 18). A value that is None, a str
for a str parameter, or an int for an int parameter without bounds is already what typer would return, so this
narrow piece returns it as it is and builds typer's own coercion only for the first value that needs one.
Where a typer release lacks the hooks used here, its own coercion runs unchanged.
"""

from __future__ import annotations

from typing import Any

from typer import _click  # typer vendors click; its Context and Parameter are the ones its commands use

_PLAIN = (str, int)


class _PlainFirst:
    """A parameter's coercion: plain values as they are, anything else through typer's (built on first use)."""

    def __init__(self, param: Any) -> None:
        self._param = param
        self._typer_coercion: Any = None

    def coerce(self, value: Any, param: Any, ctx: _click.Context) -> Any:
        descriptor = self._param.type_descriptor
        info = descriptor.parameter_info
        multiple = param.multiple or param.nargs == -1
        if value is None:
            return () if multiple else None  # as typer's RuntimeParam.coerce
        plain = (
            not multiple
            and descriptor.annotation in _PLAIN
            and type(value) is descriptor.annotation
            and info.parser is None
            and info.min is None
            and info.max is None
        )
        if plain:
            return value
        if self._typer_coercion is None:
            from typer._coercion import build_runtime_param

            self._typer_coercion = build_runtime_param(descriptor)
        return self._typer_coercion.coerce(value, param=param, ctx=ctx)


def coerce_plain_values_first(params: list[Any]) -> None:
    """Give each typer parameter the plain-first coercion (those already coerced, or of another typer, are left)."""
    for param in params:
        if getattr(param, "_runtime_param", False) is None and hasattr(param, "type_descriptor"):
            param._runtime_param = _PlainFirst(param)


class PlainValuesFirst(_click.Command):
    """Mixed into mm's command and group classes (before typer's): their parameters, and the --help option
    typer makes later on first use, coerce plain values first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        coerce_plain_values_first(self.params)

    def get_help_option(self, ctx: _click.Context) -> Any:
        option = super().get_help_option(ctx)
        coerce_plain_values_first([option])
        return option
