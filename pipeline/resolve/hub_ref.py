"""Hub addresses pasted from a browser: `https://huggingface.co/owner/name/blob/main/x.gguf` → `owner/name:x.gguf`."""

from __future__ import annotations

import re
from urllib.parse import unquote

from pipeline.base.constants import DEFAULT_REVISION

# https://HOST/owner/name[/(blob|resolve|tree)/REVISION[/FILE]][?query][#fragment]; any host, so a mirror
# (HF_ENDPOINT) works too. Revisions such as refs/pr/1 arrive percent-encoded (refs%2Fpr%2F1).
_URL_RE = re.compile(
    r"^https?://[^/\s]+/(?P<repo>[^/\s?#]+/[^/\s?#]+)"
    r"(?:/(?P<kind>blob|resolve|tree)/(?P<revision>[^/\s?#]+)(?:/(?P<file>[^?#\s]+))?)?/?(?:[?#]\S*)?$"
)


def model_text_from_url(text: str) -> str:
    """A Hub URL as mm's MODEL spelling (`owner/name:FILE[@revision]` or `owner/name`); anything else unchanged."""
    match = _URL_RE.match(text.strip())
    if match is None or match["repo"].split("/")[0] in ("datasets", "spaces"):
        return text
    repo, revision, file = match["repo"], unquote(match["revision"] or DEFAULT_REVISION), match["file"]
    if not file:
        return repo if revision == DEFAULT_REVISION else f"{repo}@{revision}"
    return f"{repo}:{unquote(file)}" + ("" if revision == DEFAULT_REVISION else f"@{revision}")
