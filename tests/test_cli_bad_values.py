"""Every option of every command, given a bad value: one error message, an exit code from the README's
table, no traceback. Generated from the typer app, so a new option is covered without writing a test.

The `mm` fixture runs with catch_exceptions=False: anything but a clean exit (a pydantic ValidationError,
an OSError) fails the test with its traceback. An option that takes a value with no wrong spelling
(a token, a prompt) is listed in ANY_VALUE, with why; a new option must be given a bad value here or
there, or the catalogue test fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer
from typer import _click
from typer.testing import Result

from pipeline.cli import app
from pipeline.spec.hardware import get_hardware
from tests.conftest import publish_fitted

README_EXIT_CODES = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11}  # README "Exit codes" (usage … lock busy)

# A bad value for options whose type alone does not make one (strings, paths, choices).
BAD_BY_NAME = {
    "--hardware": "no-such-card",
    "--vram": "12 parsecs",
    "--ram": "lots",
    "--kv-type": "q8",
    "--n-gpu-layers": "most",
    "--quants": "q9_z",
    "--to": "q4km",
    "--format": "docker",
    "--engine": "gpu",
    "--shard": "5/4",
    "--report": "/nonexistent-folder/report.json",
    "--recipes": "/nonexistent-recipes-folder",
    "--chat-format": "klingon",
    "--imatrix": "/nonexistent/imatrix.dat",
    "--output-tensor-type": "q9_z",
    "--token-embedding-type": "q9_z",
    "--tensor-type": "attn_v",
    "--output": "/nonexistent-folder/out.gguf",
    "--llama-quantize": "/nonexistent/llama-quantize",
    "--source": "/nonexistent/llama-cpp-python.tar.gz",
    "--name": "no/slashes allowed",
    "--file": "other.gguf",  # MODEL already names a file
    "--revision": "no-such-branch",  # the (unreachable) Hub: a Hub error
    "--repo": "no-owner-slash-name",
    "--profile": "tiny",  # MODEL names a file, not a repo
    "--outtype": "f8",
    "--text": "/nonexistent/calibration.txt",
    "--eval-text": "/nonexistent/evaluation.txt",
    "--budget": "eleven gigs",
    "--save": "Not A Class!",
    "--hardware-file": "/nonexistent-folder/hardware.toml",
    "--threads": "none",
    "--ref": "/nonexistent/ref.gguf",
    "--max-body": "lots",
    "--cors": "javascript:alert(1)",
    "--rpc": "no-port-here",
    "--tensor-split": "1,x",
    "--split-mode": "diagonal",
    "--device": "bad name!",
    "--host": "bad host!",
}
# Options where every value is allowed: why no value is wrong.
ANY_VALUE = {
    "--token": "any string may be a token; only the Hub can refuse it",
    "--prompt": "any text is a prompt",
    "--cmake-arg": "cmake's own options; only a (minutes-long) build could reject one",
}
# The valid arguments each command is run with, by metavar.
PROFILE = "tiny@cpu"


def _commands() -> Iterator[tuple[list[str], _click.Command]]:
    def walk(path: list[str], command: _click.Command) -> Iterator[tuple[list[str], _click.Command]]:
        sub = getattr(command, "commands", None)
        if sub:
            for name, child in sub.items():
                yield from walk([*path, name], child)
        else:
            yield path, command

    yield from walk([], typer.main.get_command(app))


def _value_options(command: _click.Command) -> list[_click.Parameter]:
    return [
        p
        for p in command.params
        if p.param_type_name == "option" and not getattr(p, "is_flag", False) and not getattr(p, "count", False)
        and p.name != "help"
    ]  # fmt: skip


def _annotation(param: _click.Parameter) -> object:
    return getattr(getattr(param, "type_descriptor", None), "annotation", None)


def _long_name(param: _click.Parameter) -> str:
    return next(o for o in param.opts if o.startswith("--"))


CASES = [
    pytest.param(path, _long_name(p), id=f"{' '.join(path)} {_long_name(p)}")
    for path, command in _commands()
    for p in _value_options(command)
    if _long_name(p) not in ANY_VALUE
]


def _bad_value(param: _click.Parameter) -> str:
    name = _long_name(param)
    if name in BAD_BY_NAME:
        return BAD_BY_NAME[name]
    low = getattr(param, "min", None)
    if low is not None:
        return str(int(low) - 1)  # below the range
    return "not-a-number"


def _command(path: list[str]) -> _click.Command:
    return next(c for p, c in _commands() if p == path)


@pytest.fixture
def args_for(tiny_model: Path, tmp_path: Path) -> Callable[[_click.Command], list[str]]:
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name=PROFILE)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'hardware = "cpu-64g"\n[source]\npath = "{tiny_model}"\n[quantize]\ntypes = ["q8_0"]\n')
    values = {
        "MODEL": str(tiny_model),
        "NAME": PROFILE,
        "NAME|FILE": PROFILE,
        "NAME...": PROFILE,
        "[RECIPE]...": str(recipe),
        "REPO|DIR": str(tmp_path),
    }
    # What else a command needs to get as far as the option (quantize needs a type).
    needs = {"quantize": ["--to", "q8_0"], "push": ["--repo", "acme/tiny-GGUF"], "eval": ["--ref", str(tiny_model)]}

    def args(command: _click.Command) -> list[str]:
        out = list(needs.get(str(command.name), []))
        for param in command.params:
            if param.param_type_name == "argument" and (param.required or param.metavar in values):
                if param.metavar not in values:
                    pytest.fail(f"{command.name}: no valid value known for argument {param.metavar}")
                out.append(values[str(param.metavar)])
        return out

    return args


def test_every_value_option_is_covered() -> None:
    for path, command in _commands():
        for param in _value_options(command):
            name = _long_name(param)
            typed = getattr(param, "min", None) is not None or _annotation(param) in (int, float)
            assert name in BAD_BY_NAME or name in ANY_VALUE or typed, (
                f"mm {' '.join(path)} {name}: add a bad value to BAD_BY_NAME (or a reason to ANY_VALUE)"
            )


@pytest.mark.parametrize(("path", "option"), CASES)
def test_a_bad_value_is_one_clear_error(
    mm: Callable[..., Result], args_for: Callable[[_click.Command], list[str]], path: list[str], option: str
) -> None:
    command = _command(path)
    param = next(p for p in _value_options(command) if _long_name(p) == option)
    argv = [*path, *args_for(command), option, _bad_value(param)]
    if option == "--to":
        argv = [*path, *args_for(command)[2:], option, _bad_value(param)]
    if path == ["pull"]:
        argv = ["pull", "acme/tiny-GGUF:tiny.gguf", option, _bad_value(param)]
    result = mm(*argv)
    errors = [line for line in result.stderr.splitlines() if re.match(r"(?i)^error\b", line)]
    assert result.exit_code in README_EXIT_CODES, f"mm {' '.join(argv)}: exit {result.exit_code}\n{result.output}"
    assert len(errors) == 1, f"mm {' '.join(argv)}: expected one error line\n{result.stderr}"
    assert "validation error" not in result.output.lower()
    assert option in result.stderr or _bad_value(param) in result.stderr or result.exit_code == 3, result.stderr


# Arguments too: each command's arguments, one at a time, with a value that names nothing.
BAD_ARGUMENT = {
    "MODEL": "/nonexistent/model.gguf",
    "NAME": "no-such-profile",
    "NAME|FILE": "/nonexistent/model.gguf",
    "NAME...": "no-such-profile",
    "[NAME]": "no-such-profile",
    "[RECIPE]...": "no-such-recipe",
    "[PATH]...": "/nonexistent/recipe.toml",
    "REPO[:FILE[@COMMIT]]...": "org/absent:x.gguf",
    "[FILE]": "absent.gguf",  # pull: a file the (unreachable) Hub cannot have
    "REPO|DIR": "no-such-folder",  # convert: neither a folder nor owner/name
    "HOST:PORT,...": "127.0.0.1:9",  # rpc ls: a worker that is not there
}
ANY_ARGUMENT = {"[PROMPT]": "any text is a prompt"}

ARGUMENT_CASES = [
    pytest.param(path, str(p.metavar), id=f"{' '.join(path)} {p.metavar}")
    for path, command in _commands()
    for p in command.params
    if p.param_type_name == "argument" and p.metavar not in ANY_ARGUMENT
]


def test_every_argument_is_covered() -> None:
    for path, metavar in (case.values for case in ARGUMENT_CASES):
        assert metavar in BAD_ARGUMENT, f"mm {' '.join(path)} {metavar}: add a bad value to BAD_ARGUMENT"


@pytest.mark.parametrize(("path", "metavar"), ARGUMENT_CASES)
def test_a_bad_argument_is_one_clear_error(
    mm: Callable[..., Result],
    args_for: Callable[[_click.Command], list[str]],
    tiny_model: Path,
    path: list[str],
    metavar: str,
) -> None:
    command = _command(path)
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    if path == ["pull"]:
        good = {"MODEL": "acme/tiny-GGUF"}
    elif [a.metavar for a in arguments] == [metavar]:  # its only argument: nothing else to give
        good = {}
    else:
        good = dict(zip([a.metavar for a in arguments], args_for(command), strict=False))
    argv = [*path, *[BAD_ARGUMENT[metavar] if m == metavar else v for m, v in good.items()]]
    if metavar not in good:
        argv.append(BAD_ARGUMENT[metavar])
    if path == ["quantize"]:
        argv += ["--to", "q8_0"]
    if path == ["push"]:
        argv += ["--repo", "acme/tiny-GGUF"]
    result = mm(*argv)
    errors = [line for line in result.stderr.splitlines() if re.match(r"(?i)^error\b", line)]
    assert result.exit_code in README_EXIT_CODES, f"mm {' '.join(argv)}: exit {result.exit_code}\n{result.output}"
    assert len(errors) == 1, f"mm {' '.join(argv)}: expected one error line\n{result.stderr}"
    # the message names what was given (recipe validate lists each file's problem on stdout)
    assert BAD_ARGUMENT[metavar].split(":")[0] in result.output or result.exit_code == 3, result.output
