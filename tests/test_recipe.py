"""Recipes and hardware classes: valid files load; each kind of mistake names file, field and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.errors import RecipeError
from pipeline.spec.recipe import find_recipe, list_recipe_paths, load_recipe
from tests.conftest import write_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent

GOOD = """
hardware = "rtx3060-12g"
[source]
repo = "TheBloke/Llama-2-70B-chat-GGUF"
file = "llama-2-70b-chat.Q4_K_M.gguf"
[quantize]
types = ["Q2_K", "q3_k"]
allow_requantize = true
[run]
ctx = 8192
kv_type = "q8_0"
"""


def test_shipped_recipes_all_validate() -> None:
    paths = list_recipe_paths(REPO_ROOT / "recipes")
    assert len(paths) >= 2
    names = {load_recipe(p).name for p in paths}
    assert "llama2-70b-chat-12g" in names


def test_good_recipe_defaults_and_canonical_types(recipes_folder: Path) -> None:
    recipe = load_recipe(write_recipe(recipes_folder, "big", GOOD))
    assert recipe.name == "big"  # the file's stem
    assert recipe.source.revision == "main"
    assert recipe.quantize.types == ["q2_k", "q3_k_m"]  # case-insensitive, alias resolved
    assert recipe.run.n_ctx == 8192 and recipe.run.kv_type == "q8_0"
    assert recipe.run.flash_attn is True  # not given: llama.cpp's auto mode turns it on for a quantized V cache
    assert recipe.content_sha256 and len(recipe.content_sha256) == 64


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        ("colour = 'red'\n" + GOOD, "colour", "unknown key"),
        (GOOD.replace("ctx = 8192", 'ctx = "big"'), "run.ctx", "integer"),
        (GOOD.replace("TheBloke/Llama-2-70B-chat-GGUF", "not a repo"), "source.repo", "owner/name"),
        (GOOD.replace('"Q2_K"', '"q9_z"'), "quantize.types", "q4_k_m (4.9 bpw)"),
        (GOOD.replace("rtx3060-12g", "gtx-toaster"), "hardware", "rtx3060-12g"),
        (GOOD.replace('kv_type = "q8_0"', 'kv_type = "q5_1"'), "run.kv_type", "'f16', 'q8_0' or 'q4_0'"),
        (
            GOOD.replace('file = "llama-2-70b-chat.Q4_K_M.gguf"', 'file = "model.safetensors"'),
            "source.file",
            ".gguf",
        ),
        (GOOD.replace('file = "llama-2-70b-chat.Q4_K_M.gguf"', 'path = "x.gguf"'), "source", "not both"),
        (GOOD.replace("[run]", "[run\n"), "", "not valid TOML"),
    ],
)
def test_each_kind_of_mistake_names_file_field_and_allowed(
    recipes_folder: Path, text: str, field: str, allowed: str
) -> None:
    path = write_recipe(recipes_folder, "bad", text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message
    assert f": {field}:" in message or not field
    assert allowed in message


def test_hardware_toml_beside_recipe_adds_classes(recipes_folder: Path) -> None:
    (recipes_folder / "hardware.toml").write_text('[my-box]\nvram = "8G"\nram = "32GiB"\nram_bandwidth_gbps = 40\n')
    recipe = load_recipe(write_recipe(recipes_folder, "mine", GOOD.replace("rtx3060-12g", "my-box")))
    assert recipe.hardware == "my-box"
    assert [p.name for p in list_recipe_paths(recipes_folder)] == ["mine.toml"]  # not the catalog


def test_bad_hardware_toml_is_reported_with_its_file(recipes_folder: Path) -> None:
    (recipes_folder / "hardware.toml").write_text('[my-box]\nvram = "lots"\nram = "32G"\nram_bandwidth_gbps = 40\n')
    with pytest.raises(RecipeError, match=r"hardware.toml: \[my-box\]: vram: .*not a size"):
        load_recipe(write_recipe(recipes_folder, "mine", GOOD.replace("rtx3060-12g", "my-box")))


def test_find_recipe_by_name_and_path(recipes_folder: Path) -> None:
    path = write_recipe(recipes_folder, "alpha", 'name = "custom"\n' + GOOD)
    assert find_recipe("alpha", recipes_folder) == path
    assert find_recipe("custom", recipes_folder) == path
    assert find_recipe(str(path)) == path
    with pytest.raises(RecipeError, match="no recipe named 'beta'"):
        find_recipe("beta", recipes_folder)


def test_cli_validate_reports_each_bad_file_and_exits_nonzero(mm: Callable[..., Result], recipes_folder: Path) -> None:
    write_recipe(recipes_folder, "good", GOOD)
    write_recipe(recipes_folder, "bad", GOOD.replace('"Q2_K"', '"q9_z"'))
    result = mm("recipe", "validate", "--recipes", str(recipes_folder))
    assert result.exit_code == 2
    assert "ok      " in result.stdout and "good.toml" in result.stdout
    assert "bad.toml: quantize.types" in result.stdout


def test_cli_recipe_ls_json(mm: Callable[..., Result], recipes_folder: Path) -> None:
    import json

    write_recipe(recipes_folder, "good", GOOD)
    result = mm("recipe", "ls", "--recipes", str(recipes_folder), "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows[0]["name"] == "good" and rows[0]["types"] == ["q2_k", "q3_k_m"]
