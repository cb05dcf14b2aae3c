"""Values from outside mm (a Hub's answers, a recipe, a file's header) checked before they become paths or output.

A server mm does not control chooses the commit, the ETag and the file names it reports; each becomes a
path component in the Hub cache, the header stubs or the partial area. Each is checked here, at the edge,
against the form a real Hub uses — and `home.inside` checks the joined path again before anything is
written, as huggingface_hub does for its own pointers (`file_download._get_pointer_path`).
"""

from __future__ import annotations

import re

from pipeline.base.errors import UsageError

MAX_FILENAME_CHARS = 1024  # a repo path; the Hub's own limit per path is far below any filesystem's
MAX_COMPONENT_CHARS = 255  # NAME_MAX of every common filesystem
MAX_REVISION_CHARS = 255

# owner/name as recipes and Hub references spell it; the Hub's own rules are check_repo_id's
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")  # huggingface_hub's REGEX_COMMIT_HASH, anchored
_DIGEST_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # git blob sha1 (regular files) or LFS sha256
# git check-ref-format: no control characters, space, ~ ^ : ? * [ \, no "..", no "@{", no "//"
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


class UnsafeValue(ValueError):
    """A value that cannot safely become a path; the message names what is allowed."""


def check_repo_id(value: object) -> str:
    """`owner/name` by the Hub's own rules (huggingface_hub's validate_repo_id): no '..' or '--', 96 at most."""
    from huggingface_hub.errors import HFValidationError  # late: mm starts without the Hub client
    from huggingface_hub.utils._validators import validate_repo_id

    if not isinstance(value, str) or value.count("/") != 1:
        raise UnsafeValue(f"repository id {_show(value)} is not owner/name")
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise UnsafeValue(f"repository id {_show(value)} is not valid: {exc}") from None
    return value


def check_commit(value: object, *, what: str = "commit") -> str:
    """A full 40-hex git commit (what the Hub reports in X-Repo-Commit and a model's `sha`)."""
    if not isinstance(value, str) or not COMMIT_RE.match(value):
        raise UnsafeValue(f"{what} {_show(value)} is not a 40-hex git commit")
    return value


def check_etag(value: object) -> str:
    """The digest the Hub uses as a file's ETag: an LFS sha256 (64 hex) or a git blob sha1 (40 hex)."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise UnsafeValue(f"ETag {_show(value)} is not a sha256 or git sha1 digest")
    return value


def check_repo_filename(value: object) -> str:
    """A file's path in a repo: relative, normalised (no '.', '..' or empty segments), of sane length."""
    if not isinstance(value, str) or not value:
        raise UnsafeValue(f"file name {_show(value)} is empty or not text")
    from huggingface_hub._local_folder import _validate_relative_filename  # late: mm starts without the Hub client

    try:
        _validate_relative_filename(value)  # huggingface_hub's own check: no '..', nothing anchored
    except ValueError:
        raise UnsafeValue(f"file name {_show(value)} is absolute or climbs out with '..'") from None
    parts = value.split("/")
    if len(value) > MAX_FILENAME_CHARS or any(len(part.encode()) > MAX_COMPONENT_CHARS for part in parts):
        raise UnsafeValue(
            f"file name {_show(value)} is too long ({MAX_FILENAME_CHARS} characters at most, "
            f"{MAX_COMPONENT_CHARS} bytes per folder or name)"
        )
    if any(part in ("", ".") for part in parts) or "\\" in value or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise UnsafeValue(f"file name {_show(value)} is not a normalised relative path")
    return value


def check_revision(value: object) -> str:
    """A branch, tag or commit by git's ref rules (`git check-ref-format`); `refs/pr/1` style is fine."""
    if not isinstance(value, str) or not value:
        raise UnsafeValue(f"revision {_show(value)} is empty or not text")
    if (
        len(value) > MAX_REVISION_CHARS
        or _REF_FORBIDDEN.search(value)
        or value == "@"
        or value.startswith(("/", "-"))
        or value.endswith(("/", ".", ".lock"))
        or any(part.startswith(".") or part.endswith(".lock") for part in value.split("/"))
    ):
        raise UnsafeValue(
            f"revision {_show(value)} is not a valid git branch, tag or commit "
            "(no '..', no leading '/', '.' or '-', no spaces or ~^:?*[\\)"
        )
    return value


def printable(text: str, limit: int = 200) -> str:
    """Text from a file, safe to print: control characters (newlines, ANSI escapes) shown escaped, and shortened.

    A model's name or a tensor's name is chosen by whoever made the file; printed raw, a newline or an
    escape sequence could forge an `error:` line or repaint the terminal.
    """
    if text.isprintable() and len(text) <= limit:
        return text
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _show(value: object) -> str:
    """A value quoted and shortened for a message (it came from outside: escaped, never raw)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_user_ref(repo: str, filename: str | None, revision: str) -> None:
    """A repo id, file name and revision typed by the user or a recipe: the Hub's own rules (UsageError)."""
    try:
        check_repo_id(repo)
        check_revision(revision)
        if filename is not None:
            check_repo_filename(filename)
    except UnsafeValue as exc:
        raise UsageError(f"{repo}: {exc}") from None
