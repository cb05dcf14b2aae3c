"""The repair loop repairs: blobs share no inode with what mm rewrites, and `mm verify --repair` restores them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from pipeline.base.digest import sha256_file
from pipeline.base.home import mm_home
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from tests.conftest import write_recipe
from tests.test_build import RECIPE as BUILD_RECIPE
from tests.test_cli_registry import flip_byte

Mm = Callable[..., Result]

RECIPE = BUILD_RECIPE + "[run]\nctx = 256\n"  # a local model.gguf quantized to q8_0


@pytest.fixture
def built(mm: Mm, recipes_folder: Path) -> tuple[Path, Path]:
    """`mm build` of a local recipe: (the profile's blob, the quantize output it was published from)."""
    write_tiny_model(recipes_folder / "model.gguf", TinySpec())
    write_recipe(recipes_folder, "tiny", RECIPE)
    result = mm("build", "tiny", "--recipes", str(recipes_folder))
    assert result.exit_code == 0, result.output
    profile = json.loads(mm("show", "tiny-q8_0", "--json").stdout)
    blob = Path(profile["blob"]["path"])
    (output,) = mm_home().quant.glob("*.q8_0.gguf")
    assert sha256_file(blob) == profile["blob"]["sha256"]
    return blob, output


def _repair_command(verify: Result) -> list[str]:
    """The command `mm verify`'s hint names, as arguments."""
    match = re.search(r"`mm ([^`]+)`", verify.stderr)
    assert match, verify.stderr
    return match.group(1).split()


def test_the_blob_shares_no_inode_with_the_quantize_output_and_is_read_only(built: tuple[Path, Path]) -> None:
    blob, output = built
    assert blob.stat().st_ino != output.stat().st_ino and blob.stat().st_nlink == 1
    assert blob.stat().st_mode & 0o222 == 0


def test_damaged_blob_verify_fails_then_its_printed_command_repairs_it(mm: Mm, built: tuple[Path, Path]) -> None:
    blob, output = built
    original = sha256_file(blob)
    flip_byte(blob)
    assert sha256_file(output) == original  # damage to the blob is not damage to the output
    failed = mm("verify")
    assert failed.exit_code == 5 and "CORRUPT  tiny-q8_0" in failed.stdout
    command = _repair_command(failed)
    assert command == ["verify", "--repair"]
    repaired = mm(*command)
    assert repaired.exit_code == 0, repaired.output
    assert re.search(r"repaired tiny-q8_0@\S+: copied from", repaired.stderr), repaired.stderr
    assert mm("verify").exit_code == 0
    assert sha256_file(blob) == original


def test_repair_quantizes_again_when_the_output_is_damaged_too(mm: Mm, built: tuple[Path, Path]) -> None:
    blob, output = built
    original = sha256_file(blob)
    flip_byte(blob)
    flip_byte(output, keep_mtime=True)  # a stat-only check would still trust it
    repaired = mm("verify", "--repair", "--json")
    assert repaired.exit_code == 0, repaired.output
    (done,) = json.loads(repaired.stdout)["repaired"]
    assert done["how"].startswith("quantized again from")
    assert mm("verify").exit_code == 0 and sha256_file(blob) == original == sha256_file(output)


def test_repair_says_what_it_cannot_do_and_verify_still_fails(mm: Mm, built: tuple[Path, Path]) -> None:
    blob, output = built
    flip_byte(blob)
    output.unlink()
    (Path(json.loads(mm("show", "tiny-q8_0", "--json").stdout)["provenance"]["source"]["path"])).unlink()
    result = mm("verify", "--repair")
    assert result.exit_code == 5
    assert re.search(r"cannot repair tiny-q8_0@\S+: its quantize source", result.stderr), result.stderr
    assert "mm verify --repair" not in result.stderr  # the hint no longer sends the user in a circle


def test_a_build_remakes_a_damaged_quantize_output_from_source(
    mm: Mm, built: tuple[Path, Path], recipes_folder: Path
) -> None:
    _blob, output = built
    original = sha256_file(output)
    flip_byte(output)
    rebuilt = mm("build", "tiny", "--recipes", str(recipes_folder))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert sha256_file(output) == original and mm("verify").exit_code == 0
