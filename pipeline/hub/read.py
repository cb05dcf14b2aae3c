"""Small repo files (profile documents, model cards, manifests) read into memory through mm's checked path.

The one way mm reads a repo file it does not download as a model: the name is checked, `api.file_metadata`
checks the commit (40-hex, the one asked for), the ETag's shape and the size, a size cap refuses large
documents before a byte of body is read, and the bytes must hash to the ETag before anyone sees them.
Nothing is written to disk, so no server value ever becomes a path (huggingface_hub's `hf_hub_download`
would make its ETag and X-Repo-Commit folders and lock files; tests/test_hub_reads.py keeps it out of mm).
"""

from __future__ import annotations

import hashlib

from huggingface_hub import constants, get_session, hf_raise_for_status

from pipeline.base.errors import HubError, IntegrityError
from pipeline.base.safe_names import check_commit, check_repo_filename
from pipeline.base.units import format_size
from pipeline.hub import api as hub
from pipeline.hub.cache import RepoType

MAX_DOCUMENT_BYTES = 1 << 20  # 1 MiB: a profile document or a model card is a few KiB


def read_small_file(
    repo: str,
    filename: str,
    commit: str,
    *,
    token: str | None = None,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    repo_type: RepoType = "model",
) -> bytes:
    """The bytes of `filename` at `commit`, verified against the Hub's ETag; larger than `max_bytes` is refused."""
    where = f"{repo}@{commit[:12]}:{filename}"
    hub.untrusted(check_repo_filename, filename, f"a file name in {repo}")
    hub.untrusted(check_commit, commit, f"the commit of {repo}")
    remote = hub.file_metadata(repo, filename, commit, token=token, repo_type=repo_type)
    if remote.size_bytes > max_bytes:
        raise HubError(
            f"{where} is {format_size(remote.size_bytes)}, more than the {format_size(max_bytes)} mm reads for "
            "a document; refusing it",
            hint="a profile document or a model card is a few KiB: the repo holds something else under that name",
        )
    with hub.translate_errors(repo, commit, filename, token=token):
        data = _get(remote.url, hub.headers_for(remote.url, token), remote.size_bytes, where)
    if not matches_etag(data, remote.etag):
        raise IntegrityError(
            f"{where}: the bytes served do not match the Hub's checksum ({remote.etag}); nothing was kept",
            hint="run again; if it repeats, the mirror or a proxy is serving wrong data",
        )
    return data


def matches_etag(data: bytes, etag: str) -> bool:
    """An LFS file's ETag is its sha256; a regular file's is its git blob sha1."""
    if len(etag) == 64:
        return hashlib.sha256(data).hexdigest() == etag
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest() == etag


def _get(url: str, headers: dict[str, str], size_bytes: int, where: str) -> bytes:
    """The body, read no further than the size the Hub announced (one byte more proves it lied)."""
    body = bytearray()
    with get_session().stream(
        "GET", url, headers={**headers, "Accept-Encoding": "identity"}, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        follow_redirects=True,
    ) as response:  # fmt: skip
        hf_raise_for_status(response)
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > size_bytes:
                break
    if len(body) != size_bytes:
        raise IntegrityError(
            f"{where}: the server announced {size_bytes} bytes but sent "
            + ("more" if len(body) > size_bytes else f"{len(body)}")
            + "; nothing was kept",
            hint="the mirror or a proxy serves something else than it describes: check HF_ENDPOINT",
        )
    return bytes(body)
