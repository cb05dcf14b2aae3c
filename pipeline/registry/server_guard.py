"""The checks every request to `mm run --server` passes before llama-cpp-python sees it, as an ASGI layer.

llama-cpp-python's server trusts its requests: a grammar llama.cpp cannot parse becomes a NULL sampler
and a segfault, a `logit_bias` key past the vocabulary writes outside the logits, a 100 MB body is read
whole, and its error bodies carry traceback lines and absolute paths. This layer reads a bounded body,
refuses what the server would crash on (400, 413) and rewrites error bodies, so one bad request costs
one error response and never the process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
GrammarCheck = Callable[[str], str | None]  # GBNF text -> None if llama.cpp parses it, else the reason

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_LOGPROBS = 20  # OpenAI's own bound for logprobs / top_logprobs
GENERATING = ("/v1/completions", "/v1/chat/completions", "/v1/engines/copilot-codex/completions")

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s\"'/]+/)+[^\s\"']*")
# llama-cpp-python's error handler appends the frame and route that failed: "  File "/...", line 9" and "  POST /v1/..."
_TRACEBACK_LINE = re.compile(r"^\s*(Traceback \(most recent call last\)|File \"|\^+$|(GET|POST|PUT|DELETE) /)")


class RequestRefused(Exception):
    """A request the server must not act on: answered with `status` and an OpenAI-style error."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class GuardSettings:
    model_name: str  # every response names the profile, never a blob path
    n_ctx: int
    n_vocab: int
    check_grammar: GrammarCheck
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def parse_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object; NaN/Infinity, deep nesting and non-objects are refused."""
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestRefused(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise RequestRefused(400, "the body must be a JSON object")
    return document


def _bounded_int(request: dict[str, Any], field: str, low: int, high: int) -> None:
    value = request.get(field)
    if value is None or (isinstance(value, bool) and field in ("logprobs",)):
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestRefused(400, f"{field} must be an integer from {low} to {high}", field)


def _schemas(request: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every JSON schema llama-cpp-python would turn into a grammar (response_format, tools, functions)."""
    found: list[tuple[str, Any]] = []
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and "schema" in response_format:
        found.append(("response_format.schema", response_format["schema"]))
    for field in ("tools", "functions"):
        entries = request.get(field)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            function = entry.get("function", entry) if isinstance(entry, dict) else None
            if isinstance(function, dict) and "parameters" in function:
                found.append((f"{field}[{index}].parameters", function["parameters"]))
    return found


def _check_grammars(request: dict[str, Any], check_grammar: GrammarCheck) -> None:
    grammar = request.get("grammar")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise RequestRefused(400, "grammar must be a string of GBNF", "grammar")
        if (reason := check_grammar(grammar)) is not None:
            raise RequestRefused(400, f"llama.cpp cannot parse the grammar: {reason}", "grammar")
    for field, schema in _schemas(request):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            text = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # the converter raises anything from KeyError to RecursionError
            raise RequestRefused(400, f"{field}: not a JSON schema a grammar can be made from ({type(exc).__name__})",
                                 field) from None  # fmt: skip
        if (reason := check_grammar(text)) is not None:
            raise RequestRefused(400, f"{field}: its grammar does not parse: {reason}", field)


def _check_logit_bias(request: dict[str, Any], n_vocab: int) -> None:
    bias = request.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise RequestRefused(400, "logit_bias must be an object of token id -> bias", "logit_bias")
    as_text = request.get("logit_bias_type") == "tokens"  # keys are text, tokenized by the server
    for key, value in bias.items():
        if not as_text and not (key.isascii() and key.isdigit() and int(key) < n_vocab):
            raise RequestRefused(400, f"logit_bias: {key[:40]!r} is not a token id below {n_vocab}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestRefused(400, "logit_bias values must be finite numbers", "logit_bias")


def check_request(request: dict[str, Any], settings: GuardSettings) -> dict[str, Any]:
    """The request, if llama-cpp-python may safely act on it; otherwise RequestRefused says why."""
    _bounded_int(request, "max_tokens", 1, settings.n_ctx)
    _bounded_int(request, "logprobs", 0, MAX_LOGPROBS)
    _bounded_int(request, "top_logprobs", 0, MAX_LOGPROBS)
    _bounded_int(request, "min_tokens", 0, settings.n_ctx)
    _check_logit_bias(request, settings.n_vocab)
    _check_grammars(request, settings.check_grammar)
    return request


def clean_error_message(message: str) -> str:
    """An error message without traceback lines or absolute paths (they say where mm's blobs live)."""
    lines = [line for line in message.splitlines() if not _TRACEBACK_LINE.match(line)]
    return _ABSOLUTE_PATH.sub("<path>", "\n".join(lines).strip())[:2000]


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}}).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _ErrorRewriter:
    """Wraps `send`: an error response's body is rewritten (no traceback, no paths); others pass as they are."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and int(message["status"]) >= 400:
            self.start = message
            return
        if self.start is None:
            await self.send(message)
            return
        self.chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            await self._flush()

    async def _flush(self) -> None:
        assert self.start is not None
        status, raw = int(self.start["status"]), b"".join(self.chunks)
        try:
            error = json.loads(raw)["error"]
            message, param = str(error["message"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, param = raw.decode(errors="replace"), None
        if status == 500 and re.match(r"\d+ validation errors?:", message):
            status = 400  # llama-cpp-python answers a body that fails its own pydantic model with a 500
        elif status >= 500:
            message = "the server failed this request (details in the server's log)"
        await _respond(self.send, status, error_body(status, clean_error_message(message),
                                                    param if isinstance(param, str) else None))  # fmt: skip


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRefused(400, "the client went away")
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, f"the body is larger than the server's limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


class RequestGuard:
    """The ASGI app mm serves: /health, bounded bodies, checked generation requests, clean errors."""

    def __init__(self, app: App, settings: GuardSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/health":
            await _respond(send, 200, json.dumps({"status": "ok", "model": self.settings.model_name}).encode())
            return
        try:
            body = await self._checked_body(scope, receive)
        except RequestRefused as refused:
            await _respond(send, refused.status, error_body(refused.status, refused.message, refused.param))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only a disconnect is left to hear
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        inner = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(inner, replay, _ErrorRewriter(send))

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _declared_length(scope)
        if declared is not None and (declared < 0 or declared > self.settings.max_body_bytes):
            raise RequestRefused(
                413, f"the body is larger than {self.settings.max_body_bytes} bytes (the server's body limit)"
            )
        body = await _read_body(receive, self.settings.max_body_bytes)
        if scope["method"] != "POST" or not scope["path"].startswith(("/v1/", "/extras/")):
            return body
        if scope["path"] == "/v1/embeddings":  # llama-cpp-python answers them with a 500 unless loaded for them
            raise RequestRefused(400, "this server generates text; it does not compute embeddings")
        request = parse_body(body)
        if scope["path"] in GENERATING:
            request = check_request(request, self.settings)
        return json.dumps({**request, "model": self.settings.model_name}).encode()
