"""Text from files, servers and users as one plain line: control characters found, refused or made visible.

A newline in a profile's model name becomes a directive in an Ollama Modelfile; an ESC sequence in a
file name recolours or rewrites the user's terminal. Values that go into a file another program parses
are refused (`require_plain`); text mm only shows is escaped (`printable`).
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators some parsers split on.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    return CONTROL.search(text) is not None


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as an escape (\\x1b), so a terminal only prints it."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char in "\n\t":
            return char
        return repr(char)[1:-1] if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return CONTROL.sub(escape, text)


def require_plain(text: str, field: str) -> str:
    """`text` unchanged, or ValueError naming `field` (never echoing the value) if it has a control character."""
    if has_control(text):
        raise ValueError(f"{printable(field)} contains a control character (newline, ESC, ...); refused")
    return text
