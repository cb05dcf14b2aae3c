"""`mm recipe validate|ls`: check and list recipe files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.base.errors import RecipeError
from pipeline.commands.options import JsonOpt, RecipesDirOpt
from pipeline.commands.registration import add_command, add_group
from pipeline.commands.render import emit_json, table


def validate_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(metavar="[PATH]...", help="Recipe files (default: every recipe in the folder)."),
    ] = None,
    recipes: RecipesDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate recipes: every problem names the file, the field and what is allowed.

    Beyond the schema, a source whose header mm has (a path, a pulled file) is checked too: an
    already-quantized source needs quantize.allow_requantize.

    Example: mm recipe validate recipes/llama2-70b-chat-12g.toml
    """
    from pipeline.llama.quantize_inputs import check_recipe_files
    from pipeline.spec.recipe import list_recipe_paths, recipes_dir

    results = check_recipe_files(paths or list_recipe_paths(recipes or recipes_dir()))
    if as_json:
        emit_json(results)
    else:
        for result in results:
            typer.echo(f"ok      {result.path}" if result.ok else f"invalid {result.error}")
    failed = sum(1 for r in results if not r.ok)
    if failed:
        raise RecipeError(f"{failed} of {len(results)} recipe(s) invalid")


def ls_command(recipes: RecipesDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the recipes in the folder with their source, quants and hardware.

    Example: mm recipe ls --recipes ./recipes
    """
    from pipeline.spec.recipe import check_recipes, list_recipe_paths, recipes_dir

    rows = check_recipes(list_recipe_paths(recipes or recipes_dir()))
    if as_json:
        emit_json(rows)
        return
    table(
        ["name", "hardware", "quants", "source"],
        [[r.name, r.hardware or "-", ",".join(r.types) or "-", r.source or f"INVALID: {r.error}"] for r in rows],
    )


def register(app: typer.Typer) -> None:
    group = add_group(app, "recipe", "Check and list recipes (TOML files describing what to build).")
    add_command(group, "validate", validate_command)
    add_command(group, "ls", ls_command)
