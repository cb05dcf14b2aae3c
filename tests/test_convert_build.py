"""`mm build` from a safetensors repo: resolve → download → convert → calibration → imatrix → quantize
(iq2_xxs, q4_k_m with the imatrix; q8_0 without) → fit → publish, incrementally."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.errors import RecipeError
from pipeline.base.home import mm_home
from pipeline.convert.env import ConverterEnv
from pipeline.llama.tools import BuiltTools
from pipeline.registry.blobs import blob_path
from pipeline.registry.store import get_profile
from pipeline.spec.recipe import load_recipe
from tests.conftest import write_recipe
from tests.hf_tiny_model import corpus
from tests.hub import LocalHub
from tests.test_convert import generate, serve

RECIPE = """
hardware = "cpu-32g"
[source]
format = "safetensors"
repo = "org/tiny-llama"
[convert]
outtype = "f16"
[imatrix]
text = "{text}"
chunks = 6
ctx = 128
[quantize]
types = ["iq2_xxs", "q4_k_m", "q8_0"]
imatrix = "auto"
[run]
ctx = 256
"""


def stages(report: dict[str, object]) -> dict[str, str]:
    (recipe,) = report["recipes"]  # type: ignore[misc]
    return {s["name"]: s["status"] for s in recipe["stages"]}


def reasons(report: dict[str, object]) -> dict[str, str]:
    (recipe,) = report["recipes"]  # type: ignore[misc]
    return {s["name"]: s["reason"] for s in recipe["stages"] if s["status"] == "ran"}


def test_a_safetensors_recipe_validates_plans_and_refuses_a_file_or_pin(
    recipes_folder: Path, mm: Callable[..., Result]
) -> None:
    ok = write_recipe(recipes_folder, "ok", RECIPE.format(text="t.txt"))
    recipe = load_recipe(ok)
    assert recipe.source.is_safetensors and recipe.quantize.imatrix == "auto" and recipe.imatrix.chunks == 6
    assert mm("recipe", "validate", str(ok)).exit_code == 0
    plan = mm("build", "ok", "--recipes", str(recipes_folder), "--dry-run", "--offline", "--json")
    names = [s["name"] for s in json.loads(plan.stdout)["recipes"][0]["stages"]]
    assert names[:5] == ["resolve", "download", "convert", "calibration", "imatrix"], names
    refused = mm("quantize", "ok", "--recipes", str(recipes_folder), "--to", "q4_k_m")
    assert refused.exit_code == 2 and "mm build ok" in refused.stderr
    with_file = RECIPE.format(text="t.txt").replace("[convert]", 'file = "x.gguf"\n[convert]')
    bad = write_recipe(recipes_folder, "bad", with_file)
    with pytest.raises(RecipeError, match="whole repo"):
        load_recipe(bad)


@pytest.mark.slow
def test_build_from_safetensors_end_to_end_then_skips_and_remakes_only_what_the_text_touches(
    local_hub: LocalHub,
    mm: Callable[..., Result],
    hf_tiny_model: Path,
    converter: ConverterEnv,
    llama_tools: BuiltTools,
    recipes_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_LLAMA_TOOLS", str(llama_tools.bin_dir))
    commit = serve(local_hub, hf_tiny_model)
    local_hub.add_repo("datasets/org/texts", {"a.txt": corpus(5, 600).encode()})
    write_recipe(recipes_folder, "tiny", RECIPE.format(text="org/texts:a.txt"))  # on its main branch

    built = mm("build", "tiny", "--recipes", str(recipes_folder), "--json")
    assert built.exit_code == 0, built.stderr
    report = json.loads(built.stdout)
    assert set(stages(report).values()) == {"ran"}, stages(report)
    order = list(stages(report))
    assert order.index("convert") < order.index("imatrix") < order.index("quantize:iq2_xxs")

    iq2 = get_profile("tiny-iq2_xxs")
    provenance = iq2.provenance
    assert provenance.source.repo == "org/tiny-llama" and provenance.source.commit == commit
    assert provenance.quantize is not None and provenance.quantize.imatrix_sha256 is not None
    q8 = get_profile("tiny-q8_0").provenance.quantize
    assert q8 is not None and q8.imatrix_sha256 is None  # q8_0 ignores an imatrix
    assert len(generate(blob_path(mm_home(), iq2.blob.sha256), "the river")) == 8

    again = json.loads(mm("build", "tiny", "--recipes", str(recipes_folder), "--json").stdout)
    assert set(stages(again).values()) == {"skipped"}, stages(again)

    # The calibration text changes upstream: the imatrix and the quants that read it are made again, nothing else.
    local_hub.update_file("datasets/org/texts", "a.txt", corpus(6, 600).encode())
    changed = json.loads(mm("build", "tiny", "--recipes", str(recipes_folder), "--json").stdout)
    ran = {name for name, status in stages(changed).items() if status == "ran"}
    assert {"calibration", "imatrix", "quantize:iq2_xxs", "quantize:q4_k_m"} <= ran
    assert not ran & {"download", "convert", "quantize:q8_0", "fit:q8_0", "publish:q8_0"}, ran
    assert reasons(changed)["imatrix"] == reasons(changed)["quantize:iq2_xxs"] == "calibration text changed"

    # A new upstream commit re-converts.
    local_hub.update_file("org/tiny-llama", "generation_config.json", b'{"do_sample": false}')
    moved = json.loads(mm("build", "tiny", "--recipes", str(recipes_folder), "--json").stdout)
    assert stages(moved)["convert"] == "ran" and reasons(moved)["convert"] == "new upstream commit"
