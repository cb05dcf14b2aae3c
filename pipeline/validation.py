"""Turn pydantic's and TOML's errors into 'file: field: problem' lines a user can act on."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def describe_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: `recipes/x.toml: quantize.types.0: unknown quantization type 'q9' …`."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (not part of the schema; check its spelling)"
        elif item["type"] == "missing":
            message = "required field is missing"
        message = message.removeprefix("Value error, ")
        lines.append(f"{source}: {field}: {message}")
    return "\n".join(lines)


MAX_TOML_BYTES = 1 << 20  # a recipe or hardware file is a few hundred bytes; a megabyte is not one


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; raise ValueError naming the file (and the line, for a syntax error)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TOML_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TOML_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TOML_BYTES} bytes; not a recipe or hardware file")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid TOML: nested too deeply") from None
