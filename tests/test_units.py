"""Human sizes parse once at the edge, and bad ones say what is allowed."""

from __future__ import annotations

import pytest

from pipeline.base.errors import UsageError
from pipeline.base.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12G", 12 << 30),
        ("12GiB", 12 << 30),
        ("12000M", 12000 << 20),
        ("0", 0),
        ("1.5g", 3 << 29),
        ("512MB", 512_000_000),
        ("64 GiB", 64 << 30),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["twelve", "12Q", "-3G", ""])
def test_parse_size_rejects_with_allowed_forms(text: str) -> None:
    with pytest.raises(UsageError, match="12GiB"):
        parse_size(text, what="--vram")


def test_format_size_round_trip_scale() -> None:
    assert format_size(12 << 30) == "12 GiB"
    assert format_size(1536) == "1.5 KiB"
