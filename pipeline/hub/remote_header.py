"""Predict before downloading: a Hub GGUF's header fetched with HTTP Range requests, kept as a sparse stub.

A stub is the file's real header at offset 0 and a hole up to the file's real size, so the header reader,
tensor offsets and file size all see the real model while no tensor byte was downloaded. Stubs live in
`$MM_HOME/headers/<sha256>/<file>` (a split model's shards side by side in one folder, named by a digest
of their digests) and are found again without the network through a small index per repo and commit:
`headers/repos/models--owner--name/<commit>/<file>.json`, plus `refs/<revision>` for branches and tags.

How much to fetch is found by walking the GGUF header's counts and lengths over the bytes fetched so
far: 2 MiB first, then at least double (or what the walk proved necessary) until the walk reaches the
tensor data, up to HEADER_CAP. Big vocabularies make headers tens of MB; tensor data is never fetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, get_session, hf_raise_for_status

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import HubConnectionError, HubError, ModelFormatError, OfflineError
from pipeline.base.home import atomic_path, atomic_write_text, inside, locked, mm_home
from pipeline.base.provenance import PIN, PIN_HINT, check_sha256
from pipeline.base.safe_names import check_user_ref, printable
from pipeline.base.shards import shard_names
from pipeline.base.units import format_size
from pipeline.gguf.format import DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS, SUPPORTED_VERSIONS, ValueType
from pipeline.gguf.header import (
    MAX_ARRAY_LENGTH,
    MAX_KEY_BYTES,
    MAX_KV,
    MAX_STRING_BYTES,
    MAX_TENSOR_NAME_BYTES,
    MAX_TENSORS,
    read_header,
)
from pipeline.hub import api as hub
from pipeline.hub import cache as hub_cache

log = logging.getLogger(__name__)

FIRST_FETCH = 2 << 20
HEADER_CAP = 256 << 20  # header bytes of one model (all shards together) mm fetches before giving up
PULL_HINT = "pull the model first (`mm pull {ref}`), then inspect the local file"

# GGUF value type -> width of a scalar (strings and arrays are walked apart)
_WIDTHS = {int(vtype): struct.calcsize(fmt) for vtype, fmt in SCALAR_FORMATS.items()}


class _Incomplete(Exception):
    """The bytes so far end inside the header; at least `needed` bytes from offset 0 are required."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


def header_length(data: bytes, label: str) -> int:
    """Where the tensor data starts (the header's end, aligned), walking only counts and lengths.

    Raises _Incomplete when `data` ends inside the header and ModelFormatError when it is not GGUF.
    """
    view = memoryview(data)
    end = len(data)
    pos = 0

    def need(n: int) -> None:
        if pos + n > end:
            raise _Incomplete(pos + n)

    def u32() -> int:
        nonlocal pos
        need(4)
        value: int = struct.unpack_from("<I", view, pos)[0]
        pos += 4
        return value

    def u64() -> int:
        nonlocal pos
        need(8)
        value: int = struct.unpack_from("<Q", view, pos)[0]
        pos += 8
        return value

    def capped(value: int, cap: int, what: str) -> int:
        if value > cap:
            raise ModelFormatError(f"{label}: corrupt GGUF header: {what} = {value} is more than any model has")
        return value

    def string(cap: int = MAX_STRING_BYTES) -> bytes:
        nonlocal pos
        length = capped(u64(), cap, "a string length")
        need(length)
        pos += length
        return bytes(view[pos - length : pos])

    need(8)
    if bytes(view[:4]) != GGUF_MAGIC:
        raise ModelFormatError(f"{label}: not a GGUF file (magic {bytes(view[:4])!r}, expected {GGUF_MAGIC!r})")
    pos = 4
    version = u32()
    if version not in SUPPORTED_VERSIONS:
        raise ModelFormatError(f"{label}: GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = capped(u64(), MAX_TENSORS, "tensor count"), capped(u64(), MAX_KV, "metadata count")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = string(MAX_KEY_BYTES)
        vtype = u32()
        if vtype == ValueType.STRING:
            string()
        elif vtype == ValueType.ARRAY:
            etype, count = u32(), capped(u64(), MAX_ARRAY_LENGTH, "an array length")
            if etype == ValueType.STRING:
                for _ in range(count):
                    length = capped(u64(), MAX_STRING_BYTES, "a string length")
                    need(length)  # checked per item: a garbage length must not jump past what is fetched
                    pos += length
            elif etype in _WIDTHS:
                need(count * _WIDTHS[etype])
                pos += count * _WIDTHS[etype]
            else:
                raise ModelFormatError(
                    f"{label}: metadata {printable(key.decode(errors='replace'))} has bad array type {etype}"
                )
        elif vtype in _WIDTHS:
            need(_WIDTHS[vtype])
            if key == b"general.alignment" and vtype == ValueType.UINT32:
                alignment = struct.unpack_from("<I", view, pos)[0] or DEFAULT_ALIGNMENT
            pos += _WIDTHS[vtype]
        else:
            raise ModelFormatError(
                f"{label}: metadata {printable(key.decode(errors='replace'))} has unknown type {vtype}"
            )
    for _ in range(n_tensors):
        string(MAX_TENSOR_NAME_BYTES)
        n_dims = u32()
        if not 1 <= n_dims <= 4:
            raise ModelFormatError(f"{label}: corrupt GGUF header: a tensor has {n_dims} dimensions (1 to 4)")
        need(n_dims * 8 + 12)
        pos += n_dims * 8 + 12  # dims, ggml type (u32), data offset (u64)
    return pos + (-pos % alignment)


@dataclass(frozen=True)
class _Shard:
    name: str
    remote: hub.RemoteFile

    @property
    def digest(self) -> str:
        """The LFS sha256; a non-LFS file's git sha1 is just as content-addressed."""
        return self.remote.sha256 or self.remote.etag


def header_stub(
    repo: str,
    filename: str,
    revision: str = DEFAULT_REVISION,
    *,
    token: str | None = None,
    offline: bool = False,
    expected_sha256: str | None = None,
) -> list[Path]:
    """Sparse stubs of every shard of `filename` (first shard first): real headers, real sizes, no data.

    Reused when already there: with a commit `revision` (or offline) no request is made at all; with a
    branch or tag only the revision is resolved. Offline with no stub raises OfflineError.
    `expected_sha256` pins the first shard, as a recipe's `sha256` does.
    """
    check_user_ref(repo, filename, revision)
    names = shard_names(filename)
    offline = hub.offline_mode(offline)
    commit = _resolve(repo, revision, token=token, offline=offline)
    found = _indexed_stubs(repo, commit, filename, expected_sha256)
    if found is not None:
        if not offline:
            hub_cache.write_ref(repo, revision, commit, root=_stub_root())
        return found
    if offline:
        raise OfflineError(
            f"{repo}@{revision}:{filename} has neither been pulled nor had its header fetched, and offline mode is on",
            hint="run once online (with HF_HUB_OFFLINE unset) to fetch its header",
            param="offline",
        )
    shards = [_Shard(name, hub.file_metadata(repo, name, commit, token=token)) for name in names]
    label = f"{repo}@{commit[:12]}:{names[0]}"
    check_sha256(label, shards[0].remote.sha256, expected_sha256, against=PIN, hint=PIN_HINT)
    folder = inside(mm_home().headers, mm_home().headers / _folder_key(shards))
    with locked(mm_home(), f"header-{folder.name}"):
        budget = HEADER_CAP
        paths = []
        for shard in shards:
            path = inside(folder, folder / Path(shard.name).name)
            if _stub_is_good(path, shard.remote.size_bytes):
                log.info("%s: header already fetched", shard.name)
            else:
                budget -= _write_stub(repo, shard, path, token, budget)
            paths.append(path)
        _write_index(repo, commit, filename, shards, paths)
    hub_cache.write_ref(repo, revision, commit, root=_stub_root())
    return paths


def _resolve(repo: str, revision: str, *, token: str | None, offline: bool) -> str:
    """The commit; offline, a branch is looked up in the Hub cache's refs, then in the stubs' own."""
    if not offline or hub.is_commit(revision):
        return hub.resolve_commit(repo, revision, token=token, offline=offline)
    commit = hub_cache.cached_commit(repo, revision) or hub_cache.cached_commit(repo, revision, root=_stub_root())
    if commit is None:
        raise OfflineError(
            f"{repo}@{revision} has neither been pulled nor had its header fetched, and offline mode is on",
            hint="run once online (with HF_HUB_OFFLINE unset)",
            param="offline",
        )
    return commit


def _stub_root() -> Path:
    """Where the stubs' own index lives, in the Hub cache's layout (repo folders, refs/<revision>)."""
    return mm_home().headers / "repos"


def _repo_index(repo: str) -> Path:
    return hub_cache.repo_folder(repo, root=_stub_root())


def _index_path(repo: str, commit: str, filename: str) -> Path:
    folder = _repo_index(repo)
    return inside(folder, folder / commit / f"{filename}.json")


def _folder_key(shards: list[_Shard]) -> str:
    """One file: its sha256. Split: a digest of the shards' digests, so the shards sit side by side."""
    if len(shards) == 1:
        return shards[0].digest
    return hashlib.sha256("\n".join(s.digest for s in shards).encode()).hexdigest()


def _indexed_stubs(repo: str, commit: str, filename: str, expected_sha256: str | None) -> list[Path] | None:
    """The stubs recorded for this file at this commit, if every one is still there at its size."""
    try:
        index = json.loads(_index_path(repo, commit, filename).read_text())
        entries = [(Path(e["path"]), int(e["size_bytes"])) for e in index["shards"]]
        first_sha256 = index["shards"][0]["sha256"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    check_sha256(f"{repo}@{commit[:12]}:{filename}", first_sha256, expected_sha256, against=PIN, hint=PIN_HINT)
    if not entries or not all(_stub_is_good(path, size) for path, size in entries):
        return None
    return [path for path, _ in entries]


def _stub_is_good(path: Path, size_bytes: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size_bytes
    except OSError:
        return False


def _write_index(repo: str, commit: str, filename: str, shards: list[_Shard], paths: list[Path]) -> None:
    document = {
        "repo": repo,
        "commit": commit,
        "file": filename,
        "shards": [
            {"name": s.name, "sha256": s.remote.sha256, "size_bytes": s.remote.size_bytes, "path": str(p)}
            for s, p in zip(shards, paths, strict=True)
        ],
    }
    atomic_write_text(_index_path(repo, commit, filename), json.dumps(document, indent=2) + "\n")


def _write_stub(repo: str, shard: _Shard, path: Path, token: str | None, budget: int) -> int:
    """Fetch the header, write it sparse at the real size, check it parses; returns the bytes fetched."""
    remote, label = shard.remote, f"{repo}:{shard.name}"
    data = _fetch_header(repo, shard, token, budget)
    end = header_length(data, label)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data[:end])
            handle.truncate(remote.size_bytes)
        try:
            header = read_header(tmp)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{label}: the header fetched from the Hub does not parse: {exc.message}") from None
        if header.data_offset != end:
            raise ModelFormatError(f"{label}: header ends at {header.data_offset}, the walk said {end}")
    log.info("%s: fetched its %s header (file %s)", label, format_size(end), format_size(remote.size_bytes))
    return len(data)


def _fetch_header(repo: str, shard: _Shard, token: str | None, budget: int) -> bytes:
    """Range GETs until the bytes hold the whole header: 2 MiB, then at least double each time."""
    remote, label = shard.remote, f"{repo}:{shard.name}"
    size = remote.size_bytes
    limit = min(size, budget)
    if limit <= 0:
        raise ModelFormatError(
            f"{label}: the model's GGUF headers together are larger than {format_size(HEADER_CAP)} (the most "
            "mm fetches without downloading the model)",
            hint=PULL_HINT.format(ref=label),
        )
    data = bytearray()
    want = min(FIRST_FETCH, limit)
    headers = hub.headers_for(remote.url, token)
    while True:
        with hub.translate_errors(repo, remote.commit, shard.name, token=token):
            data += _get_range(remote.url, len(data), want, size, headers)
        try:
            header_length(bytes(data), label)
            return bytes(data)
        except _Incomplete as more:
            if more.needed > size:
                raise ModelFormatError(
                    f"{label}: truncated or corrupt GGUF header: it needs {more.needed} bytes, the file has {size}"
                ) from None
            if len(data) >= limit:
                raise ModelFormatError(
                    f"{label}: the GGUF header is larger than {format_size(HEADER_CAP)} (the most mm fetches "
                    "without downloading the model)",
                    hint=PULL_HINT.format(ref=label),
                ) from None
            want = min(limit, max(2 * len(data), more.needed))
            log.debug("%s: header longer than %d bytes, fetching up to %d", label, len(data), want)


def _get_range(url: str, start: int, stop: int, size: int, headers: dict[str, str]) -> bytes:
    """Bytes [start, stop) of the file; a server that ignores Range is read only as far as needed."""
    request_headers = {**headers, "Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, follow_redirects=True
    ) as response:
        hf_raise_for_status(response)
        skip = 0
        if response.status_code == 200:
            log.warning("%s: the server ignored the Range request; reading only the bytes needed", url)
            skip = start
        else:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-") or not content_range.endswith(f"/{size}"):
                raise HubError(
                    f"{url}: asked for bytes {start}-{stop - 1} of {size}, the server sent {content_range!r}"
                )
        out = bytearray()
        wanted = stop - start
        for chunk in response.iter_bytes():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            out += chunk[: wanted - len(out)]
            if len(out) >= wanted:
                break
    if len(out) < wanted:
        raise HubConnectionError(
            f"{url}: the connection ended after {len(out)} of the {wanted} header bytes asked for",
            hint="run the same command again",
        )
    return bytes(out)
