"""Names of a split GGUF's shards (`x-00001-of-00003.gguf`): llama.cpp's gguf-split naming, read and written.

A leaf: it imports nothing of mm, so the header reader, the Hub code and the quantizer can all use it.
"""

from __future__ import annotations

import re
from pathlib import Path

# llama.cpp's split naming: src/llama.cpp llama_split_path, "%s-%05d-of-%05d.gguf".
SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_names(filename: str) -> list[str]:
    """All shard names of a split GGUF given any one of them (`x-00001-of-00003.gguf`), else [filename]."""
    match = SHARD_RE.match(filename)
    if not match:
        return [filename]
    count = int(match["count"])
    return [f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def shard_paths(path: Path) -> list[Path]:
    """Every shard's path beside `path` (any one shard of a split GGUF), or just [path] for one file."""
    names = shard_names(path.name)
    return [path.with_name(name) for name in names] if len(names) > 1 else [path]


def unsplit_stem(filename: str) -> str:
    """The model's name without the shard suffix or `.gguf`: what one file made from all shards is called."""
    match = SHARD_RE.match(filename)
    return match["stem"] if match else filename.removesuffix(".gguf")
