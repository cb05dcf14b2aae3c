"""Evaluation and calibration texts: a local file, or a file of a Hub dataset repo pinned by revision.

`mm eval` (perplexity, KL-divergence) and imatrix calibration both need "the same text as last night":
a text is named by a local path or `owner/name:FILE[@revision]` in a dataset repo, pulled and verified
through mm's own Hub code (resumable, sha256-checked, Hugging Face cache layout) and returned with its
sha256, which results record so a nightly can tell when the text changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from pipeline.base.constants import DEFAULT_REVISION, TEXT_ENV, env_value
from pipeline.base.digest import file_sha256
from pipeline.base.disk_space import SLACK_BYTES, free_bytes
from pipeline.base.errors import HubError, IntegrityError, UsageError
from pipeline.base.home import atomic_path, mm_home
from pipeline.base.provenance import check_sha256
from pipeline.resolve.hub_ref import match_hub_ref

if TYPE_CHECKING:  # the Hub client loads when a Hub text is pulled
    from pipeline.hub.transfer import ProgressFactory

# The default text: WikiText-2's raw test split, from the zip llama.cpp's scripts/get-wikitext-2.sh fetches
# (huggingface.co/datasets/ggml-org/ci), pinned to one commit so a nightly's figures stay comparable.
# MM_TEXT overrides it; so does a recipe's [eval] text or --text.
WIKITEXT_COMMIT = "927b3642933080f1b0e811e2f916e14c292992f9"
DEFAULT_TEXT = f"ggml-org/ci:wikitext-2-raw-v1.zip#wikitext-2-raw/wiki.test.raw@{WIKITEXT_COMMIT}"
MAX_TEXT_BYTES = 1 << 30  # an eval or calibration text; WikiText-2's largest split is 11 MB
MAX_BYTES_PER_TOKEN = 32  # generous: BPE and SentencePiece vocabularies average ~4 bytes of English a token
# Content pins of known Hub texts, (repo, file, commit) -> sha256, checked after every pull: the zip's
# digest as projects that freeze this file publish it (the same value from independent sources).
KNOWN_SHA256 = {
    ("ggml-org/ci", "wikitext-2-raw-v1.zip", WIKITEXT_COMMIT): (
        "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11"
    ),
}


class TextRef(BaseModel):
    """Where a text comes from; `sha256` pins its content (checked after every pull)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None  # a local file (relative to the recipe when it comes from one)
    repo: str | None = None  # a Hub dataset repo
    file: str | None = None
    member: str | None = None  # a file inside a .zip
    revision: str = DEFAULT_REVISION
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    def __str__(self) -> str:
        if self.repo:
            return f"{self.repo}:{self.file}{'#' + self.member if self.member else ''}@{self.revision}"
        return str(self.path)


class ResolvedText(BaseModel):
    """A verified local copy of a text, with what a result records about it."""

    path: Path
    sha256: str
    size_bytes: int
    source: str  # the path, or repo:file@commit
    commit: str | None = None


def parse_text(text: str | None, base: Path | None = None) -> TextRef:
    """`--text` / `[eval] text`: an existing path, else a dataset file (`owner/name:FILE[#MEMBER][@revision]` or
    its URL); None = the default."""
    value = text or env_value(TEXT_ENV) or DEFAULT_TEXT
    candidate = Path(value).expanduser()
    if base is not None and not candidate.is_absolute():
        candidate = base / candidate
    ref = None if candidate.exists() else match_hub_ref(value, default_type="dataset")
    if ref is None or ref.file is None:
        return TextRef(path=str(candidate))
    if ref.repo_type != "dataset":
        raise UsageError(f"text {value}: names a {ref.repo_type} repo; texts are files of Hub dataset repos")
    return TextRef(
        repo=ref.repo, file=ref.file, member=ref.member, revision=ref.revision,
        sha256=KNOWN_SHA256.get((ref.repo, ref.file, ref.revision)),
    )  # fmt: skip


def resolve_text(
    ref: TextRef, *, token: str | None = None, offline: bool = False, progress: ProgressFactory | None = None
) -> ResolvedText:
    """A local, verified copy of the text: a local file is hashed (stat-cached); a Hub file is pulled."""
    if ref.repo is None:
        path = Path(ref.path or "")
        if not path.is_file():
            raise UsageError(
                f"text {path}: no such file", hint="give a text file, or owner/name:FILE@revision in a Hub dataset"
            )
        sha256 = file_sha256(mm_home(), path)
        _check(sha256, ref)
        return ResolvedText(path=path, sha256=sha256, size_bytes=path.stat().st_size, source=str(path))
    from pipeline.hub.download import pull

    try:
        pulled = pull(
            ref.repo, ref.file or "", ref.revision, token=token, offline=offline, expected_sha256=ref.sha256,
            progress=progress, repo_type="dataset",
        )[0]  # fmt: skip
    except HubError as error:  # a local file needs no Hub: point there, not at "work offline"
        raise HubError(
            f"text {ref}: {error.message}", hint="give a local text file instead (any plain text works)", param="text"
        ) from None
    path = pulled.path if ref.member is None else _extract(pulled.path, pulled.sha256, ref.member)
    return ResolvedText(
        path=path, sha256=file_sha256(mm_home(), path), size_bytes=path.stat().st_size,
        source=f"{ref.repo}:{ref.file}{'#' + ref.member if ref.member else ''}@{pulled.commit}", commit=pulled.commit,
    )  # fmt: skip


def _extract(archive: Path, archive_sha256: str, member: str) -> Path:
    """One member of a verified zip, streamed once to $MM_HOME/texts (named by the zip's digest and the
    member's), never past MAX_TEXT_BYTES or the free space: a zip's sizes are the server's word."""
    if member.startswith("/") or ".." in Path(member).parts:
        raise UsageError(f"zip member {member!r}: expected a relative path inside the archive")
    folder = mm_home().root / "texts" / archive_sha256[:16]
    target = folder / f"{hashlib.sha256(member.encode()).hexdigest()[:16]}-{Path(member).name}"
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(archive) as bundle:
            _check_names(archive, bundle.namelist())
            info = bundle.getinfo(member)
            cap = min(MAX_TEXT_BYTES, free_bytes(folder) - SLACK_BYTES)
            if info.file_size > cap:
                raise UsageError(f"{archive.name}#{member}: {info.file_size} bytes uncompressed; at most {cap} "
                                 "(MAX_TEXT_BYTES and the free space)")  # fmt: skip
            with bundle.open(info) as reader, atomic_path(target) as tmp, open(tmp, "wb") as writer:
                written = 0
                while chunk := reader.read(1 << 20):
                    written += len(chunk)
                    if written > cap:  # the header understated the size: stop where it said
                        raise IntegrityError(f"{archive.name}#{member}: expands past {cap} bytes; refused")
                    writer.write(chunk)
    except KeyError:
        raise UsageError(f"{archive.name} has no member {member!r}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise IntegrityError(f"{archive}: not a zip file mm can read ({exc})") from None
    return target


def _check_names(archive: Path, names: list[str]) -> None:
    """One error for an archive whose names collide: `sub` beside `sub/x.txt`, or one name twice."""
    files = [n for n in names if not n.endswith("/")]
    if len(set(files)) != len(files):
        raise IntegrityError(f"{archive.name}: a member name appears twice; refused")
    prefixes = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
    if clash := sorted(prefixes & set(files)):
        raise IntegrityError(f"{archive.name}: {clash[0]!r} is both a file and a folder in the archive; refused")


def text_budget(chunks: int | None, n_ctx: int) -> int:
    """The bytes of a text that `chunks` chunks of `n_ctx` tokens can use (MAX_TEXT_BYTES without --chunks)."""
    if chunks is None:
        return MAX_TEXT_BYTES
    return min(MAX_TEXT_BYTES, (chunks + 1) * n_ctx * MAX_BYTES_PER_TOKEN)


def read_text(path: Path, budget: int) -> bytes:
    """The first `budget` bytes of a text: only what the chunks asked for is read and tokenized."""
    with open(path, "rb") as reader:
        return reader.read(budget)


@contextlib.contextmanager
def text_within(path: Path, budget: int) -> Iterator[Path]:
    """`path`, or a temporary copy of its first `budget` bytes for a tool that reads a whole file."""
    if path.stat().st_size <= budget:
        yield path
        return
    with tempfile.TemporaryDirectory(dir=mm_home().ensure(mm_home().root / "tmp")) as folder:
        prefix = Path(folder) / path.name
        prefix.write_bytes(read_text(path, budget))
        yield prefix


def _check(sha256: str, ref: TextRef) -> None:
    check_sha256(f"text {ref}", sha256, ref.sha256, against="its pin", hint="update the pin")
