"""`mm run --server` survives any request: each case against the real server in a subprocess."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.registry.server import bind_port
from pipeline.spec.hardware import get_hardware
from pipeline.spec.run_settings import RunSettings
from tests.conftest import publish_fitted
from tests.served import Server, free_port, hammer, mixed_bodies, request, running

ALLOWED_ORIGIN = "http://allowed.example"
CTX = 256


@pytest.fixture(scope="module")
def served_env(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An mm home with the profile `served` (context 256), as the environment a server process gets."""
    home = tmp_path_factory.mktemp("served") / "mm-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_HOME", str(home))
        publish_fitted(tiny_model, get_hardware("cpu-64g"), name="served", settings=RunSettings(n_ctx=CTX))
    return {**os.environ, "MM_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}


@pytest.fixture(scope="module")
def server(served_env: dict[str, str]) -> Iterator[Server]:
    with running("served", served_env, ["--cors", ALLOWED_ORIGIN]) as started:
        yield started


def _completion(**fields: object) -> bytes:
    return json.dumps({"prompt": "hello", "max_tokens": 3, **fields}).encode()


def _still_answers(server: Server) -> None:
    assert server.process.poll() is None, server.stderr()
    assert request(server.port, "/v1/completions", _completion()).status == 200


@pytest.mark.parametrize(
    "grammar", ["root ::= [a-", "root ::= x", 'x ::= "a"', 'root ::= "a"{99999999}', "root ::= (((("]
)
def test_a_grammar_llama_cpp_cannot_parse_is_a_400_not_a_segfault(server: Server, grammar: str) -> None:
    answer = request(server.port, "/v1/completions", _completion(grammar=grammar))
    assert answer.status == 400 and answer.json()["error"]["param"] == "grammar"  # type: ignore[index]
    _still_answers(server)


def test_a_valid_grammar_constrains_the_output(server: Server) -> None:
    answer = request(server.port, "/v1/completions", _completion(grammar='root ::= "yes" | "no"'))
    assert answer.status == 200 and answer.json()["choices"][0]["text"] in ("yes", "no")  # type: ignore[index]


def test_a_schema_that_makes_no_grammar_is_a_400(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "response_format": {"type": "json_object", "schema": {"type": "string", "pattern": "[a-"}}}  # fmt: skip
    answer = request(server.port, "/v1/chat/completions", json.dumps(body).encode())
    assert answer.status == 400, answer.body
    _still_answers(server)


def test_a_body_over_the_limit_is_a_413_before_it_is_read_whole(server: Server) -> None:
    assert request(server.port, "/v1/completions", b" " * (1 << 20) + _completion()).status == 413
    _still_answers(server)


def test_max_body_raises_the_limit(served_env: dict[str, str]) -> None:
    padded = b" " * (1 << 20) + _completion()
    with running("served", served_env, ["--max-body", "2M"]) as big:
        assert request(big.port, "/v1/completions", padded).status == 200


@pytest.mark.parametrize("max_tokens", [CTX + 1, 10**9, 0, -5, "x", 2.5])
def test_max_tokens_is_bounded_by_the_context(server: Server, max_tokens: object) -> None:
    answer = request(server.port, "/v1/completions", _completion(max_tokens=max_tokens))
    assert answer.status == 400 and answer.json()["error"]["param"] == "max_tokens"  # type: ignore[index]


def test_logit_bias_outside_the_vocabulary_is_a_400(server: Server) -> None:
    for bias in ({"99999999": 1}, {"abc": 1}, {"5": "x"}):
        assert request(server.port, "/v1/completions", _completion(logit_bias=bias)).status == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}'),  # llama-cpp-python: a 500 with its frames
        ("/v1/chat/completions", b'{"messages": "not a list"}'),
        ("/v1/completions", b"{not json"),
        ("/v1/embeddings", b'{"input": 5}'),
    ],
)
def test_error_bodies_carry_no_traceback_or_absolute_path(
    server: Server, served_env: dict[str, str], path: str, body: bytes
) -> None:
    answer = request(server.port, path, body)
    assert 400 <= answer.status < 500, answer.body
    text = answer.body.decode()
    assert 'File "' not in text and "Traceback" not in text and "site-packages" not in text
    assert served_env["MM_HOME"] not in text and str(Path(__file__).parents[1]) not in text


def test_the_response_names_the_profile_not_the_blob(server: Server) -> None:
    answer = request(server.port, "/v1/completions", _completion(model="/etc/passwd"))
    assert answer.status == 200 and answer.json()["model"] == "served"
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert request(server.port, "/v1/chat/completions", json.dumps(chat).encode()).json()["model"] == "served"


def test_cors_answers_only_the_origins_named(server: Server) -> None:
    hostile = request(server.port, "/v1/completions", _completion(), headers={"Origin": "http://evil.example"})
    assert hostile.status == 200 and "access-control-allow-origin" not in hostile.headers
    allowed = request(server.port, "/v1/completions", _completion(), headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers


def test_health_says_ok_with_the_profile_name(server: Server) -> None:
    answer = request(server.port, "/health")
    assert answer.status == 200 and answer.json() == {"status": "ok", "model": "served"}


def test_mixed_hostile_load_leaves_the_server_answering(server: Server) -> None:
    bodies = mixed_bodies(40)
    answers = hammer(server.port, bodies, concurrency=8)
    assert all(answer.status in (200, 400, 413) for answer in answers), [a.status for a in answers]
    assert [a.status for a in answers[:2]] == [200, 200]
    assert server.peak_rss_bytes() < 1 << 30  # ten 2 MiB bodies were refused, not buffered
    _still_answers(server)


def test_ctrl_c_exits_130_and_the_port_is_free_at_once(served_env: dict[str, str]) -> None:
    port = free_port()
    first = Server("served", port, served_env)
    try:
        first.wait_ready()
        assert request(port, "/v1/completions", _completion()).status == 200  # leaves a connection in TIME_WAIT
        first.process.send_signal(signal.SIGINT)
        assert first.process.wait(timeout=30) == 130, first.stderr()
    finally:
        first.stop()
    again = Server("served", port, served_env)  # no SO_REUSEADDR: refused for a minute
    try:
        again.wait_ready()
    finally:
        again.stop()


def test_the_port_binds_while_an_old_connection_is_in_time_wait() -> None:
    listener = bind_port(free_port())
    port = listener.getsockname()[1]
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    listener.close()
    client.close()
    bind_port(port).close()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_reply_stops_at_max_tokens_and_says_length_when_cut_there(server: Server, path: str) -> None:
    """llama-cpp-python checks max_tokens only after a whole UTF-8 character; this random model emits byte
    tokens, and before pipeline/llama/token_limit.py max_tokens 5 was answered with 9 tokens."""
    for limit, seed in itertools.product((3, 5, 7), (0, 1, 3)):
        body: dict[str, object] = {"max_tokens": limit, "temperature": 1.5, "seed": seed}
        body.update(
            {"prompt": "hello"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
        )
        answer = request(server.port, path, json.dumps(body).encode())
        assert answer.status == 200, answer.body
        reply = answer.json()
        tokens, finish = reply["usage"]["completion_tokens"], reply["choices"][0]["finish_reason"]  # type: ignore[index]
        assert 1 <= tokens <= limit, (limit, seed, reply)
        assert finish == ("length" if tokens == limit else "stop"), (limit, seed, reply)


def test_a_cut_inside_a_grammar_s_multi_byte_character_is_a_short_answer(server: Server) -> None:
    """The cut ends generation without sampling (forcing the end token instead aborts llama.cpp under a grammar
    that does not allow it)."""
    for limit in (1, 2, 3, 4):
        body = _completion(grammar='root ::= "éééé"', max_tokens=limit, temperature=0.0)
        answer = request(server.port, "/v1/completions", body)
        assert answer.status == 200, answer.body
        assert answer.json()["usage"]["completion_tokens"] <= limit  # type: ignore[index]
    _still_answers(server)
