"""The hostile-Hub matrix (issue 19): every command that talks to a Hub × every lie a Hub can tell.

Surfaces: pull, pull --profile, pull --list-profiles, push, convert, eval's and imatrix's texts, fit of a
remote file. Attacks: a traversal ETag; a traversal, a non-hex and a mismatching commit; a 404 whose
X-Repo-Commit climbs out; unsafe file names; an impossible size. Each case must end in exactly one
`error:` line with the README's exit code, create, change or delete nothing outside MM_HOME (the folder
around it, with planted victims, is listed before and after), and commit nothing to the repo. No case
runs llama.cpp or the converter: every attack is refused before either would start.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.hub import VALID_TOKEN, LocalHub
from tests.test_hostile_hub import Mm, around, refused  # noqa: F401  (around: the fixture, shared)

REPO = "org/tiny-GGUF"
FILE = "tiny.gguf"
SAFETENSORS_REPO = "org/tiny-hf"
TEXTS = "org/texts"  # a dataset repo
PROFILE = "tiny"
UNSAFE = "../../x.gguf"

SURFACES = ["pull", "pull --profile", "pull --list-profiles", "push", "convert", "eval --text", "imatrix --text", "fit"]
ATTACKS = ["etag", "commit traversal", "commit non-hex", "commit mismatch", "404 traversal commit", "file name", "size"]
LISTING = {"pull", "pull --list-profiles", "push", "convert"}  # surfaces that read a repo's listing of names
TYPED = {"eval --text", "imatrix --text", "fit"}  # surfaces whose file name only the user gives


def expected(surface: str, attack: str) -> tuple[int, list[str]]:
    """The README's exit code and the words of the one message, per case."""
    if attack == "file name":
        if surface in TYPED:
            return 2, ["climbs out"]  # the user's own argument: a usage error, before any request
        if surface == "pull --profile":
            return 9, ["not a profile this mm reads"]  # the document names a file outside the repo
        return 3, ["file name", "refusing"]
    return 3, {
        "etag": ["ETag", "not a sha256 or git sha1 digest"],
        "commit traversal": ["invalid value", "40-hex git commit"],
        "commit non-hex": ["invalid value", "40-hex git commit"],
        "commit mismatch": ["answered for commit", "refusing"],
        "404 traversal commit": ["not found"],
        "size": ["impossible size"],
    }[attack]


@pytest.fixture(scope="module")
def published(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    """The files `mm push` writes for profile `tiny` (made once: publish and push into a scratch Hub)."""
    from pipeline.cli import app

    folder = tmp_path_factory.mktemp("publisher")
    hub = LocalHub().start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MM_HOME", str(folder / "home"))
        env.setenv("HF_ENDPOINT", hub.url)
        env.setenv("HF_TOKEN", VALID_TOKEN)
        env.setenv("HF_TOKEN_PATH", str(folder / "hf" / "token"))
        own = folder / FILE
        shutil.copyfile(tiny_model, own)
        runner = CliRunner()
        for args in (["publish", str(own), "--hardware", "cpu-64g", "--ctx", "256", "--name", PROFILE],
                     ["push", PROFILE, "--repo", REPO]):  # fmt: skip
            result = runner.invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
    state = hub.repos[REPO]
    yield dict(state.commits[state.refs["main"]])
    hub.stop()


def arrange(
    surface: str, attack: str, hub: LocalHub, published: dict[str, bytes], model: Path, env: pytest.MonkeyPatch
) -> list[str]:
    """Serve what `surface` reads (with an unsafe name in it for the file-name attack); return its command."""
    unsafe = attack == "file name"
    extra = {UNSAFE: b"GGUF"} if unsafe and surface in LISTING else {}
    typed = f"../../{FILE}" if unsafe else FILE
    text = f"{TEXTS}:{'../../w.txt' if unsafe else 'wiki.txt'}"
    if surface in ("pull", "fit"):
        hub.add_repo(REPO, {FILE: model.read_bytes(), **extra})
        if surface == "fit":
            return ["fit", f"{REPO}:{typed}", "--vram", "0", "--ram", "8G"]
        return ["pull", REPO] if unsafe else ["pull", f"{REPO}:{FILE}"]
    if surface in ("eval --text", "imatrix --text"):
        hub.add_repo(f"datasets/{TEXTS}", {"wiki.txt": b"It was the best of times.\n" * 50})
        if surface == "eval --text":
            return ["eval", str(model), "--ref", str(model), "--text", text]
        return ["imatrix", str(model), "--text", text]
    if surface == "convert":
        config = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
        hub.add_repo(SAFETENSORS_REPO, {"config.json": config, "model.safetensors": b"\0" * 64, **extra})
        return ["convert", SAFETENSORS_REPO]
    files = dict(published)
    if unsafe and surface == "pull --profile":
        document = json.loads(files[f"profiles/{PROFILE}.json"])
        files[f"profiles/{PROFILE}.json"] = json.dumps({**document, "file": UNSAFE}).encode()
    hub.add_repo(REPO, {**files, **extra})
    if surface == "push":
        _install_locally(published, model, env)
        return ["push", PROFILE, "--repo", REPO]
    if surface == "pull --list-profiles":
        return ["pull", REPO, "--list-profiles"]
    return ["pull", REPO, "--profile", PROFILE, "--hardware", "cpu-64g"]


def _install_locally(published: dict[str, bytes], model: Path, env: pytest.MonkeyPatch) -> None:
    """The pusher's own registry holds the profile (installed from the repo's document, no Hub involved)."""
    from pipeline.registry.repo_profile import RepoProfile
    from pipeline.registry.store import install

    document = RepoProfile.model_validate_json(published[f"profiles/{PROFILE}.json"])
    install(document.profile, model)
    env.setenv("HF_TOKEN", VALID_TOKEN)


def attack_with(attack: str, hub: LocalHub) -> None:
    hostile = hub.hostile
    if attack == "etag":
        hostile.etag = "../../../../victim"  # from the repo's blobs/ folder: the victim beside MM_HOME
    elif attack == "commit traversal":
        hostile.commit = "../../../../elsewhere"  # from snapshots/: the folder beside MM_HOME
    elif attack == "commit non-hex":
        hostile.commit = "Z" * 40
    elif attack == "commit mismatch":
        hostile.file_commit = "f" * 40
    elif attack == "404 traversal commit":
        hostile.gone, hostile.file_commit = True, "../../../../elsewhere"
    elif attack == "size":
        hostile.size = 1 << 62


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("surface", SURFACES)
def test_a_hostile_hub_gets_one_clear_refusal_and_changes_nothing_outside_mm_home(
    mm: Mm,
    local_hub: LocalHub,
    published: dict[str, bytes],
    tiny_model: Path,
    tmp_path: Path,
    isolated_env: Path,
    around: Callable[[], dict[str, tuple[int, int, str]]],  # noqa: F811  (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
    surface: str,
    attack: str,
) -> None:
    model = tmp_path / "elsewhere" / FILE  # the local model the text commands read (and push's blob source)
    shutil.copyfile(tiny_model, model)
    args = arrange(surface, attack, local_hub, published, model, monkeypatch)
    attack_with(attack, local_hub)
    before = around()
    code, words = expected(surface, attack)
    refused(mm(*args), code, *words)
    assert around() == before
    assert local_hub.uploads.commits == [] and local_hub.uploads.puts == []
    if surface in TYPED and attack == "file name":
        assert not local_hub.requests
