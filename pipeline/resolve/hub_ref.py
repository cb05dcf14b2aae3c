"""The one Hub-reference parser: every way a user names a place on the Hub, read into one typed HubRef.

Three spellings, like hf's `parse_hf_uri` (repo id, repo type, revision, path in the repo):
- mm's own: `owner/name[:FILE[#MEMBER]][@REVISION]` (MEMBER: a file inside a .zip, for texts);
- a Hub web URL pasted from a browser: `https://HOST/[datasets/|spaces/]owner/name[/(blob|resolve|tree)/REV[/FILE]]`
  on any host, so a mirror (HF_ENDPOINT) works too; revisions such as refs/pr/1 arrive percent-encoded;
- an `hf://[datasets/|spaces/]owner/name[@REV][/FILE]` URI, as huggingface_hub's file system writes it.

Grammar only: the Hub's own naming rules are checked where a reference is used (safe_names.check_user_ref).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from pipeline.base.constants import DEFAULT_REVISION
from pipeline.base.errors import UsageError
from pipeline.base.safe_names import REPO_ID_RE

RepoType = Literal["model", "dataset", "space"]
GRAMMAR = (
    "owner/name[:FILE][@REVISION], a Hub URL (https://huggingface.co/owner/name/blob/REV/FILE), or hf://owner/name"
)

_REPO = REPO_ID_RE.pattern.removeprefix("^").removesuffix("$")
# A file or revision never holds '@' or whitespace; a file never holds '#' (it starts the zip member).
_MM_RE = re.compile(
    rf"^(?P<repo>{_REPO})(?::(?P<file>[^@#\s]+)(?:#(?P<member>[^@#\s]+))?)?(?:@(?P<revision>[^@\s]+))?$"
)
_URL_RE = re.compile(
    rf"^https?://[^/\s]+/(?:(?P<type>datasets|spaces|models)/)?(?P<repo>{_REPO})"
    r"(?:/(?:blob|resolve|tree)/(?P<revision>[^/\s?#]+)(?:/(?P<file>[^?#\s]+?))?)?/?(?:[?#]\S*)?$"
)
_URI_RE = re.compile(
    rf"^hf://(?:(?P<type>datasets|spaces|models)/)?(?P<repo>{_REPO})(?:@(?P<revision>[^/@\s]+))?(?:/(?P<file>\S+?))?/?$"
)
_TYPES: dict[str | None, RepoType] = {None: "model", "models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass(frozen=True)
class HubRef:
    """A place on the Hub: a repo, maybe a file in it (and a member of that zip), at a revision."""

    repo: str
    file: str | None = None
    revision: str = DEFAULT_REVISION
    repo_type: RepoType = "model"
    member: str | None = None
    revision_named: bool = field(default=False, compare=False)  # the text named a revision (not the default)

    def __str__(self) -> str:
        """mm's own spelling (the revision left out when it is the default branch)."""
        member = f"#{self.member}" if self.member else ""
        place = f"{self.repo}:{self.file}{member}" if self.file else self.repo
        return place + ("" if self.revision == DEFAULT_REVISION else f"@{self.revision}")

    @property
    def filename(self) -> str:
        """The file this reference names; naming none is a usage error."""
        if self.file is None:
            raise UsageError(f"{self} names no file: expected {self.repo}:FILE")
        return self.file


def is_url(text: str) -> bool:
    return text.strip().lower().startswith(("http://", "https://", "hf://"))


def match_hub_ref(text: str, *, default_type: RepoType = "model") -> HubRef | None:
    """The Hub place `text` names, or None when it is not written as one (a local path, a recipe name).

    A URL is unmistakably meant for the Hub, so a malformed one is an error rather than None. In mm's own
    spelling the repo type is the caller's (`default_type`: texts come from dataset repos); a bare
    `owner/name` ending in .gguf or .toml reads as a path, not a repo.
    """
    text = text.strip()
    if is_url(text):
        return _parse_url(text)
    match = _MM_RE.match(text)
    if match is None:
        return None
    if match["file"] is None and match["revision"] is None and text.endswith((".gguf", ".toml")):
        return None
    return HubRef(
        repo=match["repo"], file=match["file"], revision=match["revision"] or DEFAULT_REVISION, repo_type=default_type,
        member=match["member"], revision_named=match["revision"] is not None,
    )  # fmt: skip


def parse_hub_ref(text: str, *, default_type: RepoType = "model") -> HubRef:
    """Like match_hub_ref, but anything that is not a Hub reference is a usage error naming the grammar."""
    ref = match_hub_ref(text, default_type=default_type)
    if ref is None:
        raise UsageError(f"{text!r} is not a Hub reference: expected {GRAMMAR}")
    return ref


def _parse_url(text: str) -> HubRef:
    match = _URL_RE.match(text) or _URI_RE.match(text)
    if match is None:
        raise UsageError(
            f"{text!r} is not a Hub address: expected https://HOST/owner/name[/blob/REVISION/FILE] "
            "or hf://owner/name[@REVISION][/FILE]",
            hint="copy the address of the file's page (…/blob/main/FILE) or its download link (…/resolve/main/FILE)",
        )
    revision = unquote(match["revision"]) if match["revision"] else None
    return HubRef(
        repo=match["repo"], file=unquote(match["file"]) if match["file"] else None,
        revision=revision or DEFAULT_REVISION, repo_type=_TYPES[match["type"]], revision_named=revision is not None,
    )  # fmt: skip


def model_text_from_url(text: str) -> str:
    """A Hub URL as mm's MODEL spelling (`owner/name:FILE[@revision]`); anything else unchanged.

    A URL of a dataset or a Space is an error here: a MODEL lives in a model repo."""
    if not is_url(text):
        return text
    ref = _parse_url(text.strip())
    if ref.repo_type != "model":
        raise UsageError(f"{text} is a {ref.repo_type} repo; a MODEL is a file of a model repo")
    return str(ref)
