"""The write side of the local test Hub: the endpoints huggingface_hub's upload machinery calls.

Read from huggingface_hub 2.4's `hf_api.create_repo`, `_commit_api._fetch_upload_modes` / `_send_commit`
and `lfs.post_lfs_batch_info` / `lfs_upload` (basic transfer):

    POST /api/repos/create                          {name, organization, visibility} → 200 {url} | 409
    POST /api/models/{repo}/branch/{branch}         create a branch at main's head → 200 | 409
    POST /api/validate-yaml                         the card's YAML front matter must parse → 200 | 400
    POST /api/models/{repo}/preupload/{rev}         per file: uploadMode lfs|regular, oid when it exists
    POST /{repo}.git/info/lfs/objects/batch         per object: no actions when stored, else upload + verify
    PUT  /_lfs/{repo}/{oid}                         the bytes; kept only when size and sha256 match the oid
    POST /_lfs/{repo}/verify                        the object is stored → 200, else 404
    POST /api/models/{repo}/commit/{rev}            NDJSON: header (parentCommit), file, lfsFile, deletedFile;
                                                    412 when parentCommit is not the branch head

Every write needs the valid token. Committed files are served by the read endpoints in tests/hub.py, so
`mm pull` works against what `mm push` wrote. `UploadLog` counts what each push cost.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tests.hub import LocalHub, _Handler

LFS_SUFFIXES = (".gguf", ".bin", ".safetensors", ".pt")
LFS_MIN_BYTES = 10 * 1024 * 1024  # the Hub stores files from 10 MB as LFS whatever their name
CONFLICT_MESSAGE = "A commit has happened since. Please refresh and try again."


@dataclass(frozen=True)
class Put:
    """One object upload: how many body bytes arrived and whether the object was stored."""

    repo: str
    oid: str
    bytes_received: int
    stored: bool


@dataclass
class UploadLog:
    """What the write endpoints did, for tests that count a push's cost."""

    puts: list[Put] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # commit shas made through the commit endpoint
    conflicts: int = 0  # commits refused with 412
    lfs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> oid -> bytes (LFS storage)
    slow_oids: dict[str, float] = field(default_factory=dict)  # oid -> bytes per second the server reads it at
    receiving: dict[str, int] = field(default_factory=dict)  # oid -> body bytes read so far (latest PUT)
    hold_commits: threading.Barrier | None = None  # the first N commits wait for each other, then go one by one
    stall_commit_seconds: float = 0.0  # a commit request is answered only after this long (a stalled endpoint)
    commit_answer: dict[str, Any] = field(default_factory=dict)  # fields that replace the commit answer's
    verify_host: str | None = None  # host:port put in LFS verify hrefs (another host than the endpoint's)

    def stored_puts(self, repo: str | None = None) -> list[Put]:
        return [p for p in self.puts if p.stored and (repo is None or p.repo == repo)]

    def bytes_uploaded(self) -> int:
        return sum(p.bytes_received for p in self.puts)


def hold_first_commits(hub: LocalHub, count: int, timeout: float = 60.0) -> None:
    """Make the next `count` commits wait until all have arrived (so they read the same parent)."""
    hub.uploads.hold_commits = threading.Barrier(count, timeout=timeout)


def route(handler: _Handler, parts: list[str]) -> bool:
    """Answer a write request; False when it is not one (the read routes take it)."""
    command = handler.command
    if command == "POST" and parts == ["api", "repos", "create"]:
        return _done(_create_repo(handler))
    if command == "POST" and parts == ["api", "validate-yaml"]:
        return _done(_validate_yaml(handler))
    if parts[:2] == ["api", "models"] and len(parts) >= 6 and command == "POST":
        repo, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
        if action == "preupload":
            return _done(_preupload(handler, repo, revision))
        if action == "commit":
            return _done(_commit(handler, repo, revision))
        if action == "branch":
            return _done(_create_branch(handler, repo, revision))
    if (
        command == "POST"
        and len(parts) == 6
        and parts[1].endswith(".git")
        and parts[2:]
        == [
            "info",
            "lfs",
            "objects",
            "batch",
        ]
    ):
        return _done(_lfs_batch(handler, f"{parts[0]}/{parts[1].removesuffix('.git')}"))
    if parts[:1] == ["_lfs"] and len(parts) == 4:
        repo = f"{parts[1]}/{parts[2]}"
        if command == "PUT":
            return _done(_lfs_put(handler, repo, parts[3]))
        if command == "POST" and parts[3] == "verify":
            return _done(_lfs_verify(handler, repo))
    return False


def _done(_: None) -> bool:
    return True


# --- plumbing -------------------------------------------------------------------------------------------------


def _body(handler: _Handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _json_body(handler: _Handler) -> Any:
    return json.loads(_body(handler) or b"{}")


def _can_write(handler: _Handler) -> bool:
    """Writes need the valid token: 401 without one (as the Hub answers), 403 with a wrong one."""
    status = handler._token_status()
    if status == "valid":
        return True
    if status == "none":
        handler._error(401, "Unauthorized", "You must be authenticated to write to this repository")
    else:
        handler._error(401, "Unauthorized", "Invalid credentials in Authorization header")
    return False


def _is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


# --- repositories and branches ----------------------------------------------------------------------------------


def _create_repo(handler: _Handler) -> None:
    from tests.hub import _Repo

    if not _can_write(handler):
        return None
    payload = _json_body(handler)
    repo = f"{payload.get('organization')}/{payload['name']}"
    hub = handler.state
    with hub.lock:
        exists = repo in hub.repos
        if not exists:
            hub.repos[repo] = _Repo(private=payload.get("visibility") == "private" or payload.get("private") is True)
    if exists:  # the Hub's 409 carries the url too: create_repo(exist_ok=True) reads it
        body = {"error": "You already created this model repo", "url": f"{hub.url}/{repo}"}
        return handler._send(409, json.dumps(body).encode(), {"Content-Type": "application/json"})
    hub.commit(repo, {".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"}, replace=True)
    handler._json({"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
    return None


def _create_branch(handler: _Handler, repo: str, branch: str) -> None:
    if not _can_write(handler):
        return None
    _json_body(handler)
    found = handler._repo_or_error(repo, "main")
    if found is None:
        return None
    state, head = found
    with handler.state.lock:
        exists = branch in state.refs
        state.refs.setdefault(branch, head)
    if exists:
        return handler._error(409, "BranchExists", f"Reference already exists: refs/heads/{branch}")
    handler._json({})
    return None


def _validate_yaml(handler: _Handler) -> None:
    content = str(_json_body(handler).get("content", ""))
    if content.startswith("---\n"):
        front = content[4:].split("\n---\n", 1)[0]
        try:
            yaml.safe_load(front)
        except yaml.YAMLError as exc:
            body = {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}
            return handler._send(400, json.dumps(body).encode(), {"Content-Type": "application/json"})
    handler._json({"errors": [], "warnings": []})
    return None


# --- preupload and LFS ------------------------------------------------------------------------------------------


def _preupload(handler: _Handler, repo: str, revision: str) -> None:
    if not _can_write(handler):
        return None
    payload = _json_body(handler)
    found = handler._repo_or_error(repo, revision)
    if found is None:
        return None
    state, commit = found
    tree = state.commits[commit]
    files = []
    for item in payload.get("files", []):
        path, size = item["path"], int(item["size"])
        mode = "lfs" if _is_lfs(path, size) else "regular"
        existing = tree.get(path)
        oid = None
        if existing is not None:
            oid = hashlib.sha256(existing).hexdigest() if mode == "lfs" else git_blob_oid(existing)
        files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    handler._json({"files": files, "commitOid": commit})
    return None


def _lfs_batch(handler: _Handler, repo: str) -> None:
    if not _can_write(handler):
        return None
    payload = _json_body(handler)
    hub = handler.state
    if repo not in hub.repos:
        return handler._error(404, "RepoNotFound", "Repository not found")
    with hub.lock:
        stored = hub.uploads.lfs.setdefault(repo, {})
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in stored or len(stored[oid]) != size:
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/_lfs/{repo}/{oid}"},
                    "verify": {"href": f"{_verify_base(hub)}/_lfs/{repo}/verify"},
                }
            objects.append(entry)
    handler._send(
        200,
        json.dumps({"transfer": "basic", "objects": objects}).encode(),
        {"Content-Type": "application/vnd.git-lfs+json"},
    )
    return None


def _verify_base(hub: LocalHub) -> str:
    return f"http://{hub.uploads.verify_host}" if hub.uploads.verify_host else hub.url


def _lfs_put(handler: _Handler, repo: str, oid: str) -> None:
    """Receive an object's bytes (slowly for a `slow_oids` entry); store it only when its sha256 is the oid."""
    hub = handler.state
    rate = hub.uploads.slow_oids.get(oid)
    expected = int(handler.headers.get("Content-Length") or -1)
    digest, received = hashlib.sha256(), bytearray()
    if expected < 0:
        received += _body(handler)
    else:
        step = max(1, int(rate / 20)) if rate else 1 << 20
        while len(received) < expected:
            chunk = handler.rfile.read(min(step, expected - len(received)))
            if not chunk:
                break
            received += chunk
            hub.uploads.receiving[oid] = len(received)
            if rate:
                time.sleep(0.05)
    digest.update(received)
    complete = digest.hexdigest() == oid and (expected < 0 or len(received) == expected)
    with hub.lock:
        hub.uploads.puts.append(Put(repo, oid, len(received), complete))
        if complete:
            hub.uploads.lfs.setdefault(repo, {})[oid] = bytes(received)
    if len(received) < expected:  # the client went away mid-body
        handler.close_connection = True
        return None
    if not complete:
        return handler._error(400, "BadDigest", f"the uploaded bytes do not hash to {oid}")
    handler._send(200, b"")
    return None


def _lfs_verify(handler: _Handler, repo: str) -> None:
    payload = _json_body(handler)
    stored = handler.state.uploads.lfs.get(repo, {})
    data = stored.get(payload.get("oid", ""))
    if data is None or len(data) != payload.get("size"):
        return handler._error(404, "ObjectNotFound", "object not uploaded")
    handler._json({})
    return None


# --- commits ----------------------------------------------------------------------------------------------------


def _commit(handler: _Handler, repo: str, revision: str) -> None:
    if not _can_write(handler):
        return None
    lines = [json.loads(line) for line in _body(handler).splitlines() if line.strip()]
    hub = handler.state
    if hub.uploads.stall_commit_seconds:
        time.sleep(hub.uploads.stall_commit_seconds)
    barrier = hub.uploads.hold_commits
    if barrier is not None:
        try:
            if barrier.wait() == 0:
                hub.uploads.hold_commits = None  # one round only; retries go straight through
        except threading.BrokenBarrierError:
            hub.uploads.hold_commits = None
    found = handler._repo_or_error(repo, revision)
    if found is None:
        return None
    state = found[0]
    with hub.lock:  # decide under the lock, answer after it (sending logs the request, which takes the lock)
        outcome = _apply(hub, state, repo, revision, lines)
    if isinstance(outcome, tuple):
        return handler._error(*outcome)
    sha = outcome
    answer = {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha, "success": True}
    handler._json({**answer, **hub.uploads.commit_answer})
    return None


def _apply(hub: LocalHub, state: Any, repo: str, revision: str, lines: list[Any]) -> str | tuple[int, str, str]:
    """The new commit's sha, or (status, error code, message); the caller holds the hub's lock."""
    head = state.refs.get(revision)
    if head is None:
        return 404, "RevisionNotFound", f"Invalid rev id: {revision}"
    header = next((line["value"] for line in lines if line["key"] == "header"), {})
    parent = header.get("parentCommit")
    if parent is not None and parent != head:
        hub.uploads.conflicts += 1
        return 412, "PreconditionFailed", CONFLICT_MESSAGE
    tree = dict(state.commits[head])
    stored = hub.uploads.lfs.get(repo, {})
    for line in lines:
        key, value = line["key"], line["value"]
        if key == "file":
            tree[value["path"]] = base64.b64decode(value["content"])
        elif key == "lfsFile":
            data = stored.get(value["oid"])
            if data is None:
                return 400, "LfsObjectMissing", f"{value['path']}: LFS object {value['oid']} was not uploaded"
            tree[value["path"]] = data
        elif key == "deletedFile" and tree.pop(value["path"], None) is None:
            return 404, "EntryNotFound", "A file with this name doesn't exist"
    seed = head + "".join(f"{k}:{hashlib.sha256(v).hexdigest()}" for k, v in sorted(tree.items()))
    sha = hashlib.sha1(seed.encode() + str(time.time_ns()).encode()).hexdigest()
    state.commits[sha] = tree
    state.refs[revision] = sha
    hub.uploads.commits.append(sha)
    return sha
