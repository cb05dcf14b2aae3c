"""Profiles published in a Hub repo: list them, and install one into the local registry (`mm pull --profile`).

Installing reads the document (1 MiB at most, its inner name must be the one asked for), downloads the
GGUF it names (resumable, verified against the Hub's sha256 and pinned to the profile's), fits the
recorded settings to this machine or a named class — which reads the file as a GGUF — and only then
stores the blob and writes the profile, so a failed install registers nothing. A local profile of that
name with other content is replaced only with `force`. A placement that does not fit here is a warning,
not an error: the profile may be meant for another machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import EntryNotFoundError, ProfileNotFoundError, RegistryError, UsageError
from pipeline.base.units import format_size
from pipeline.fitting.fit import Verdict
from pipeline.gguf.header import read_header
from pipeline.hub import api as hub
from pipeline.hub.download import pull
from pipeline.hub.read import read_small_file
from pipeline.hub.transfer import ProgressFactory
from pipeline.registry.profile import Profile, check_model, check_name
from pipeline.registry.repo_profile import PROFILES_FOLDER, RepoProfile, profile_file
from pipeline.registry.store import get_profile, install
from pipeline.spec.hardware import HardwareClass

log = logging.getLogger(__name__)


class PlacementCheck(BaseModel):
    """The published settings (layers on GPU included) fitted to the hardware this pull is for."""

    hardware: str
    verdict: Verdict
    n_gpu_layers: int
    vram_bytes: int
    ram_bytes: int
    tokens_per_second: float
    fits: bool


class InstallReport(BaseModel):
    repo: str
    revision: str
    commit: str
    file: str
    profile: Profile
    check: PlacementCheck
    warning: str | None = None


def list_repo_profiles(repo: str, revision: str = DEFAULT_REVISION, *, token: str | None = None) -> list[RepoProfile]:
    """Every profile document the repo offers at `revision` (unreadable ones are logged and left out)."""
    commit = hub.resolve_commit(repo, revision, token=token)
    found = []
    for entry in hub.list_repo_files(repo, commit, token=token):
        if entry.path.startswith(f"{PROFILES_FOLDER}/") and entry.path.endswith(".json"):
            try:
                document = RepoProfile.model_validate_json(read_small_file(repo, entry.path, commit, token=token))
            except ValidationError as exc:
                log.warning("%s: %s is not a profile this mm reads (%d problems)", repo, entry.path, exc.error_count())
                continue
            if profile_file(document.profile.name) == entry.path:
                found.append(document)
            else:
                log.warning("%s: %s names itself %r; left out", repo, entry.path, document.profile.name)
    return sorted(found, key=lambda d: d.profile.name)


def read_repo_profile(repo: str, name: str, commit: str, *, token: str | None = None) -> RepoProfile:
    """`profiles/<name>.json` at `commit`; a document that calls itself anything but `name` is refused."""
    try:
        data = read_small_file(repo, profile_file(name), commit, token=token)
    except EntryNotFoundError:
        offered = [d.profile.name for d in list_repo_profiles(repo, commit, token=token)]
        raise ProfileNotFoundError(
            f"{repo} has no profile {name!r}" + (f"; it offers: {', '.join(offered)}" if offered else ""),
            name=name,
            hint=f"`mm pull {repo} --list-profiles` lists them",
        ) from None
    try:
        document = RepoProfile.model_validate_json(data)
    except ValidationError as exc:
        raise RegistryError(
            f"{repo}: {profile_file(name)} is not a profile this mm reads ({exc.error_count()} problems)",
            hint="upgrade mm, or ask the publisher to push it again",
        ) from None
    if document.profile.name != name:
        raise RegistryError(
            f"{repo}: {profile_file(name)} names itself {document.profile.name!r}, not {name!r}; refusing it",
            hint="ask the publisher to push it again with `mm push`",
        )
    return document


def install_profile(
    repo: str,
    name: str,
    hardware: HardwareClass,
    *,
    revision: str = DEFAULT_REVISION,
    token: str | None = None,
    rename: str | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> InstallReport:
    """Pull profile `name` from `repo`: its GGUF (verified), a fit check for `hardware`, then a local profile."""
    local_name = _local_name(name, rename)
    commit = hub.resolve_commit(repo, revision, token=token)
    document = read_repo_profile(repo, name, commit, token=token)
    if not force:
        _check_not_replacing(document.profile, local_name)
    files = pull(
        repo, document.file, commit, token=token, expected_sha256=document.profile.blob.sha256, progress=progress
    )
    check_model(document.profile.run, read_header(files[0].path), document.file, RegistryError)
    check = _check_placement(document.profile, files[0].path, hardware)  # reads it as a GGUF: before installing
    profile = install(document.profile, files[0].path, name=rename)
    warning = _warning(profile, check, hardware, files[0].path)
    if warning:
        log.info("%s: %s", profile.name, warning)
    return InstallReport(
        repo=repo, revision=revision, commit=commit, file=document.file, profile=profile, check=check, warning=warning
    )


def _local_name(name: str, rename: str | None) -> str:
    """The requested and the local name must be profile names before either becomes a path or a repo file."""
    for value in (name, rename):
        if value is not None:
            try:
                check_name(value)
            except ValueError as exc:
                raise UsageError(str(exc), param="profile") from None
    return rename or name


# What an install may differ in from the local copy and still be the same profile: the local paths, commands
# and measurements are this machine's.
_LOCAL_FIELDS = {"name", "blob", "llama_server", "llama_cli", "llama_kwargs", "measured"}


def _check_not_replacing(published: Profile, local_name: str) -> None:
    try:
        existing = get_profile(local_name)
    except RegistryError:  # none yet (or unreadable: `mm verify` reports it; installing makes it whole)
        return
    if existing.blob.sha256 == published.blob.sha256 and existing.model_dump(
        exclude=_LOCAL_FIELDS
    ) == published.model_dump(exclude=_LOCAL_FIELDS):
        return
    raise RegistryError(
        f"a local profile {local_name!r} already exists with other content (blob {existing.blob.sha256[:12]}, "
        f"the repo's is {published.blob.sha256[:12]}); not replacing it",
        hint="install it under another local name, or replace the local one",
        param="force",
    )


def _warning(profile: Profile, check: PlacementCheck, hardware: HardwareClass, model: Path) -> str | None:
    replan = f"re-plan it for this machine with `mm publish {model} --hardware CLASS --name NAME`"
    placed = f"{profile.run.n_gpu_layers} layers on the GPU, ctx {profile.run.n_ctx}"
    if not check.fits:
        return (
            f"the published placement ({placed}, planned for {profile.hardware}) does not fit {hardware.name}: "
            f"it needs {format_size(check.vram_bytes)} VRAM and {format_size(check.ram_bytes)} RAM; {replan}"
        )
    if (profile.run.n_gpu_layers or 0) > 0 and not hardware.has_gpu:
        return f"the profile puts {placed} but {hardware.name} has no GPU: it runs on the CPU here"
    return None


def _check_placement(profile: Profile, model: Path, hardware: HardwareClass) -> PlacementCheck:
    from pipeline.fitting.fit import fit_model

    run = profile.run
    layers, experts = (run.n_gpu_layers, run.n_cpu_moe) if hardware.has_gpu else (0, None)
    result = fit_model(
        model, hardware, run.unplaced().model_copy(update={"n_gpu_layers": layers, "n_cpu_moe": experts})
    )
    return PlacementCheck(
        hardware=hardware.name, verdict=result.verdict, n_gpu_layers=result.n_gpu_layers,
        vram_bytes=result.vram_bytes, ram_bytes=result.ram_bytes, tokens_per_second=result.tokens_per_second,
        fits=result.verdict != "does_not_fit",
    )  # fmt: skip
