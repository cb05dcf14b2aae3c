"""`mm push`: publish registry profiles to a Hub repo — each GGUF once, by content; the profiles; the card.

Resumable and safe beside other pushers by the order of work. Each attempt reads the branch head and
its files, sends only what the repo lacks (LFS objects the Hub already stores are not sent again, so a
push killed mid-upload resumes file by file), and commits against the head it read. When another
pusher committed first (a conflict), it reads again — now with the other pusher's profiles — renders
the card again and retries, at most MAX_ATTEMPTS times. Nothing local changes, so a failed push leaves
only LFS objects on the Hub that the next push reuses. It replaces or deletes only files mm's manifest
in the repo says it wrote, unchanged since (repo_manifest.py); a person's text in README.md is kept.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import HubError, UsageError
from pipeline.base.safe_names import UnsafeValue, check_repo_id
from pipeline.hub.api import endpoint
from pipeline.hub.read import MAX_DOCUMENT_BYTES, read_small_file
from pipeline.hub.upload import CommitConflict, RepoState, Upload, commit, ensure_repo, read_state, write_token
from pipeline.registry.blobs import check_blob
from pipeline.registry.model_card import render_card
from pipeline.registry.repo_manifest import MANIFEST, Manifest, Written, check_replaceable, read_manifest, written_bytes
from pipeline.registry.repo_profile import PROFILES_FOLDER, RepoProfile, for_repo, profile_file
from pipeline.registry.store import get_profile
from pipeline.spec.hardware import HARDWARE_FILE, HardwareClass, hardware_catalog
from pipeline.spec.recipe import recipes_dir

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
README = "README.md"
# The Hub refuses single files over 50 GB (huggingface.co/docs/hub/storage-limits); a larger GGUF
# would have to be split (llama-gguf-split), and the registry does not publish split models yet.
MAX_FILE_BYTES = 50 * 1000**3


class PushReport(BaseModel):
    repo: str
    revision: str
    url: str
    commit: str | None  # the commit this push made; None when the repo already had everything
    profiles: list[str]
    uploaded: list[str]  # paths written by this push's commit
    unchanged: list[str]  # paths the repo already had with the same bytes
    deleted: list[str]  # GGUFs no profile names any more (replaced by a new build of the same profile)
    attempts: int
    conflicts: int


@dataclass(frozen=True)
class _Local:
    blob: Path
    document: RepoProfile
    json: bytes


def target_repo(repo: str, what: str = "repository", param: str = "repo") -> str:
    """The repo to push to or install from, by the Hub's own rules (safe_names.check_repo_id)."""
    try:
        return check_repo_id(repo)
    except UnsafeValue as exc:
        raise UsageError(
            f"{what}: {exc}", hint="expected OWNER/NAME, e.g. my-org/Llama-3-8B-GGUF", param=param
        ) from None


def push(
    names: Sequence[str],
    repo: str,
    *,
    revision: str = DEFAULT_REVISION,
    private: bool = False,
    token: str | None = None,
    classes: Sequence[HardwareClass] | None = None,
) -> PushReport:
    """Push these profiles (and their GGUFs) to `repo`@`revision`, creating the repo when needed."""
    target_repo(repo)
    if not names:
        raise UsageError("name at least one profile to push (`mm ls` lists them)")
    token = write_token(token)
    catalog = list(classes) if classes is not None else list(hardware_catalog(recipes_dir() / HARDWARE_FILE).values())
    local = [_prepare(name, catalog) for name in dict.fromkeys(names)]
    ensure_repo(repo, revision=revision, private=private, token=token)
    cache: dict[tuple[str, str], RepoProfile | None] = {}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        state = read_state(repo, revision, token)
        try:
            return _attempt(state, local, token, cache, attempt)
        except CommitConflict:
            log.info("%s@%s moved while pushing (attempt %d); reading it again", repo, revision, attempt)
            time.sleep(random.uniform(0.05, 0.2 * attempt))
    raise HubError(
        f"{repo}@{revision}: gave up after {MAX_ATTEMPTS} attempts; other pushers kept committing first",
        hint="run the push again; everything already uploaded is reused",
    )


def _prepare(name: str, classes: list[HardwareClass]) -> _Local:
    profile = get_profile(name)
    blob = check_blob(profile)
    if profile.blob.size_bytes > MAX_FILE_BYTES:
        raise UsageError(
            f"profile {name!r}: its GGUF is {profile.blob.size_bytes} bytes, over the Hub's 50 GB per-file limit",
            hint="push a smaller quant; mm cannot publish split models yet (llama-gguf-split makes the shards)",
        )
    document = for_repo(profile, blob, classes)
    return _Local(blob=blob, document=document, json=(document.model_dump_json(indent=2) + "\n").encode())


def _attempt(
    state: RepoState,
    local: list[_Local],
    token: str,
    cache: dict[tuple[str, str], RepoProfile | None],
    attempt: int,
) -> PushReport:
    manifest = read_manifest(state, token)
    owned = dict(manifest.files)
    uploads: list[Upload] = []
    unchanged: list[str] = []

    def write(path: str, content: Path | bytes, same: bool, written: Written, sha256: str | None = None) -> None:
        if same:
            unchanged.append(path)
        else:
            if path != README:  # the card is merged: a person's text in it is kept, byte for byte
                check_replaceable(state, manifest, path)
            uploads.append(Upload(path, content, sha256))
        owned[path] = written

    for item in local:
        blob = item.document.profile.blob
        write(item.document.file, item.blob, state.has(item.document.file, blob.sha256),
              Written(sha256=blob.sha256, size_bytes=blob.size_bytes), blob.sha256)  # fmt: skip
        path = profile_file(item.document.profile.name)
        write(path, item.json, state.has_bytes(path, item.json), written_bytes(item.json))
        if state.has_bytes(path, item.json):
            cache[(path, state.files[path].blob_id)] = item.document  # the repo holds our bytes: no download
    ours = {item.document.profile.name: item.document for item in local}
    remote = _remote_profiles(state, token, cache)
    merged = {**{r.profile.name: r for r in remote}, **ours}
    named = {p.file for p in merged.values()}
    replaced = {r.file for r in remote if r.profile.name in ours} - named
    deleted = sorted(p for p in replaced if p.endswith(".gguf") and manifest.owns(state, p))
    for path in deleted:
        owned.pop(path, None)
    card = _card(state, merged, token)
    if card is not None:
        write(README, card, state.has_bytes(README, card), written_bytes(card))
    listing = Manifest(files=owned).render()
    if state.has_bytes(MANIFEST, listing):
        unchanged.append(MANIFEST)
    else:
        uploads.append(Upload(MANIFEST, listing))
    made = None
    if uploads or deleted:
        message = "mm push: " + ", ".join(sorted(ours))
        made = commit(state, uploads, deleted, message=message, token=token)
    return PushReport(
        repo=state.repo,
        revision=state.revision,
        url=f"{endpoint()}/{state.repo}" + ("" if state.revision == DEFAULT_REVISION else f"/tree/{state.revision}"),
        commit=made,
        profiles=sorted(ours),
        uploaded=[u.path_in_repo for u in uploads],
        unchanged=unchanged,
        deleted=deleted,
        attempts=attempt,
        conflicts=attempt - 1,
    )


def _card(state: RepoState, merged: dict[str, RepoProfile], token: str) -> bytes | None:
    """The model card, with a person's text around mm's block kept; None leaves a README that is not UTF-8
    (the Hub and huggingface_hub take only UTF-8 cards) or over the document cap as it is: not mm's to rewrite."""
    card = render_card(state.repo, merged.values()).encode()
    if README in state.files and not state.has_bytes(README, card):  # someone else's rows, or a person's text
        if state.files[README].size > MAX_DOCUMENT_BYTES:
            log.warning("%s: %s is larger than mm merges a card into; left as it is (the card was not updated)",
                        state.repo, README)  # fmt: skip
            return None
        try:
            previous = read_small_file(state.repo, README, state.head, token=token).decode()
        except UnicodeDecodeError:
            log.warning("%s: %s is not UTF-8 text; left as it is (the model card was not updated)", state.repo, README)
            return None
        card = render_card(state.repo, merged.values(), previous).encode()
    return card


def _remote_profiles(
    state: RepoState, token: str, cache: dict[tuple[str, str], RepoProfile | None]
) -> list[RepoProfile]:
    """Every profile document in the repo (read once per content across attempts); broken ones are skipped,
    and so is one whose inner name is not its file's (`profiles/other.json` claiming to be `victim`)."""
    found = []
    for path, entry in sorted(state.files.items()):
        if not (path.startswith(f"{PROFILES_FOLDER}/") and path.endswith(".json")):
            continue
        key = (path, entry.blob_id)
        if key not in cache:
            cache[key] = _read_remote_profile(state, path, token)
        if (document := cache[key]) is not None:
            found.append(document)
    return found


def _read_remote_profile(state: RepoState, path: str, token: str) -> RepoProfile | None:
    try:
        document = RepoProfile.model_validate_json(read_small_file(state.repo, path, state.head, token=token))
    except ValidationError as exc:
        log.warning("%s: %s is not a profile mm can read (%d problems); left out of the card",
                    state.repo, path, exc.error_count())  # fmt: skip
        return None
    if profile_file(document.profile.name) != path:
        log.warning("%s: %s names itself %r; left out of the card", state.repo, path, document.profile.name)
        return None
    return document
