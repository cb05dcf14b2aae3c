"""The MODEL resolver: what a command-line MODEL names, and the one message for each thing it cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.base.errors import UsageError
from pipeline.resolve.hub_ref import HubRef
from pipeline.resolve.model_ref import (
    parse_model_arg,
    pull_target,
    recipe_source_path,
    resolve_model,
    target_hardware,
)
from pipeline.spec.recipe import load_recipe
from tests.conftest import write_recipe


def test_a_file_a_hub_reference_and_a_recipe_are_told_apart(tiny_model: Path, recipes_folder: Path) -> None:
    write_recipe(recipes_folder, "tiny", f'hardware = "cpu-64g"\n[source]\npath = "{tiny_model}"\n')
    assert parse_model_arg(str(tiny_model)).path == tiny_model
    assert parse_model_arg("org/name:m.Q4_K_M.gguf@v1").hub == HubRef("org/name", "m.Q4_K_M.gguf", "v1")
    recipe = parse_model_arg("tiny", recipes_folder).recipe
    assert recipe is not None and recipe.name == "tiny"
    assert resolve_model("tiny", recipes_folder) == (tiny_model, recipe, False)


def test_what_is_not_a_model_gets_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        parse_model_arg(str(tmp_path / "absent.gguf"))
    with pytest.raises(UsageError, match=r"is not a model: expected a \.gguf path"):
        parse_model_arg("not a model")
    with pytest.raises(UsageError, match="is not pulled yet") as refused:
        resolve_model("org/name:m.gguf")
    assert refused.value.hint == "run `mm pull org/name:m.gguf` first"


def test_a_recipe_source_path_is_relative_to_the_recipe(recipes_folder: Path, tiny_model: Path) -> None:
    (recipes_folder / "m.gguf").write_bytes(tiny_model.read_bytes())
    good = write_recipe(recipes_folder, "rel", 'hardware = "cpu-64g"\n[source]\npath = "m.gguf"\n')
    bad = write_recipe(recipes_folder, "gone", 'hardware = "cpu-64g"\n[source]\npath = "gone.gguf"\n')
    assert recipe_source_path(load_recipe(good)) == (recipes_folder / "m.gguf").resolve()
    with pytest.raises(UsageError, match=r"gone\.toml: source\.path: no such file"):
        recipe_source_path(load_recipe(bad))


def test_pull_targets(recipes_folder: Path) -> None:
    write_recipe(recipes_folder, "hubby", 'hardware = "cpu-64g"\n[source]\nrepo = "org/name"\nfile = "m.gguf"\n')
    assert pull_target("org/name:m.gguf").filename == "m.gguf"
    assert pull_target("org/name", filename="m.gguf", revision="v2").revision == "v2"
    assert pull_target("hubby", recipes_folder=recipes_folder).repo == "org/name"
    with pytest.raises(UsageError, match="already names a file"):
        pull_target("org/name:m.gguf", filename="other.gguf")
    with pytest.raises(UsageError, match="already names its file"):
        pull_target("hubby", filename="x.gguf", recipes_folder=recipes_folder)


def test_target_hardware_is_the_named_class_else_the_recipes(recipes_folder: Path, tiny_model: Path) -> None:
    write_recipe(recipes_folder, "r", f'hardware = "rtx3060-12g"\n[source]\npath = "{tiny_model}"\n')
    recipe = parse_model_arg("r", recipes_folder).recipe
    assert target_hardware(None, None, None, recipe).name == "rtx3060-12g"
    assert target_hardware("cpu-32g", None, None, recipe).name == "cpu-32g"
    assert target_hardware("cpu-32g", None, 8 << 30).ram_bytes == 8 << 30
