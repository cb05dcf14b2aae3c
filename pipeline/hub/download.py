"""`pull`: bring a Hub GGUF file (every shard of a split one) into the Hub cache, verified by sha256.

Order of work per file: resolve the revision to a commit → already cached and verified? done, no
download → HEAD for the LFS sha256 and size → check the pin and free disk → under a per-blob lock,
download (resuming mm's partial file) while hashing → verify → place blob, snapshot link and ref.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, computed_field

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.digest import cached_sha256, file_sha256, record_sha256
from pipeline.base.disk_space import require_space
from pipeline.base.errors import OfflineError
from pipeline.base.home import locked, mm_home
from pipeline.base.provenance import PIN, PIN_HINT, check_sha256
from pipeline.base.safe_names import check_user_ref
from pipeline.base.shards import shard_names
from pipeline.hub import api as hub
from pipeline.hub import cache as hub_cache
from pipeline.hub.transfer import ProgressFactory, fetch, partial_size

log = logging.getLogger(__name__)


class PulledFile(BaseModel):
    """One verified file in the Hub cache (`path` is its snapshot path, what huggingface_hub returns too)."""

    path: Path
    repo: str
    revision: str
    commit: str
    filename: str
    sha256: str
    size_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def size(self) -> int:
        """The issue's --json name for size_bytes, kept so scripts can rely on either."""
        return self.size_bytes


def pull(
    repo: str,
    filename: str,
    revision: str = DEFAULT_REVISION,
    *,
    token: str | None = None,
    offline: bool = False,
    expected_sha256: str | None = None,
    progress: ProgressFactory | None = None,
    repo_type: hub_cache.RepoType = "model",
) -> list[PulledFile]:
    """Every shard of `filename` at `revision`, downloaded if needed and verified; the first shard first.

    `expected_sha256` pins the first (or only) shard, as a recipe's `sha256` does. With a 40-hex
    `revision` and everything already verified in the cache this makes no request at all.
    """
    check_user_ref(repo, filename, revision)
    names = shard_names(filename)
    commit = hub.resolve_commit(repo, revision, token=token, offline=offline, repo_type=repo_type)
    cached = [_verified_from_cache(repo, revision, commit, name, repo_type) for name in names]
    if all(f is not None for f in cached):
        files = [f for f in cached if f is not None]
        _check_pin(files[0], expected_sha256)
        if not hub.offline_mode(offline):
            hub_cache.write_ref(repo, revision, commit, repo_type)
        return files
    if hub.offline_mode(offline):
        missing = [name for name, f in zip(names, cached, strict=True) if f is None]
        raise OfflineError(
            f"{repo}@{revision}: {', '.join(missing)} not in the local cache and offline mode is on",
            hint="pull it once online (with HF_HUB_OFFLINE unset)",
            param="offline",
        )
    remote = {
        name: hub.file_metadata(repo, name, commit, token=token, repo_type=repo_type)
        for name, found in zip(names, cached, strict=True)
        if found is None
    }
    first = remote.get(names[0])
    if first is not None and first.sha256:  # fail before downloading what the pin refuses
        check_sha256(f"{repo}@{commit[:12]}:{names[0]}", first.sha256, expected_sha256, against=PIN, hint=PIN_HINT)
    _check_disk(list(remote.values()))
    files = [
        found if found is not None else _download(repo, revision, name, remote[name], token, progress, repo_type)
        for name, found in zip(names, cached, strict=True)
    ]
    _check_pin(files[0], expected_sha256)
    hub_cache.write_ref(repo, revision, commit, repo_type)
    return files


def _verified_from_cache(
    repo: str, revision: str, commit: str, filename: str, repo_type: hub_cache.RepoType = "model"
) -> PulledFile | None:
    """The cached snapshot entry if its blob's bytes match its name (hashed once, then remembered)."""
    etag = hub_cache.cached_blob_name(repo, commit, filename, repo_type)
    if etag is None or not hub.SHA256_RE.match(etag):
        return None
    blob = hub_cache.blob_path(repo, etag, repo_type)
    home = mm_home()
    digest = cached_sha256(home, blob)
    if digest is None:
        log.info("verifying cached %s (first time mm sees it)", blob)
        digest = file_sha256(home, blob)
    if digest != etag:
        log.warning("cached blob %s does not match its name (sha256 %s); it will be downloaded again", blob, digest)
        hub_cache.remove_blob(repo, etag, repo_type)
        return None
    return _pulled(repo, revision, commit, filename, etag, blob, repo_type)


def _download(
    repo: str,
    revision: str,
    filename: str,
    remote: hub.RemoteFile,
    token: str | None,
    progress: ProgressFactory | None,
    repo_type: hub_cache.RepoType = "model",
) -> PulledFile:
    """Download one file under its blob's lock, so concurrent pulls of it make one download."""
    home = mm_home()
    with locked(home, f"blob-{remote.etag}"):
        blob = hub_cache.blob_path(repo, remote.etag, repo_type)
        if blob.is_file() and _blob_is_good(blob, remote):
            log.info("%s: already downloaded (by another process or repo)", filename)
        else:
            headers = hub.headers_for(remote.url, token)
            with hub.translate_errors(repo, remote.commit, filename, token=token):
                fetched = fetch(
                    remote.url,
                    etag=remote.etag,
                    size_bytes=remote.size_bytes,
                    headers=headers,
                    label=filename,
                    progress=progress,
                )
            blob = hub_cache.place_blob(fetched.path, repo, remote.etag, repo_type)
            record_sha256(home, blob, fetched.sha256)
        hub_cache.link_snapshot(repo, remote.commit, filename, remote.etag, repo_type)
    return _pulled(repo, revision, remote.commit, filename, remote.etag, blob, repo_type)


def _blob_is_good(blob: Path, remote: hub.RemoteFile) -> bool:
    """A blob already there (e.g. from huggingface_hub) counts only if its bytes match the Hub's sha256."""
    if remote.sha256 is None:
        return False  # a non-LFS file: its git sha1 is checked only while downloading
    if file_sha256(mm_home(), blob) == remote.sha256:
        return True
    log.warning("%s does not match the Hub's sha256; replacing it", blob)
    blob.unlink(missing_ok=True)
    return False


def _pulled(
    repo: str, revision: str, commit: str, filename: str, etag: str, blob: Path,
    repo_type: hub_cache.RepoType = "model",
) -> PulledFile:  # fmt: skip
    sha256 = etag if hub.SHA256_RE.match(etag) else file_sha256(mm_home(), blob)
    return PulledFile(
        path=hub_cache.snapshot_path(repo, commit, filename, repo_type),
        repo=repo,
        revision=revision,
        commit=commit,
        filename=filename,
        sha256=sha256,
        size_bytes=blob.stat().st_size,
    )


def _check_pin(first: PulledFile, expected_sha256: str | None) -> None:
    check_sha256(f"{first.repo}:{first.filename}", first.sha256, expected_sha256, against=PIN, hint=PIN_HINT)


def _check_disk(remote: list[hub.RemoteFile]) -> None:
    """Fail before downloading when the partial area cannot hold what is still to come."""
    if remote:
        needed = sum(max(0, f.size_bytes - partial_size(f.etag)) for f in remote)
        require_space(mm_home().partial, needed, "the download", slack_bytes=0)  # the bytes only: it resumes
