"""Command groups of the `mm` CLI: each module's `register(app)` adds its commands to the root app."""

from __future__ import annotations

from collections.abc import Callable

import typer


def registered_groups() -> list[Callable[[typer.Typer], None]]:
    from pipeline.commands import build, fit, llama, pull, quantize, recipes, registry

    return [
        recipes.register,
        pull.register,
        quantize.register,
        llama.register,
        fit.register,
        registry.register,
        build.register,
    ]
