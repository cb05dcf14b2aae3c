"""Strict recipes (issue 10): wrong types, unbounded numbers, unsafe names, bad tensor-type overrides and
files that are not TOML at all are each refused by `mm recipe validate` naming the file and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.conftest import write_recipe

Mm = Callable[..., Result]

BASE = """hardware = "cpu-32g"
[source]
repo = "org/tiny-GGUF"
file = "tiny.gguf"
"""


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ('[quantize]\ntypes = ["q8_0"]\nallow_requantize = "yes"', "quantize.allow_requantize", "boolean"),
        ('[run]\nflash_attn = "yes"', "run.flash_attn", "boolean"),
        ("[run]\nflash_attn = 1", "run.flash_attn", "boolean"),
        ("[run]\nbatch = 9223372036854775807", "run.batch", "less than or equal"),
        ("[run]\nparallel = 4611686018427387904", "run.parallel", "less than or equal to 256"),
        ("[run]\nctx = 4096.0", "run.ctx", "integer"),
        ('[run]\nctx = "4096"', "run.ctx", "integer"),
        ("[run]\nthreads = 100000", "run.threads", "less than or equal to 512"),
        ("[run]\nn_gpu_layers = -1", "run.n_gpu_layers", "greater than or equal to 0"),
        ('[quantize]\ntypes = ["q8_0"]\ntensor_types = { "attn_(q" = "q8_0" }', "quantize.tensor_types", "regular"),
        ('[quantize]\ntypes = ["q8_0"]\ntensor_types = { "attn_q" = "zzz" }', "quantize.tensor_types", "'zzz'"),
        ('[quantize]\ntypes = ["q8_0"]\noutput_tensor_type = "zzz"', "quantize.output_tensor_type", "'zzz'"),
        ('[quantize]\ntypes = ["q8_0"]\ntoken_embedding_type = 8', "quantize.token_embedding_type", "string"),
        ('[quantize]\ntypes = ["q8_0"]\npure = "false"', "quantize.pure", "boolean"),
    ],
)
def test_wrong_type_or_unbounded_value_names_file_and_field(
    mm: Mm, recipes_folder: Path, extra: str, field: str, words: str
) -> None:
    path = write_recipe(recipes_folder, "r", BASE + extra + "\n")
    result = mm("recipe", "validate", str(path))
    assert result.exit_code == 2, result.output
    line = next(line for line in result.output.splitlines() if field in line)
    assert str(path) in line and words in line, line


def test_valid_overrides_pass_validation(mm: Mm, recipes_folder: Path) -> None:
    text = BASE + '[quantize]\ntypes = ["q4_k_m"]\noutput_tensor_type = "q8_0"\ntensor_types = { "attn_v" = "Q6_K" }\n'
    path = write_recipe(recipes_folder, "ok", text)
    result = mm("recipe", "validate", str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["x" * 300, "a b", "../up", "-dash", "ok\nerror: injected"])
def test_unsafe_or_long_name_is_refused(mm: Mm, recipes_folder: Path, name: str) -> None:
    path = write_recipe(recipes_folder, "r", f"name = {name!r}\n".replace("'", '"') + BASE)
    result = mm("recipe", "validate", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}: name:" in result.output
    assert "\nerror: injected" not in result.output


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (bytes(range(256)) * 4, "not a text file"),
        (b"hardware = \n", "not valid TOML"),
        (b"x = 1\n" * 200_000, "larger than"),
    ],
)
def test_garbage_file_is_one_message_with_the_file_name(
    mm: Mm, recipes_folder: Path, content: bytes, words: str
) -> None:
    path = recipes_folder / "garbage.toml"
    path.write_bytes(content)
    result = mm("recipe", "validate", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}: " in result.output and words in result.output, result.output
