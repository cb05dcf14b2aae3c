"""`mm run`: load a profile's blob with llama-cpp-python using exactly its settings; generate, chat or serve.

The library never prints: tokens go to an `on_token` callback, user turns come from a `read_message`
callback, and the server logs through uvicorn's logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pipeline.errors import LlamaError, UsageError
from pipeline.llama_overrides import tensor_overrides
from pipeline.profile import Profile
from pipeline.registry import check_blob

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
TokenCallback = Callable[[str], None]


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def run_kwargs(profile: Profile, *, verify: bool = False) -> dict[str, Any]:
    """The profile's Llama(...) kwargs, pointed at its blob after the blob passed the pre-run check."""
    blob = check_blob(profile, full=verify)
    return {**profile.llama_kwargs, "model_path": str(blob)}


def load(profile: Profile, *, verify: bool = False) -> Llama:
    """The model loaded with exactly the profile's settings (the blob is checked first), experts placed by
    the profile's tensor overrides (pipeline/llama_overrides.py)."""
    kwargs = run_kwargs(profile, verify=verify)
    from llama_cpp import Llama

    log.info("loading %s with %s", profile.name, kwargs)
    try:
        with tensor_overrides(profile.run.tensor_overrides):
            return Llama(**kwargs, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise LlamaError(
            f"llama.cpp could not load profile {profile.name!r} ({kwargs['model_path']}): {exc}",
            hint="`mm verify` checks the blob; `mm show` prints the settings",
        ) from None


def generate(
    profile: Profile,
    prompt: str,
    *,
    max_tokens: int = 128,
    on_token: TokenCallback | None = None,
    verify: bool = False,
    temperature: float = 0.8,
    seed: int | None = None,
) -> Generation:
    """Complete `prompt`, streaming each piece of text to `on_token` as llama.cpp produces it."""
    if max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    llm = load(profile, verify=verify)
    if seed is not None:
        llm.set_seed(seed)
    started = time.perf_counter()
    pieces: list[str] = []
    n_tokens = 0
    stream = cast(
        Iterator[dict[str, Any]],
        llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, stream=True),
    )
    for chunk in stream:
        choice = chunk["choices"][0]
        text = str(choice["text"])
        if choice.get("finish_reason") is None:
            n_tokens += 1  # llama-cpp-python streams one chunk per sampled token, then a closing one
        if text:
            pieces.append(text)
            if on_token is not None:
                on_token(text)
    return Generation("".join(pieces), n_tokens, time.perf_counter() - started)


def chat(
    profile: Profile,
    read_message: Callable[[], str | None],
    on_token: TokenCallback,
    *,
    max_tokens: int = 512,
    verify: bool = False,
) -> int:
    """An interactive chat with the model's own chat template; ends when `read_message` returns None.

    Returns the number of turns answered.
    """
    llm = load(profile, verify=verify)
    messages: list[dict[str, str]] = []
    turns = 0
    while (message := read_message()) is not None:
        if not message.strip():
            continue
        messages.append({"role": "user", "content": message})
        reply: list[str] = []
        stream = cast(
            Iterator[dict[str, Any]],
            llm.create_chat_completion(messages=messages, max_tokens=max_tokens, stream=True),  # type: ignore[arg-type]
        )
        for chunk in stream:
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                reply.append(piece)
                on_token(piece)
        messages.append({"role": "assistant", "content": "".join(reply)})
        turns += 1
    return turns


def serve(profile: Profile, *, port: int = 8000, verify: bool = False) -> None:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1:`port` with the profile's settings (blocks)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: expected a port number from 1 to 65535")
    kwargs = run_kwargs(profile, verify=verify)
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model_settings = {("model" if key == "model_path" else key): value for key, value in kwargs.items()}
    with tensor_overrides(profile.run.tensor_overrides):  # the server loads its model here
        app = create_app(
            server_settings=ServerSettings(host=LOOPBACK, port=port),
            model_settings=[ModelSettings(model_alias=profile.name, verbose=False, **model_settings)],
        )
    log.info("serving %s on http://%s:%d/v1", profile.name, LOOPBACK, port)
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning")
