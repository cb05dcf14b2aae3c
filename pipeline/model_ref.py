"""Turn a MODEL argument (a path, `owner/name:file[@revision]`, or a recipe) into local GGUF file(s)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from pipeline.errors import UsageError
from pipeline.home import mm_home
from pipeline.recipe import Recipe, find_recipe, load_recipe, looks_like_recipe
from pipeline.safe_names import UnsafeValue, check_repo_filename, check_revision

HUB_REF_RE = re.compile(r"^(?P<repo>[^/:@\s]+/[^/:@\s]+):(?P<file>[^@\s]+\.gguf)(?:@(?P<revision>[^\s]+))?$")
SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class HubRef:
    repo: str
    file: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.repo}:{self.file}" + ("" if self.revision == "main" else f"@{self.revision}")


@dataclass(frozen=True)
class ModelArg:
    """What the user named: exactly one of a local path, a Hub file, or a recipe."""

    path: Path | None = None
    hub: HubRef | None = None
    recipe: Recipe | None = None


def parse_hub_ref(text: str) -> HubRef | None:
    match = HUB_REF_RE.match(text)
    if not match:
        return None
    return HubRef(match["repo"], match["file"], match["revision"] or "main")


def shard_names(filename: str) -> list[str]:
    """All shard names of a split GGUF given any one of them (`x-00001-of-00003.gguf`), else [filename]."""
    match = SHARD_RE.match(filename)
    if not match:
        return [filename]
    count = int(match["count"])
    return [f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def shard_paths(path: Path) -> list[Path]:
    """Every shard's path beside `path` (any one shard of a split GGUF), or just [path] for one file."""
    names = shard_names(path.name)
    return [path.with_name(name) for name in names] if len(names) > 1 else [path]


def check_user_ref(repo: str, filename: str | None, revision: str) -> None:
    """A file name and revision typed by the user or a recipe: the rules a Hub's own obey (UsageError)."""
    try:
        check_revision(revision)
        if filename is not None:
            check_repo_filename(filename)
    except UnsafeValue as exc:
        raise UsageError(f"{repo}: {exc}") from None


def parse_model_arg(text: str, recipes_folder: Path | None = None) -> ModelArg:
    """Classify MODEL: an existing file wins, then `owner/name:file`, then a recipe name or path."""
    candidate = Path(text).expanduser()
    if candidate.is_file() and candidate.suffix != ".toml":
        return ModelArg(path=candidate)
    hub = parse_hub_ref(text)
    if hub is not None:
        return ModelArg(hub=hub)
    if looks_like_recipe(text):
        return ModelArg(recipe=load_recipe(find_recipe(text, recipes_folder)))
    if text.endswith(".gguf"):
        raise UsageError(f"{text}: no such file")
    raise UsageError(
        f"{text!r} is not a model: expected a .gguf path, owner/name:FILE.gguf[@revision], or a recipe name"
    )


def cached_hub_file(ref: HubRef) -> Path | None:
    """The first shard of a pulled Hub file from the Hub cache (no network), if every shard is there."""
    paths = []
    for name in shard_names(ref.file):
        found = try_to_load_from_cache(ref.repo, name, cache_dir=mm_home().hub, revision=ref.revision)
        if not isinstance(found, str):
            return None
        paths.append(Path(found))
    return paths[0]


def local_model_file(
    arg: ModelArg, *, token: str | None = None, offline: bool = False, allow_header_stub: bool = False
) -> tuple[Path, bool]:
    """(first-shard path, is_stub) for MODEL: a local path as is; a Hub file from the cache if pulled, else
    — with allow_header_stub, for commands that read only the header — a sparse stub holding its header."""
    if arg.path is not None:
        return arg.path, False
    if arg.hub is not None:
        return _hub_file(arg.hub, token=token, offline=offline, allow_header_stub=allow_header_stub)
    if arg.recipe is not None:
        source = arg.recipe.source
        if source.path is not None:
            path = arg.recipe.resolve(source.path)
            if not path.is_file():
                raise UsageError(f"recipe {arg.recipe.name}: source.path {path} does not exist")
            return path, False
        if source.repo is not None and source.file is not None:
            ref = HubRef(source.repo, source.file, source.revision)
            return _hub_file(ref, token=token, offline=offline, allow_header_stub=allow_header_stub, pin=source.sha256)
    raise UsageError("no model given: expected a .gguf path, owner/name:FILE.gguf[@revision], or a recipe")


def _hub_file(
    ref: HubRef, *, token: str | None, offline: bool, allow_header_stub: bool, pin: str | None = None
) -> tuple[Path, bool]:
    check_user_ref(ref.repo, ref.file, ref.revision)
    pulled = cached_hub_file(ref)
    if pulled is not None:
        return pulled, False
    if not allow_header_stub:
        raise UsageError(f"{ref} is not pulled yet: run `mm pull {ref}`")
    from pipeline.remote_header import header_stub  # late: remote_header → gguf_header imports this module

    stubs = header_stub(ref.repo, ref.file, ref.revision, token=token, offline=offline, expected_sha256=pin)
    return stubs[0], True
