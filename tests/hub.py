"""A local Hugging Face Hub-compatible HTTP server for tests: the real huggingface_hub client talks to it.

Serves what the client calls — `GET /api/models/{repo}[/revision/{rev}]`, `GET /api/models/{repo}/tree/{rev}`,
`POST /api/models/{repo}/paths-info/{rev}`, `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (with `X-Repo-Commit`,
`ETag`/`X-Linked-Etag` = sha256, `X-Linked-Size`, `Content-Length`, `Range`) — with the Hub's error codes
(`X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound | GatedRepo`), faults on demand and a request log.

    hub = LocalHub().start()
    commit = hub.add_repo("org/name", {"model.gguf": path_or_bytes}, gated=False)
    hub.inject("org/name", "model.gguf", Fault(cut_after=1000, times=1))
    hub.hostile.commit = "../../elsewhere"     # a lying server (see Hostile)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests import hub_upload

VALID_TOKEN = "hf_local_hub_valid_token"


@dataclass
class Fault:
    """What goes wrong when a file's bytes are served (GET only); `times` GETs are affected, then it heals."""

    cut_after: int | None = None  # close the connection after sending this many body bytes
    corrupt: bool = False  # flip one byte in the middle of the body
    bytes_per_second: float | None = None  # throttle the body
    status: int | None = None  # answer with this HTTP status instead
    times: int = 1_000_000


@dataclass
class Hostile:
    """A server that lies (issue 10): each field set makes every handler that reports it say that instead."""

    commit: str | None = None  # reported as the model's `sha` and in X-Repo-Commit
    file_commit: str | None = None  # reported in X-Repo-Commit of file answers only (404s included)
    etag: str | None = None  # reported as ETag / X-Linked-Etag
    size: int | None = None  # announced for every file
    gone: bool = False  # every file answers 404 EntryNotFound (with X-Repo-Commit), though the tree lists it
    empty_206: bool = False  # answer a Range GET with 206 and an empty body (instead of the bytes or 416)
    statuses: list[int] = field(default_factory=list)  # answer the next GETs of file bytes with these, in order
    retry_after: str | None = None  # sent with those answers


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorized: bool
    status: int
    body_bytes: int = 0  # bytes the server set out to send in the body (a Range GET: the range's length)
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Repo:
    gated: bool = False
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    advertised_size: dict[str, int] = field(default_factory=dict)  # filename -> size claimed in headers


class LocalHub:
    """The server plus its state; thread-safe enough for a test's concurrent clients."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.hostile = Hostile()
        self.requests: list[Request] = []
        self.uploads = hub_upload.UploadLog()  # the write endpoints' state (tests/hub_upload.py)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- content ---------------------------------------------------------------------------------------------
    def add_repo(
        self, repo: str, files: Mapping[str, bytes | Path], *, gated: bool = False, private: bool = False
    ) -> str:
        """Create `repo` with one commit on main holding `files`; returns the commit sha."""
        with self.lock:
            self.repos[repo] = _Repo(gated=gated, private=private)
        return self.commit(repo, {name: _read(content) for name, content in files.items()}, replace=True)

    def update_file(self, repo: str, filename: str, content: bytes | Path) -> str:
        """A new commit on main that adds or changes one file; returns its sha."""
        return self.commit(repo, {filename: _read(content)})

    def commit(self, repo: str, files: dict[str, bytes], *, replace: bool = False, branch: str = "main") -> str:
        with self.lock:
            state = self.repos[repo]
            parent = state.refs.get(branch)
            tree = {} if replace or parent is None else dict(state.commits[parent])
            tree.update(files)
            seed = (parent or "") + "".join(f"{k}:{hashlib.sha256(v).hexdigest()}" for k, v in sorted(tree.items()))
            sha = hashlib.sha1(seed.encode() + str(time.time_ns()).encode()).hexdigest()
            state.commits[sha] = tree
            state.refs[branch] = sha
            return sha

    def tag(self, repo: str, name: str, commit: str) -> None:
        with self.lock:
            self.repos[repo].refs[name] = commit

    def advertise_size(self, repo: str, filename: str, size_bytes: int) -> None:
        """Claim a different size in the metadata headers (e.g. huge, to exercise the free-disk check)."""
        with self.lock:
            self.repos[repo].advertised_size[filename] = size_bytes

    def inject(self, repo: str, filename: str, fault: Fault | None) -> None:
        with self.lock:
            if fault is None:
                self.faults.pop((repo, filename), None)
            else:
                self.faults[(repo, filename)] = fault

    # --- inspection ------------------------------------------------------------------------------------------
    def file_gets(self, filename: str) -> list[Request]:
        """The GETs of a file's bytes (what a download costs)."""
        with self.lock:
            return [
                r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(filename)
            ]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # --- lookups used by the handler --------------------------------------------------------------------------
    def _resolve(self, repo: str, revision: str) -> tuple[_Repo | None, str | None]:
        state = self.repos.get(repo)
        if state is None:
            return None, None
        commit = state.refs.get(revision, revision if revision in state.commits else None)
        return state, commit


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-body (killed pulls, cut connections) are expected here, not errors."""

    def handle_error(self, request: object, client_address: object) -> None:
        return


def _read(content: bytes | Path) -> bytes:
    return content.read_bytes() if isinstance(content, Path) else content


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    state: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    # --- plumbing --------------------------------------------------------------------------------------------
    def _token_status(self) -> str:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return "none"
        return "valid" if auth == f"Bearer {VALID_TOKEN}" else "invalid"

    def _log(self, status: int, body_bytes: int = 0) -> None:
        with self.state.lock:
            self.state.requests.append(
                Request(
                    self.command,
                    unquote(urlsplit(self.path).path),
                    self.headers.get("Range"),
                    self._token_status() == "valid",
                    status,
                    body_bytes,
                )
            )

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._log(status)
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})})

    def _json(self, document: object, headers: dict[str, str] | None = None) -> None:
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _repo_or_error(self, repo: str, revision: str) -> tuple[_Repo, str] | None:
        state, commit = self.state._resolve(repo, revision)
        if state is None or (state.private and self._token_status() != "valid"):
            self._error(404 if self._token_status() == "valid" else 401, "RepoNotFound", "Repository not found")
            return None
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return state, commit

    # --- routes ----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def _route(self) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if hub_upload.route(self, parts):
            return None
        # Dataset repos live in the same table under "datasets/owner/name" (add_repo("datasets/o/n", ...)).
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            parts = ["api", "models", f"datasets/{parts[2]}", *parts[3:]]
        elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            parts = [f"datasets/{parts[1]}", *parts[2:]]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest:
                return self._model_info(repo, "main")
            if rest[0] == "revision" and len(rest) >= 2:
                return self._model_info(repo, "/".join(rest[1:]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]))
            if rest[0] == "paths-info" and len(rest) >= 2 and self.command == "POST":
                return self._paths_info(repo, rest[1])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve_file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        self._error(404, "NotFound", f"no route for {self.command} {self.path}")

    def _model_info(self, repo: str, revision: str) -> None:
        found = self._repo_or_error(repo, revision)
        if found is None:
            return
        state, commit = found
        files = state.commits[commit]
        self._json(
            {
                "id": repo,
                "modelId": repo,
                "sha": self.state.hostile.commit or commit,
                "private": state.private,
                "gated": "manual" if state.gated else False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        )

    def _entry(self, state: _Repo, name: str, data: bytes) -> dict[str, object]:
        size = state.advertised_size.get(name, len(data))
        digest = sha256_hex(data)
        git_oid = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        return {
            "type": "file",
            "oid": git_oid,
            "size": size,
            "path": name,
            "lfs": {"oid": digest, "size": size, "pointerSize": 134},
        }

    def _tree(self, repo: str, revision: str, folder: str) -> None:
        found = self._repo_or_error(repo, revision)
        if found is None:
            return
        state, commit = found
        prefix = f"{folder}/" if folder else ""
        entries = [self._entry(state, n, d) for n, d in sorted(state.commits[commit].items()) if n.startswith(prefix)]
        self._json(entries)

    def _paths_info(self, repo: str, revision: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        found = self._repo_or_error(repo, revision)
        if found is None:
            return
        state, commit = found
        files = state.commits[commit]
        self._json([self._entry(state, p, files[p]) for p in form.get("paths", []) if p in files])

    def _resolve_file(self, repo: str, revision: str, filename: str) -> None:
        found = self._repo_or_error(repo, revision)
        if found is None:
            return
        state, commit = found
        if state.gated and self._token_status() != "valid":
            status = 401 if self._token_status() == "none" else 403
            return self._error(status, "GatedRepo", f"Access to model {repo} is restricted.")
        data = state.commits[commit].get(filename)
        hostile = self.state.hostile
        reported = hostile.file_commit or hostile.commit or commit
        if data is None or hostile.gone:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": reported})
        digest = sha256_hex(data)
        size = hostile.size or state.advertised_size.get(filename, len(data))
        etag = hostile.etag or digest
        headers = {
            "X-Repo-Commit": reported,
            "ETag": f'"{etag}"',
            "X-Linked-Etag": f'"{etag}"',
            "X-Linked-Size": str(size),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.command == "HEAD":
            self._log(200)
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return
        self._serve_bytes(repo, filename, data, headers)

    def _serve_bytes(self, repo: str, filename: str, data: bytes, headers: dict[str, str]) -> None:
        if self._hostile_answer(headers):
            return
        fault = self._take_fault(repo, filename)
        if fault is not None and fault.status is not None:
            return self._error(fault.status, "Fault", "injected failure")
        if fault is not None and fault.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        start, end, status = 0, len(data), 200
        wanted = self.headers.get("Range")
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(len(data), int(last) + 1) if last else len(data)
            if start >= len(data) or end <= start:
                return self._error(
                    416, "RangeNotSatisfiable", "range not satisfiable", {"Content-Range": f"bytes */{len(data)}"}
                )
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
        body = data[start:end]
        self._log(status, len(body))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = len(body) if fault is None or fault.cut_after is None else min(fault.cut_after, len(body))
        self._write_body(body[:limit], fault)
        if limit < len(body):
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    def _hostile_answer(self, headers: dict[str, str]) -> bool:
        """A lying answer to a GET of file bytes, if the hub is set to give one (see Hostile)."""
        hostile = self.state.hostile
        with self.state.lock:
            status = hostile.statuses.pop(0) if hostile.statuses else None
        if status is not None:
            extra = {"Retry-After": hostile.retry_after} if hostile.retry_after else {}
            self._error(status, "Hostile", "injected status", extra)
            return True
        wanted = self.headers.get("Range")
        if hostile.empty_206 and wanted:
            start = wanted.removeprefix("bytes=").partition("-")[0]
            self._send(206, b"", {**headers, "Content-Range": f"bytes {start}-{start}/{headers['X-Linked-Size']}"})
            return True
        return False

    def _write_body(self, body: bytes, fault: Fault | None) -> None:
        if fault is None or fault.bytes_per_second is None:
            self.wfile.write(body)
            return
        step = max(1, int(fault.bytes_per_second / 20))
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            self.wfile.flush()
            time.sleep(0.05)

    def _take_fault(self, repo: str, filename: str) -> Fault | None:
        with self.state.lock:
            fault = self.state.faults.get((repo, filename))
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                del self.state.faults[(repo, filename)]
            return fault
