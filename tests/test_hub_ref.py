"""The one Hub-reference parser: mm's spelling, Hub web URLs and hf:// URIs read into one HubRef, and every
malformed reference refused with one message naming the grammar."""

from __future__ import annotations

import pytest

from pipeline.base.errors import UsageError
from pipeline.resolve.hub_ref import HubRef, match_hub_ref, model_text_from_url, parse_hub_ref
from pipeline.resolve.model_ref import parse_model_arg, pull_target
from pipeline.resolve.texts import parse_text

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", HubRef("org/name")),
        ("org/name@v2", HubRef("org/name", revision="v2")),
        ("org/name:m.Q4_K_M.gguf", HubRef("org/name", "m.Q4_K_M.gguf")),
        ("org/Name-1.5B:sub/m.gguf@refs/pr/1", HubRef("org/Name-1.5B", "sub/m.gguf", "refs/pr/1")),
        ("ggml-org/ci:w.zip#wiki/test.raw@" + COMMIT, HubRef("ggml-org/ci", "w.zip", COMMIT, member="wiki/test.raw")),
        ("https://huggingface.co/org/name", HubRef("org/name")),
        ("https://huggingface.co/org/name/tree/v2", HubRef("org/name", revision="v2")),
        ("https://huggingface.co/org/name/blob/main/m.gguf", HubRef("org/name", "m.gguf")),
        ("https://huggingface.co/org/name/resolve/main/m.gguf?download=true", HubRef("org/name", "m.gguf")),
        (
            "https://hf-mirror.com/org/name/blob/refs%2Fpr%2F3/sub/m%20x.gguf",
            HubRef("org/name", "sub/m x.gguf", "refs/pr/3"),
        ),
        ("https://huggingface.co/datasets/org/d/blob/main/t.txt", HubRef("org/d", "t.txt", repo_type="dataset")),
        ("https://huggingface.co/spaces/org/app", HubRef("org/app", repo_type="space")),
        ("hf://org/name/m.gguf", HubRef("org/name", "m.gguf")),
        ("hf://datasets/org/d@" + COMMIT + "/t.txt", HubRef("org/d", "t.txt", COMMIT, repo_type="dataset")),
        ("hf://org/name@refs%2Fpr%2F1", HubRef("org/name", revision="refs/pr/1")),
    ],
)
def test_every_spelling_reads_into_one_ref(text: str, expected: HubRef) -> None:
    assert parse_hub_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://huggingface.co/org",  # no repo name
        "https://huggingface.co/org/name/discussions/3",  # a page, not a file
        "https://huggingface.co/org/name/blob/main/a b.gguf",  # a space: copied badly
        "hf://org",
        "org/name:",  # an empty file
        "org/name@",  # an empty revision
        "org/name:m.gguf@a@b",
        "org/name/extra:m.gguf",
        "-org/name:m.gguf",
        "models/local.gguf",  # a path, not a repo
        "recipe-name",
    ],
)
def test_what_is_not_a_hub_reference_is_one_clear_error(text: str) -> None:
    with pytest.raises(UsageError, match=r"is not a Hub (reference|address): expected"):
        parse_hub_ref(text)


def test_a_path_or_recipe_is_not_taken_for_a_repo() -> None:
    """match_hub_ref answers None (not an error) for what other readers of MODEL may own."""
    assert match_hub_ref("models/local.gguf") is None
    assert match_hub_ref("recipes/llama.toml") is None
    assert match_hub_ref("llama3-8b-12g") is None


def test_the_ref_prints_as_mm_spells_it() -> None:
    assert str(parse_hub_ref("https://huggingface.co/org/name/blob/main/m.gguf")) == "org/name:m.gguf"
    assert str(parse_hub_ref("hf://org/name@v2/m.gguf")) == "org/name:m.gguf@v2"
    assert model_text_from_url("https://huggingface.co/org/name/tree/v2") == "org/name@v2"
    assert model_text_from_url("org/name:m.gguf") == "org/name:m.gguf"
    with pytest.raises(UsageError, match="is a dataset repo; a MODEL is a file of a model repo"):
        model_text_from_url("https://huggingface.co/datasets/org/d/blob/main/t.gguf")


def test_every_reader_of_hub_references_uses_the_one_parser() -> None:
    """MODEL, pull targets and texts read the same grammar, URLs included."""
    url = "https://huggingface.co/org/name/blob/v1/m.gguf"
    assert parse_model_arg(url).hub == HubRef("org/name", "m.gguf", "v1")
    assert pull_target("https://huggingface.co/org/name/tree/v2").revision == "v2"  # was an ad-hoc split in pull
    assert pull_target("org/name@v2", filename="m.gguf") == pull_target("org/name:m.gguf@v2")
    text = parse_text(f"https://huggingface.co/datasets/ggml-org/ci/blob/{COMMIT}/w.zip")
    assert (text.repo, text.file, text.revision) == ("ggml-org/ci", "w.zip", COMMIT)


def test_a_reference_naming_the_wrong_thing_says_so() -> None:
    with pytest.raises(UsageError, match=r"names a dataset repo; a MODEL is a \.gguf file of a model repo"):
        parse_model_arg("https://huggingface.co/datasets/org/d/blob/main/m.gguf")
    with pytest.raises(UsageError, match="names a member of a zip"):
        parse_model_arg("org/name:m.gguf#inside")
    with pytest.raises(UsageError, match="texts are files of Hub dataset repos"):
        parse_text("https://huggingface.co/org/name/blob/main/t.txt")
    with pytest.raises(UsageError, match="already names a revision"):
        pull_target("https://huggingface.co/org/name/blob/main/m.gguf", revision="v2")
    with pytest.raises(UsageError, match="names no file: expected org/name:FILE"):
        _ = HubRef("org/name").filename
