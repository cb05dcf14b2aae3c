"""`mm recipe validate|ls`: check and list recipe files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.commands.options import JsonOpt, RecipesDirOpt
from pipeline.commands.render import emit_json, table
from pipeline.errors import MMError, RecipeError
from pipeline.recipe import list_recipe_paths, load_recipe, recipes_dir

recipe_app = typer.Typer(help="Check and list recipes (TOML files describing what to build).", no_args_is_help=True)


@recipe_app.command("validate")
def validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Recipe files (default: every recipe in the folder).")
    ] = None,
    recipes: RecipesDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate recipes: every problem names the file, the field and what is allowed.

    Example: mm recipe validate recipes/llama2-70b-chat-12g.toml
    """
    targets = paths or list_recipe_paths(recipes or recipes_dir())
    results = []
    for path in targets:
        try:
            load_recipe(path)
            results.append({"path": str(path), "ok": True, "error": None})
        except MMError as exc:
            results.append({"path": str(path), "ok": False, "error": str(exc)})
    if as_json:
        emit_json(results)
    else:
        for result in results:
            typer.echo(f"ok      {result['path']}" if result["ok"] else f"invalid {result['error']}")
    failed = sum(1 for r in results if not r["ok"])
    if failed:
        raise RecipeError(f"{failed} of {len(results)} recipe(s) invalid")


@recipe_app.command("ls")
def ls(recipes: RecipesDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the recipes in the folder with their source, quants and hardware.

    Example: mm recipe ls --recipes ./recipes
    """
    rows: list[dict[str, Any]] = []
    for path in list_recipe_paths(recipes or recipes_dir()):
        try:
            r = load_recipe(path)
        except MMError as exc:
            rows.append({"name": path.stem, "path": str(path), "error": exc.message})
            continue
        source = str(r.source.path) if r.source.is_local else f"{r.source.repo}:{r.source.file}@{r.source.revision}"
        rows.append(
            {
                "name": r.name,
                "path": str(path),
                "hardware": r.hardware,
                "source": source,
                "types": r.quantize.types,
                "error": None,
            }
        )
    if as_json:
        emit_json(rows)
        return
    table(
        ["name", "hardware", "quants", "source"],
        [
            [
                row["name"],
                row.get("hardware", "-"),
                ",".join(row.get("types", [])) or "-",
                row.get("source") or f"INVALID: {row['error']}",
            ]
            for row in rows
        ],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
