"""The huggingface_hub edge: endpoint, token and offline settings, metadata calls, and their errors as mm's."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._headers import build_hf_headers

from pipeline.base.constants import (
    DEFAULT_REVISION,
    HF_ENDPOINT_ENV,
    HF_OFFLINE_ENV,
    HUB_DEADLINE_ENV,
    HUB_TIMEOUT_ENV,
    env_flag,
    env_value,
)
from pipeline.base.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubConnectionError,
    HubError,
    OfflineError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UsageError,
)
from pipeline.base.safe_names import COMMIT_RE, UnsafeValue, check_commit, check_etag, check_repo_filename
from pipeline.base.units import format_size
from pipeline.hub import session
from pipeline.hub.cache import RepoType, cached_commit

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_LISTED_ENTRIES = 200_000  # the biggest model repos hold a few thousand files
MAX_FILE_BYTES = 1 << 50  # 1 PiB: more than any one file on the Hub (LFS files are capped far below)
TOKEN_HINT = "accept the license on the model's page on the Hub, then give a token (HF_TOKEN, or `hf auth login`)"


def endpoint() -> str:
    """HF_ENDPOINT read on each call: huggingface_hub reads it once at import, tests and mirrors set it later."""
    return (env_value(HF_ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


session.install(endpoint)  # every request huggingface_hub or mm makes is bounded and keeps the token home


def offline_mode(offline: bool = False) -> bool:
    """--offline, or HF_HUB_OFFLINE=1 read now (huggingface_hub also freezes this one at import)."""
    return offline or env_flag(HF_OFFLINE_ENV)


def is_commit(revision: str) -> bool:
    return bool(COMMIT_RE.match(revision))


def auth_headers(token: str | None) -> dict[str, str]:
    """huggingface_hub's own headers (user agent, and the token from --token, HF_TOKEN or the saved login)."""
    return dict(build_hf_headers(token=token))


def headers_for(url: str, token: str | None) -> dict[str, str]:
    """Headers for GETting a file's bytes: the token goes only to the Hub's own host, never to a CDN."""
    headers = auth_headers(token)
    if urlsplit(url).netloc != urlsplit(endpoint()).netloc:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return headers


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the Hub describes it."""

    url: str  # where to GET the bytes (after the Hub's redirects, if any)
    commit: str
    etag: str  # the LFS sha256 for LFS files, the git blob sha1 otherwise
    size_bytes: int

    @property
    def sha256(self) -> str | None:
        return self.etag if SHA256_RE.match(self.etag) else None


def resolve_commit(
    repo: str, revision: str = DEFAULT_REVISION, *, token: str | None = None, offline: bool = False,
    repo_type: RepoType = "model",
) -> str:  # fmt: skip
    """The 40-hex commit a branch or tag points at now; a commit is returned as is, with no request."""
    if is_commit(revision):
        return revision
    if offline_mode(offline):
        commit = cached_commit(repo, revision, repo_type)
        if commit is None:
            raise OfflineError(
                f"{repo}@{revision} is not in the local cache and offline mode is on",
                hint="pull it once online (with HF_HUB_OFFLINE unset)",
                param="offline",
            )
        return commit
    with translate_errors(repo, revision):
        info = HfApi(endpoint=endpoint()).repo_info(repo, revision=revision, token=token, repo_type=repo_type)
    if not info.sha:
        raise HubError(f"{endpoint()} did not report a commit for {repo}@{revision}; is HF_ENDPOINT a Hub?")
    return untrusted(check_commit, info.sha, f"{repo}@{revision}")


def untrusted(check: Callable[[str], str], value: str, where: str) -> str:
    """A value the server sent, checked before it becomes a path; a bad one is the server's fault (HubError)."""
    try:
        return check(value)
    except UnsafeValue as exc:
        raise HubError(
            f"{endpoint()} sent an invalid value for {where}: {exc}; refusing it (nothing was written)",
            hint="a real Hugging Face Hub never does this: check HF_ENDPOINT, the mirror or the proxy",
        ) from None


def list_repo_files(repo: str, revision: str = DEFAULT_REVISION, *, token: str | None = None) -> list[RepoFile]:
    """Every file of the repo at `revision`, with sizes and LFS sha256s (the tree API)."""
    with translate_errors(repo, revision):
        entries = HfApi(endpoint=endpoint()).list_repo_tree(repo, revision=revision, recursive=True, token=token)
        files = []
        for count, entry in enumerate(entries):  # pages follow the server's Link headers: bound them
            if count >= MAX_LISTED_ENTRIES:
                raise HubError(
                    f"{endpoint()} listed more than {MAX_LISTED_ENTRIES} entries for {repo}@{revision}; refusing",
                    hint="name the file: owner/name:FILE.gguf",
                )
            if isinstance(entry, RepoFile):
                untrusted(check_repo_filename, entry.path, f"a file name in the listing of {repo}@{revision}")
                files.append(entry)
    return files


def list_gguf_files(repo: str, revision: str = DEFAULT_REVISION, *, token: str | None = None) -> list[tuple[str, int]]:
    """(path, size in bytes) of the repo's GGUF files, sorted by path."""
    files = list_repo_files(repo, revision, token=token)
    return sorted((f.path, int(f.size)) for f in files if f.path.endswith(".gguf"))


def describe_gguf_files(files: list[tuple[str, int]]) -> str:
    if not files:
        return "the repository has no .gguf files"
    return "GGUF files there: " + ", ".join(f"{name} ({format_size(size)})" for name, size in files)


def file_metadata(
    repo: str, filename: str, commit: str, *, token: str | None = None, repo_type: RepoType = "model"
) -> RemoteFile:
    """HEAD the file's resolve URL: its LFS sha256 (X-Linked-Etag), size and download location."""
    url = hf_hub_url(repo, filename, revision=commit, endpoint=endpoint(), repo_type=repo_type)
    with translate_errors(repo, commit, filename, token=token):
        meta = get_hf_file_metadata(url, token=token)
    if meta.etag is None or meta.size is None:
        raise HubError(f"{url}: the server sent no ETag or size; is HF_ENDPOINT a Hugging Face Hub?")
    where = f"{repo}@{commit}:{filename}"
    reported = untrusted(check_commit, meta.commit_hash, f"the commit of {where}") if meta.commit_hash else commit
    if reported != commit and is_commit(commit):
        raise HubError(
            f"{endpoint()} answered for commit {reported} when asked for {where}; refusing it",
            hint="a real Hugging Face Hub never does this: check HF_ENDPOINT, the mirror or the proxy",
        )
    etag = untrusted(check_etag, meta.etag, f"the ETag of {where}")
    if not 0 <= meta.size <= MAX_FILE_BYTES:
        raise HubError(f"{endpoint()} announced an impossible size ({meta.size} bytes) for {where}; refusing it")
    return RemoteFile(url=meta.location, commit=reported, etag=etag, size_bytes=meta.size)


@contextlib.contextmanager
def translate_errors(
    repo: str, revision: str, filename: str | None = None, *, token: str | None = None
) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's exceptions into mm's, each with what to do about it."""
    try:
        yield
    except hf_errors.HFValidationError as exc:  # a repo id or revision the Hub's rules refuse
        raise UsageError(
            f"{repo}: {exc}", hint="a repository id is owner/name, e.g. TheBloke/Llama-2-7B-GGUF"
        ) from None
    except hf_errors.GatedRepoError as exc:
        raise GatedRepoError(
            f"{repo} is gated: access was refused ({status_code(exc)})", hint=TOKEN_HINT, param="token"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"repository {repo} not found on {endpoint()}",
            repo_id=repo,
            hint="check the owner/name spelling; a private repo needs a token (HF_TOKEN, or `hf auth login`)",
            param="token",
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"revision {revision!r} not found in {repo}",
            repo_id=repo,
            revision=revision,
            hint="use a branch, a tag or a full 40-hex commit of the repository",
        ) from None
    except hf_errors.RemoteEntryNotFoundError:
        if filename is None:
            raise HubError(f"{repo}@{revision}: the Hub has no such entry") from None
        raise EntryNotFoundError(
            f"{filename} not found in {repo}@{revision}",
            repo_id=repo,
            filename=filename,
            hint=_listing_hint(repo, revision, token),
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        status = status_code(exc)
        if status in (401, 403):
            raise GatedRepoError(f"{repo}: access refused ({status})", hint=TOKEN_HINT, param="token") from None
        raise HubError(
            f"{repo}: the Hub answered {status} for {revision}" + (f"/{filename}" if filename else "")
        ) from None
    except httpx2.TimeoutException:
        raise HubError(
            f"{endpoint()} did not answer {repo}@{revision} in time (timeout {session.timeout_seconds():.0f} s, "
            f"deadline {session.deadline_seconds():.0f} s per request)",
            hint=f"run again later; on a slow link raise {HUB_TIMEOUT_ENV} or {HUB_DEADLINE_ENV} (seconds)",
        ) from None
    except (httpx2.TransportError, hf_errors.OfflineModeIsEnabled) as exc:
        raise HubConnectionError(
            f"cannot reach {endpoint()} ({type(exc).__name__})",
            hint="check the network or HF_ENDPOINT; or work offline, from the local cache only",
            param="offline",
        ) from None


def status_code(exc: hf_errors.HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _listing_hint(repo: str, revision: str, token: str | None) -> str:
    try:
        return describe_gguf_files(list_gguf_files(repo, revision, token=token))
    except HubError:
        return "list the repository's files on the Hub to find the right name"
