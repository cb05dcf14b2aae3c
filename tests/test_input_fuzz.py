"""Fuzzing the newer inputs (issue 19): seeded mutants of a profile document, a recipe and server request
bodies. Every case ends in an answer — a result, or one message with an exit code (an HTTP status for the
server) — with no traceback, no crash, no slow case, and nothing written outside MM_HOME."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.base.home import mm_home
from pipeline.registry.store import profile_path
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.conftest import publish_fitted, write_recipe
from tests.served import hammer, request, running

SEED = 19
CASE_SECONDS = 5
ODD_VALUES: list[Any] = [
    None, True, -1, 0, 2**31, 2**63, -(2**63), 10**400, 1e308, -0.0, "", "x" * 100_000, "../../../etc/passwd",
    "/etc/passwd", "a\nFROM /etc/passwd", "\x1b[2J", "\x00", "q4_k_m", [], [1, "a", None], {}, {"k": [{}]},
]  # fmt: skip


def _mutate_json(document: Any, rng: random.Random) -> Any:
    """One structural change somewhere in a JSON document: a value replaced, a key dropped or added."""
    copy = json.loads(json.dumps(document))
    node, path = copy, []
    while isinstance(node, dict | list) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        path.append(key)
        node = node[key]
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        action = rng.randrange(3)
        if action == 0:
            del node[key]
        elif action == 1:
            node[key] = rng.choice(ODD_VALUES)
        else:
            node[rng.choice(["extra", "__proto__", "\x1b", key + "_"])] = rng.choice(ODD_VALUES)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = rng.choice(ODD_VALUES)
    return copy


def _mutate_text(text: str, rng: random.Random) -> str:
    """A textual change: truncated, a byte flipped, a line dropped or doubled, nesting, a control character."""
    action = rng.randrange(6)
    if action == 0:
        return text[: rng.randrange(len(text))]
    if action == 1:
        at = rng.randrange(len(text))
        return text[:at] + chr(ord(text[at]) ^ (1 << rng.randrange(7))) + text[at + 1 :]
    lines = text.splitlines()
    at = rng.randrange(len(lines))
    if action == 2:
        return "\n".join(lines[:at] + lines[at + 1 :])
    if action == 3:
        return "\n".join(lines[: at + 1] + lines[at:])
    if action == 4:
        return text + "\nx = " + "[" * 5000 + "]" * 5000 + "\n"
    return "\n".join(
        [*lines[:at], lines[at] + rng.choice(["\x00", "\x1b[31m", "\r", "\u2028", "\x7f"]), *lines[at + 1 :]]
    )


class _Slow(Exception):
    pass


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[None]:
    """Nothing may be created, changed or deleted outside MM_HOME and the input folder (the rest of this test's
    folder, the repo)."""

    def listing() -> dict[str, tuple[int, int]]:
        roots = [p for p in tmp_path.iterdir() if p.name not in ("mm-home", "recipes")] + [Path.cwd()]
        files = [f for root in roots for f in ([root] if root.is_file() else root.rglob("*"))]
        skip = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return {
            str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file() and not skip & set(f.parts)
        }

    before = listing()
    yield
    assert listing() == before


def _run_cases(cases: list[Callable[[CliRunner], list[list[str]]]]) -> dict[int, int]:
    """Each case sets up its input and names the commands to run; returns exit codes -> count."""
    import typer.testing

    from pipeline.cli import app

    runner, codes = CliRunner(), dict[int, int]()
    command = typer.main.get_command(app)
    saved = typer.testing._get_command
    typer.testing._get_command = lambda _: command  # built once: the runner rebuilds it on every call
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Slow()))
    try:
        for case in cases:
            for args in case(runner):
                signal.alarm(CASE_SECONDS)
                try:
                    result = runner.invoke(app, args, catch_exceptions=True)
                finally:
                    signal.alarm(0)
                exc = result.exception
                assert exc is None or isinstance(exc, SystemExit), (args, repr(exc))  # no traceback, no hang
                assert "\x1b" not in result.output and "Traceback" not in result.output, args
                if result.exit_code:
                    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
                    assert len(errors) == 1 and result.stderr.count("error:") == 1, result.stderr  # one message
                codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
    finally:
        signal.signal(signal.SIGALRM, previous)
        typer.testing._get_command = saved
    return codes


def test_fuzzed_profile_documents_give_messages_not_tracebacks(tiny_model: Path, outside: None) -> None:
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name="victim")
    document = json.loads(profile_path(mm_home(), "victim").read_text())
    rng = random.Random(SEED)
    target = profile_path(mm_home(), "victim")

    def case(index: int) -> Callable[[CliRunner], list[list[str]]]:
        def setup(_: CliRunner) -> list[list[str]]:
            mutant = _mutate_json(document, rng)
            text = json.dumps(mutant) if index % 3 else _mutate_text(json.dumps(mutant, indent=1), rng)
            target.write_text(text, encoding="utf-8", errors="surrogateescape")
            return [["show", "victim"], ["export", "victim"], ["export", "victim", "--format", "llama-server"],
                    ["ls", "--json"]]  # fmt: skip

        return setup

    codes = _run_cases([case(i) for i in range(320)])
    assert sum(codes.values()) == 4 * 320 and sum(n for code, n in codes.items() if code) > 320


RECIPE = """# a recipe to mutate
hardware = "cpu-32g"
[source]
path = "model.gguf"
[quantize]
types = ["q8_0", "q4_k_m"]
[run]
ctx = 256
batch = 128
ubatch = 64
kv_type = "q8_0"
flash_attn = true
"""


def test_fuzzed_recipes_give_messages_not_tracebacks(recipes_folder: Path, outside: None) -> None:
    rng = random.Random(SEED)
    folder = str(recipes_folder)

    def case(index: int) -> Callable[[CliRunner], list[list[str]]]:
        def setup(_: CliRunner) -> list[list[str]]:
            for old in recipes_folder.glob("*.toml"):
                old.unlink()
            write_recipe(recipes_folder, "fuzz", _mutate_text(RECIPE, rng))
            return [["recipe", "validate", "--recipes", folder], ["recipe", "ls", "--recipes", folder],
                    ["build", "fuzz", "--recipes", folder, "--dry-run", "--offline"]]  # fmt: skip

        return setup

    codes = _run_cases([case(i) for i in range(320)])
    assert sum(codes.values()) == 3 * 320 and sum(n for code, n in codes.items() if code) > 320


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {"prompt": "hello", "max_tokens": 3, "temperature": 0.5, "stop": ["\n"], "logprobs": 2}),
    ("/v1/chat/completions", {"messages": CHAT,
                              "max_tokens": 3, "seed": 1, "response_format": {"type": "json_object"}}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "grammar": 'root ::= [a-z]{1,3} "."', "logit_bias": {"5": 1}}),
    ("/v1/embeddings", {"input": "hello"}),
    ("/extras/tokenize", {"input": "hello"}),
]  # fmt: skip


def test_fuzzed_server_bodies_get_answers_and_the_server_lives(tiny_model: Path, tmp_path: Path, outside: None) -> None:
    publish_fitted(tiny_model, get_hardware("cpu-64g"), name="fuzzed", settings=RunSettings(n_ctx=256))
    rng = random.Random(SEED)
    bodies = []
    for index in range(330):
        path, body = BODIES[index % len(BODIES)]
        mutant = _mutate_json(body, rng)
        text = json.dumps(mutant) if index % 4 else _mutate_text(json.dumps(mutant), rng)
        bodies.append((path, text.encode(errors="surrogateescape")))
    import os

    with running("fuzzed", {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}) as server:
        answers = hammer(server.port, bodies, concurrency=4)
        assert server.process.poll() is None, server.stderr()
        assert request(server.port, "/health").status == 200
    statuses = [a.status for a in answers]
    assert 0 not in statuses and not [s for s in statuses if s >= 500], sorted(set(statuses))
    for answer in answers:
        assert (
            b"Traceback" not in answer.body and b'File \\"' not in answer.body and b"site-packages" not in answer.body
        )
    assert statuses.count(200) > 30 and statuses.count(400) > 30
