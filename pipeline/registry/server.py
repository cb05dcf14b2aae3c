"""`mm run --server`: llama-cpp-python's OpenAI-compatible server for one profile, behind mm's request guard.

The port is bound once, with SO_REUSEADDR, before the model loads (a taken port is an error in a second,
and a restart is not refused while the last run's connections sit in TIME_WAIT); that socket is the one
uvicorn serves. On the way out the model is freed and llama.cpp's log callback unset while Python is still
alive: a Python callback called from a destructor during interpreter teardown is a segfault (exit 139
where Ctrl-C should give 130).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.base.errors import UsageError
from pipeline.base.plain_text import printable
from pipeline.base.units import parse_size
from pipeline.llama.llama_log import route_llama_log
from pipeline.llama.overrides import tensor_overrides
from pipeline.llama.token_limit import hold_max_tokens
from pipeline.registry.profile import Profile
from pipeline.registry.run import run_kwargs
from pipeline.registry.server_guard import DEFAULT_MAX_BODY_BYTES, GuardSettings, RequestGuard

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MIN_BODY_BYTES = 1024  # a chat request with a short prompt
ORIGIN_RE = re.compile(r"\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
MAX_CONCURRENT_CONNECTIONS = 64  # beyond this uvicorn answers 503 instead of queueing without bound


class PortInUseError(UsageError):
    """`mm run --server --port P` where P is taken: found before the model is loaded."""


@dataclass(frozen=True)
class ServerOptions:
    port: int = 8000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = field(default=())  # none: browsers get no CORS headers at all
    chat_format: str | None = None
    verify: bool = False


def server_options(*, port: int, max_body: str, cors: list[str] | None, verify: bool = False) -> ServerOptions:
    """`mm run --server`'s options from their command-line spelling, each checked (also without --server)."""
    for origin in cors or []:
        if not ORIGIN_RE.fullmatch(origin):
            raise UsageError(f"allowed origin {printable(origin)!r}: expected one such as http://localhost:3000 "
                             "(or *)", param="cors_origins")  # fmt: skip
    try:
        body = parse_size(max_body, what="the largest request body")
    except UsageError as exc:
        raise UsageError(exc.message, param="max_body_bytes") from None
    if body < MIN_BODY_BYTES:
        raise UsageError(f"largest request body {max_body}: at least {MIN_BODY_BYTES} bytes", param="max_body_bytes")
    return ServerOptions(port=port, max_body_bytes=body, cors_origins=tuple(cors or ()), verify=verify)


def bind_port(port: int) -> socket.socket:
    """127.0.0.1:`port` bound (SO_REUSEADDR) for the server, so a taken port fails before the model loads."""
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port}: expected a port number from 1 to 65535", param="port")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        raise PortInUseError(
            f"{LOOPBACK}:{port} {reason}", hint="choose another port, or stop what is listening there"
        ) from None
    return sock


@contextmanager
def grammar_checker(model_path: Path) -> Iterator[tuple[Callable[[str], str | None], int]]:
    """(check, n_vocab): `check(gbnf)` asks llama.cpp's own grammar parser, on a vocab-only load of the model.

    llama-cpp-python adds whatever llama_sampler_init_grammar returns to its sampler chain; for a grammar
    that does not parse that is NULL, and the next token sampled segfaults the server.
    """
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise UsageError(f"llama.cpp could not read the vocabulary of {model_path.name}")
    vocab = llama_cpp.llama_model_get_vocab(model)

    def check(grammar: str) -> str | None:
        try:
            text = grammar.encode()
        except UnicodeEncodeError:
            return "not UTF-8 text"
        if b"\0" in text:
            return "it contains a NUL character"
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text, b"root")
        if not sampler:
            return "not valid GBNF with a `root` rule (llama.cpp's grammars/README.md)"
        llama_cpp.llama_sampler_free(sampler)
        return None

    try:
        yield check, int(llama_cpp.llama_vocab_n_tokens(vocab))
    finally:
        llama_cpp.llama_model_free(model)


def _without_open_cors(app: Any, origins: tuple[str, ...]) -> None:
    """llama-cpp-python allows every Origin with credentials; mm allows none, or exactly the ones named."""
    from starlette.middleware.cors import CORSMiddleware

    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    if origins:
        methods, headers = ["GET", "POST", "OPTIONS"], ["Authorization", "Content-Type"]
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_credentials=False,
                           allow_methods=methods, allow_headers=headers)  # fmt: skip


def _served_model() -> Any:
    """The Llama that llama-cpp-python's server app loaded (None before create_app or after release)."""
    from llama_cpp.server import app as server_app

    return getattr(getattr(server_app, "_llama_proxy", None), "_current_model", None)


def _hold_max_tokens() -> None:
    """Every completion the server answers stops at its max_tokens (pipeline/llama/token_limit.py says why)."""
    if (model := _served_model()) is not None:
        hold_max_tokens(model)


def _release_llama() -> None:
    """Free the served model and hand llama.cpp's log back to its C default while the interpreter is alive."""
    import llama_cpp
    from llama_cpp.server import app as server_app

    if (model := _served_model()) is not None:
        model.close()
    server_app._llama_proxy = None
    llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))  # NULL: llama.cpp's own


def serve(profile: Profile, options: ServerOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the profile on 127.0.0.1:options.port until Ctrl-C (which then propagates as KeyboardInterrupt).

    `on_ready(url)` is called once the port is bound, before the model loads.
    """
    sock = bind_port(options.port)
    try:
        kwargs = run_kwargs(profile, verify=options.verify)
        route_llama_log()
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings

        url = f"http://{LOOPBACK}:{options.port}/v1"
        if on_ready is not None:
            on_ready(url)
        model_settings = {("model" if key == "model_path" else key): value for key, value in kwargs.items()}
        if options.chat_format is not None:
            model_settings["chat_format"] = options.chat_format
        with grammar_checker(Path(kwargs["model_path"])) as (check, n_vocab):
            try:
                with tensor_overrides(profile.run.tensor_overrides):  # the server loads its model here
                    app = create_app(
                        server_settings=ServerSettings(host=LOOPBACK, port=options.port),
                        model_settings=[ModelSettings(model_alias=profile.name, verbose=False, **model_settings)],
                    )
                _without_open_cors(app, options.cors_origins)
                _hold_max_tokens()
                guard = GuardSettings(profile.name, int(kwargs["n_ctx"]), n_vocab, check, options.max_body_bytes)
                config = uvicorn.Config(RequestGuard(app, guard), log_level="warning",
                                        limit_concurrency=MAX_CONCURRENT_CONNECTIONS)  # fmt: skip
                log.info("serving %s on %s", profile.name, url)
                uvicorn.Server(config).run(sockets=[sock])
            finally:
                _release_llama()
    finally:
        sock.close()
