"""Human sizes at the edge: '12G' in, bytes inside, '11.2 GiB' out."""

from __future__ import annotations

import re

from pipeline.base.errors import UsageError

# Binary units (K, M, G, T with or without "iB") because VRAM and RAM are sold in GiB:
# a "12 GB" card has 12 GiB. Explicit "KB/MB/GB/TB" are decimal, as on a disk label.
_BINARY = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DECIMAL = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

SIZE_HELP = (
    "a size such as 12G, 12GiB, 12000M, 512MB or 0 (K/M/G/T and KiB/MiB/GiB/TiB are binary; KB/MB/GB/TB decimal)"
)


def parse_size(text: str | int, *, what: str = "size", bare_unit: str = "") -> int:
    """Bytes from '12G', '12GiB', '12000M', '12GB' (decimal) or a plain integer.

    `bare_unit` is the unit of a number written without one: the command line's --vram 64 means 64 GiB.
    """
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"{what}: {text} is negative; expected {SIZE_HELP}")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"{what}: {text!r} is not a size; expected {SIZE_HELP}")
    if re.fullmatch(r"[KMGT]i?b", match.group(2)):  # 12Gb: by convention gigabits, and meant as bytes or GiB
        raise UsageError(
            f"{what}: {text!r} is ambiguous (a lowercase b is bits)",
            hint=f"write {match.group(1)}{match.group(2)[0]} or {match.group(1)}{match.group(2)[0]}iB for binary "
            f"units (a 12 GB card has 12 GiB), or {match.group(1)}{match.group(2)[0]}B for decimal",
        )
    number, unit = float(match.group(1)), (match.group(2) or bare_unit).upper()
    if unit in _DECIMAL:
        factor = _DECIMAL[unit]
    else:
        key = unit[:-2] if unit.endswith("IB") else unit
        if key not in _BINARY:
            raise UsageError(f"{what}: unknown unit {match.group(2)!r} in {text!r}; expected {SIZE_HELP}")
        factor = _BINARY[key]
    return int(number * factor)


def format_size(num_bytes: int | float) -> str:
    """'11.2 GiB' — binary units, three significant figures."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
