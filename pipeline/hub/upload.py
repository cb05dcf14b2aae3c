"""The Hub's write side: create a repo or branch, read a branch's head and listing, commit against that head.

Everything goes through huggingface_hub (`create_repo`, `create_branch`, `create_commit` with
`parent_commit`, which preuploads LFS objects by sha256 before committing). Its errors become mm's here:
a commit whose parent is no longer the branch head (the Hub's 412) is a `CommitConflict` the caller
retries after re-reading; a refused token is a HubError that says a write token is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import RepoFile

from pipeline.base.errors import HubError
from pipeline.base.safe_names import check_commit
from pipeline.hub.api import endpoint, list_repo_files, resolve_commit, status_code, translate_errors, untrusted

log = logging.getLogger(__name__)

WRITE_HINT = "give a token with write access to the repository (HF_TOKEN, or `hf auth login`)"


class CommitConflict(HubError):
    """The branch moved between reading it and committing (another pusher won): re-read and retry."""


@dataclass(frozen=True)
class Upload:
    """One file to add: from a local path (a GGUF blob, read by the client in chunks) or from bytes."""

    path_in_repo: str
    content: Path | bytes
    sha256: str | None = None  # known already (a registry blob): spares the client a second read


@dataclass(frozen=True)
class RepoState:
    """A branch as read at one moment: its head commit and every file's LFS sha256 (or git oid)."""

    repo: str
    revision: str
    head: str
    files: dict[str, RepoFile]

    def has(self, path: str, sha256: str) -> bool:
        entry = self.files.get(path)
        return entry is not None and entry.lfs is not None and entry.lfs.sha256 == sha256

    def has_bytes(self, path: str, data: bytes) -> bool:
        """Is `data` the content of `path` (LFS sha256 or git blob sha1, as the Hub reports it)?"""
        entry = self.files.get(path)
        if entry is None or entry.size != len(data):
            return False
        if entry.lfs is not None:
            return entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
        return entry.blob_id == hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def write_token(token: str | None) -> str:
    """--token, else HF_TOKEN or the saved login: a push without one fails before any request."""
    found = token or get_token()
    if not found:
        raise HubError("pushing to the Hub needs a token with write access", hint=WRITE_HINT, param="token")
    return found


@contextlib.contextmanager
def _write_errors(repo: str, revision: str) -> Iterator[None]:
    """Write-specific failures first (conflict, refused token), then the read-side translation."""
    with translate_errors(repo, revision):
        try:
            yield
        except hf_errors.HfHubHTTPError as exc:
            status = status_code(exc)
            if status == 412:
                raise CommitConflict(f"{repo}@{revision} moved while committing") from None
            if status in (401, 403):
                raise HubError(
                    f"{repo}: the Hub refused to let this token write ({status})", hint=WRITE_HINT, param="token"
                ) from None
            raise


def ensure_repo(repo: str, *, revision: str, private: bool, token: str) -> None:
    """Create the repo (private when asked) and the branch if they do not exist; both are no-ops otherwise."""
    api = HfApi(endpoint=endpoint())
    with _write_errors(repo, revision):
        api.create_repo(repo, private=private, exist_ok=True, token=token)
        if revision != constants.DEFAULT_REVISION:
            api.create_branch(repo, branch=revision, exist_ok=True, token=token)


def read_state(repo: str, revision: str, token: str) -> RepoState:
    """The branch head and its files (one metadata request and one tree listing), read through the hub
    module's calls, so the commit and every listed name pass the same checks as a pull's."""
    head = resolve_commit(repo, revision, token=token)
    files = {entry.path: entry for entry in list_repo_files(repo, head, token=token)}
    return RepoState(repo=repo, revision=revision, head=head, files=files)


def commit(
    state: RepoState,
    uploads: Sequence[Upload],
    deletions: Sequence[str],
    *,
    message: str,
    token: str,
) -> str:
    """One commit on `state.revision` whose parent must still be `state.head`; returns the new commit sha.

    LFS objects the Hub already stores (by sha256) are not sent again, so a retry after a conflict or a
    kill re-sends only what never arrived.
    """
    # mm uploads with the LFS protocol (basic transfer), which the Hub and Hub-compatible mirrors serve:
    # objects are addressed by the sha256 the registry already knows. hf_xet, when installed, would
    # re-chunk and re-hash every file and needs a Xet storage service a mirror may not have.
    constants.HF_HUB_DISABLE_XET = True
    operations: list[CommitOperationAdd | CommitOperationDelete] = []
    for upload in uploads:
        operation = CommitOperationAdd(upload.path_in_repo, upload.content)
        if upload.sha256 is not None:
            operation.upload_info.sha256 = bytes.fromhex(upload.sha256)
        operations.append(operation)
    operations += [CommitOperationDelete(path) for path in deletions]
    api = HfApi(endpoint=endpoint())
    with _write_errors(state.repo, state.revision), _malformed_answer(state.repo):
        info = api.create_commit(
            state.repo,
            operations,
            commit_message=message,
            revision=state.revision,
            parent_commit=state.head,
            token=token,
        )
    made = untrusted(check_commit, info.oid, f"the commit just made on {state.repo}@{state.revision}")
    log.info("committed %s to %s@%s", made, state.repo, state.revision)
    return made


@contextlib.contextmanager
def _malformed_answer(repo: str) -> Iterator[None]:
    """A commit answer huggingface_hub cannot parse (no `commitOid`, a `commitUrl` it cannot split): one error."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # the repo id was checked: the answer's fault
        raise HubError(
            f"{endpoint()} answered the commit to {repo} with something that is not a Hub commit answer "
            f"({type(exc).__name__}); the commit may or may not have been made",
            hint="look at the repo on the Hub, then push again (what is already there is not sent again)",
        ) from None
