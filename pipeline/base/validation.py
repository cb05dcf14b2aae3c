"""Turn pydantic's and TOML's errors into 'file: field: problem' lines a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic loads with the models whose errors are described, not with a did_you_mean
    from pydantic import BaseModel, ValidationError


def did_you_mean(value: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a mistyped value, ignoring case, `_` and `-` (q4km → q4_k_m), or None."""

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    by_squashed = {squash(c): c for c in choices}
    if squash(value) in by_squashed:
        return by_squashed[squash(value)]
    close = difflib.get_close_matches(squash(value), list(by_squashed), n=1, cutoff=0.75)
    return by_squashed[close[0]] if close else None


def _sibling_keys(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed beside the last part of `loc` in `model` (for a suggestion on an unknown key)."""
    from pydantic import BaseModel

    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def describe_validation_error(source: str, error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem: `recipes/x.toml: quantize.types.0: unknown quantization type 'q9' …`.

    Given the `model` that was validated, an unknown key gets a suggestion (allow_requantise → allow_requantize).
    """
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            close = (
                did_you_mean(str(item["loc"][-1]), _sibling_keys(model, tuple(item["loc"]))) if item["loc"] else None
            )
            message = (
                f"unknown key; did you mean {close!r}?"
                if close
                else ("unknown key (not part of the schema; check its spelling)")
            )
        elif item["type"] == "missing":
            message = "required field is missing"
        message = message.removeprefix("Value error, ")
        lines.append(f"{source}: {field}: {message}")
    return "\n".join(lines)


MAX_TOML_BYTES = 1 << 20  # a recipe or hardware file is a few hundred bytes; a megabyte is not one


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; raise ValueError naming the file (and the line, for a syntax error)."""
    import tomllib  # late: `mm inspect` reaches this module for its suggestions and reads no TOML

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
