"""The MODEL resolver: what a command-line MODEL names (a path, `owner/name:file[@revision]`, a recipe), and
the local file it stands for — the file itself, the pulled Hub file, or a sparse header stub.

Every command and stage that takes a MODEL goes through here, so each kind of argument is read one way
and each failure has one message. Never downloads weights (`pull` does; stubs hold headers only). The Hub
client and the HTTP stack load only when a Hub file is asked for, so a command given a local file starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import RecipeError, UsageError
from pipeline.base.safe_names import COMMIT_RE, REPO_ID_RE, check_user_ref
from pipeline.base.shards import shard_names
from pipeline.resolve.hub_ref import HubRef, match_hub_ref

if TYPE_CHECKING:  # recipes and hardware classes load when a MODEL names a recipe or a class is planned for
    from pipeline.spec.hardware import HardwareClass
    from pipeline.spec.recipe import Recipe

EXPECTED = "expected a .gguf path, owner/name:FILE.gguf[@revision], or a recipe name"


@dataclass(frozen=True)
class ModelArg:
    """What the user named: exactly one of a local path, a Hub file, or a recipe."""

    path: Path | None = None
    hub: HubRef | None = None
    recipe: Recipe | None = None


def _model_repo(ref: HubRef, text: str) -> HubRef:
    """A MODEL names a model repo (and no zip member: those are for texts)."""
    if ref.repo_type != "model" or ref.member is not None:
        what = f"a {ref.repo_type} repo" if ref.repo_type != "model" else "a member of a zip"
        raise UsageError(f"{text} names {what}; a MODEL is a .gguf file of a model repo")
    return ref


def parse_model_arg(text: str, recipes_folder: Path | None = None) -> ModelArg:
    """Classify MODEL: an existing file wins, then `owner/name:file`, then a recipe name or path."""
    candidate = Path(text).expanduser()
    if candidate.is_file() and candidate.suffix != ".toml":
        return ModelArg(path=candidate)
    hub = match_hub_ref(text)
    if hub is not None and hub.file is not None:
        return ModelArg(hub=_model_repo(hub, text))
    if candidate.is_dir():
        raise UsageError(
            f"{text} is a folder, not a model: {EXPECTED}",
            hint="name a .gguf file inside it; a safetensors checkpoint folder goes through `mm convert DIR` first",
        )
    from pipeline.spec.recipe import find_recipe, load_recipe, looks_like_recipe

    if looks_like_recipe(text):
        try:
            return ModelArg(recipe=load_recipe(find_recipe(text, recipes_folder)))
        except RecipeError as error:
            if "." not in candidate.name or candidate.suffix == ".toml" or not error.message.startswith("no recipe"):
                raise
            raise UsageError(f"{text}: no such file (and no recipe of that name): {EXPECTED}") from None
    if text.endswith(".gguf") or (candidate.parent != Path(".") and candidate.parent.is_dir()):
        raise UsageError(f"{text}: no such file: {EXPECTED}")
    raise UsageError(f"{text!r} is not a model: {EXPECTED}")


def recipe_hub_ref(recipe: Recipe) -> HubRef | None:
    """The Hub file a recipe's source names, or None for a local source."""
    source = recipe.source
    if source.repo is None or source.file is None:
        return None
    return HubRef(source.repo, source.file, source.revision)


def recipe_source_path(recipe: Recipe, *, must_exist: bool = True) -> Path:
    """A local recipe source's file, resolved against the recipe's folder."""
    _not_safetensors(recipe)
    if recipe.source.path is None:
        raise UsageError(f"{recipe.path}: source: needs repo + file, or path")
    path = recipe.resolve(recipe.source.path.expanduser()).resolve()
    if must_exist and not path.is_file():
        raise UsageError(f"{recipe.path}: source.path: no such file: {path}")
    return path


def _not_safetensors(recipe: Recipe) -> None:
    """A safetensors source has no GGUF until the build converts it: commands given the recipe say so."""
    if recipe.source.is_safetensors:
        raise UsageError(
            f"recipe {recipe.name} converts its source from safetensors: `mm build {recipe.name}` makes the GGUF",
            hint="or `mm convert REPO|DIR`, then give the converted .gguf",
        )


def cached_hub_file(ref: HubRef) -> Path | None:
    """The first shard of a pulled Hub file from the Hub cache (no network), if every shard is there.

    Read through hub/cache.py, which accepts only a 40-hex commit from a ref file and keeps every path
    inside the cache (huggingface_hub's try_to_load_from_cache joins whatever the ref holds)."""
    from pipeline.hub import cache as hub_cache

    commit = ref.revision if COMMIT_RE.match(ref.revision) else hub_cache.cached_commit(ref.repo, ref.revision)
    if commit is None:
        return None
    paths = [hub_cache.snapshot_path(ref.repo, commit, name) for name in shard_names(ref.filename)]
    return paths[0] if all(path.is_file() for path in paths) else None


def pulled_hub_file(ref: HubRef) -> Path:
    """The first shard of a pulled Hub file; not pulled is a usage error that says how to pull it."""
    path = cached_hub_file(ref)
    if path is None:
        raise UsageError(f"{ref} is not pulled yet", hint=f"run `mm pull {ref}` first")
    return path


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
        ref = recipe_hub_ref(arg.recipe)
        if ref is None:
            return recipe_source_path(arg.recipe), False
        pin = arg.recipe.source.sha256
        return _hub_file(ref, token=token, offline=offline, allow_header_stub=allow_header_stub, pin=pin)
    raise UsageError(f"no model given: {EXPECTED}")


def _hub_file(
    ref: HubRef, *, token: str | None, offline: bool, allow_header_stub: bool, pin: str | None = None
) -> tuple[Path, bool]:
    check_user_ref(ref.repo, ref.filename, ref.revision)
    pulled = cached_hub_file(ref)
    if pulled is not None:
        return pulled, False
    if not allow_header_stub:
        return pulled_hub_file(ref), False  # raises: not pulled
    from pipeline.hub.remote_header import header_stub  # the HTTP stack only when a header must be fetched

    stubs = header_stub(ref.repo, ref.filename, ref.revision, token=token, offline=offline, expected_sha256=pin)
    return stubs[0], True


class ResolvedModel(NamedTuple):
    path: Path  # the first shard; a sparse header stub when is_stub
    recipe: Recipe | None
    is_stub: bool


def resolve_model(
    text: str,
    recipes: Path | None = None,
    *,
    token: str | None = None,
    offline: bool = False,
    allow_header_stub: bool = False,
) -> ResolvedModel:
    """MODEL → a local GGUF path (and the recipe, when one was named). Never downloads weights.

    With allow_header_stub (commands that read only the header: inspect, fit), a Hub file that was not
    pulled is answered from its GGUF header, fetched with Range requests into a sparse stub.
    """
    if allow_header_stub and REPO_ID_RE.match(text) and not Path(text).expanduser().exists():
        raise _name_a_file(text, token=token, offline=offline)
    arg = parse_model_arg(text, recipes)
    path, is_stub = local_model_file(arg, token=token, offline=offline, allow_header_stub=allow_header_stub)
    return ResolvedModel(path, arg.recipe, is_stub)


def _name_a_file(repo: str, *, token: str | None, offline: bool) -> UsageError:
    """A repository where a file was needed: the error lists its GGUF files, as `mm pull REPO` does."""
    message = f"{repo} is a repository; name one of its files as {repo}:FILE.gguf"
    if offline:
        return UsageError(message)
    from pipeline.hub.api import describe_gguf_files, list_gguf_files

    return UsageError(f"{message}; {describe_gguf_files(list_gguf_files(repo, token=token))}")


@dataclass(frozen=True)
class PullTarget:
    """What `mm pull MODEL` names: a repo, maybe a file (else the user chooses), a revision, maybe a pin."""

    repo: str
    filename: str | None = None
    revision: str = DEFAULT_REVISION
    sha256: str | None = None


def pull_target(
    model: str, *, filename: str | None = None, revision: str | None = None, recipes_folder: Path | None = None
) -> PullTarget:
    """Classify MODEL for a pull: `owner/name[:FILE][@rev]` or its URL (+ a file name), or a recipe."""
    ref = match_hub_ref(model)
    if ref is not None:
        _model_repo(ref, model)
        if filename is not None and ref.file is not None:
            raise UsageError(
                f"{model} already names a file; drop the other file, or write just {ref.repo}", param="file"
            )
        if revision is not None and ref.revision_named:
            raise UsageError(
                f"{model} already names a revision; drop the other one, or the @{ref.revision}", param="revision"
            )
        return PullTarget(repo=ref.repo, filename=ref.file or filename, revision=revision or ref.revision)
    from pipeline.spec.recipe import find_recipe, load_recipe, looks_like_recipe

    if looks_like_recipe(model):
        recipe = load_recipe(find_recipe(model, recipes_folder))
        _not_safetensors(recipe)
        source = recipe.source
        if source.repo is None or source.file is None:
            raise UsageError(f"recipe {recipe.name} has a local source ({source.path}); there is nothing to pull")
        if filename is not None:
            raise UsageError(f"recipe {recipe.name} already names its file; drop the other file", param="file")
        return PullTarget(
            repo=source.repo, filename=source.file, revision=revision or source.revision, sha256=source.sha256
        )
    raise UsageError(
        f"{model!r} is not something to pull: expected owner/name:FILE.gguf, owner/name with a FILE.gguf, "
        "or a recipe name or path"
    )


def hardware_file(recipe: Recipe | None, recipes: Path | None = None) -> Path:
    """The hardware catalog that goes with a recipe (beside it), else the recipes folder's."""
    from pipeline.spec.hardware import HARDWARE_FILE
    from pipeline.spec.recipe import recipes_dir

    folder = recipe.path.parent if recipe and recipe.path else (recipes or recipes_dir())
    return folder / HARDWARE_FILE


def recipe_hardware(recipe: Recipe) -> HardwareClass:
    """The hardware class a recipe targets, from the catalog beside it."""
    from pipeline.spec.hardware import get_hardware

    return get_hardware(recipe.hardware, hardware_file(recipe))


def target_hardware(
    name: str | None, vram_bytes: int | None, ram_bytes: int | None, recipe: Recipe | None = None,
    recipes: Path | None = None,
) -> HardwareClass:  # fmt: skip
    """The class to plan for: the one named, else the recipe's, else this machine; vram/ram sizes override."""
    from pipeline.probe.local_machine import local_class
    from pipeline.spec.hardware import get_hardware

    if name or recipe:
        base = get_hardware(name or (recipe.hardware if recipe else ""), hardware_file(recipe, recipes))
    else:
        base = local_class()
    return base.with_sizes(vram_bytes, ram_bytes)
