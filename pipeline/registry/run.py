"""`mm run`: load a profile's blob with llama-cpp-python using exactly its settings; generate or chat.

The library never prints: tokens go to an `on_token` callback, user turns come from a `read_message`
callback, and llama.cpp's own log goes to the `llama.cpp` logger (shown with -vv). The server is server.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pipeline.base.errors import RegistryError, UsageError
from pipeline.gguf.chat_format import ChatFormat, choose_chat_format
from pipeline.gguf.header import read_header
from pipeline.llama.llama_log import route_llama_log
from pipeline.llama.overrides import load_llama
from pipeline.llama.token_limit import HeldLimits, hold_max_tokens
from pipeline.registry.blobs import check_blob
from pipeline.registry.profile import Profile, check_model, llama_kwargs
from pipeline.spec.run_settings import RunSettings, expert_overrides

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    seconds: float
    stopped: bool = False  # the reply was cut short by Ctrl-C

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def run_kwargs(profile: Profile, *, verify: bool = False, run: RunSettings | None = None) -> dict[str, Any]:
    """The Llama(...) kwargs of the profile's settings (or `run`, its settings with a user's flags), pointed at
    its blob after the blob passed the pre-run check and the settings passed the model's limits."""
    from pipeline.probe.local_machine import default_threads

    blob = check_blob(profile, full=verify)
    run = run or profile.run
    if run.n_threads is None:  # llama-cpp-python would take half the logical CPUs; llama.cpp's tools and mm bench
        run = run.model_copy(update={"n_threads": default_threads()})  # take the physical cores
    check_model(run, read_header(blob), f"profile {profile.name!r}", RegistryError)
    return llama_kwargs(str(blob), run)


def with_flags(profile: Profile, flags: Mapping[str, Any]) -> Profile:
    """The profile with a user's run-setting flags on top (`mm run NAME -c 8192`), checked as a whole; an
    expert placement asked for becomes the -ot strings llama.cpp is given, as fit writes them."""
    if not flags:
        return profile
    run = profile.run.with_flags(**flags)
    if {"n_cpu_moe", "cpu_moe"} & flags.keys():
        layers = read_header(check_blob(profile, full=False)).get("block_count")
        n_layers = layers if isinstance(layers, int) and layers > 0 else 0
        held = n_layers if run.cpu_moe else min(run.n_cpu_moe or 0, n_layers)
        run = run.model_copy(update={"n_cpu_moe": held, "tensor_overrides": expert_overrides(held, n_layers)})
    return profile.model_copy(update={"run": run})


def chat_format_for(profile: Profile, requested: str | None = None) -> ChatFormat:
    """The chat format for this profile's model, as `mm run` and `mm export` both use it: --chat-format, else
    the profile's, else its GGUF's template, else its architecture's (a profile published before mm stored it)."""
    blob = check_blob(profile, full=False)
    return choose_chat_format(read_header(blob).metadata, requested or profile.run.chat_format)


def load(profile: Profile, *, verify: bool = False, chat_format: str | None = None) -> Llama:
    """The model loaded with exactly the profile's settings (the blob is checked first)."""
    kwargs = run_kwargs(profile, verify=verify)
    route_llama_log()
    log.info("loading %s with %s", profile.name, kwargs)
    llm: Llama = load_llama(
        {**kwargs, "chat_format": chat_format},
        overrides=profile.run.tensor_overrides,  # experts placed as the profile says
        what=f"profile {profile.name!r} ({kwargs['model_path']})",
        hint="`mm verify` checks the blob; `mm show` prints the settings",
    )
    return llm


def _stream(chunks: Iterator[dict[str, Any]], text_of: Callable[[dict[str, Any]], str | None],
            on_token: TokenCallback | None) -> tuple[str, bool]:  # fmt: skip
    """(text, stopped): the pieces of a stream sent to `on_token`; Ctrl-C stops the stream, not the caller."""
    pieces: list[str] = []
    try:
        for chunk in chunks:
            piece = text_of(chunk)
            if piece:
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
    except KeyboardInterrupt:
        return "".join(pieces), True
    return "".join(pieces), False


def _complete(llm: Llama, held: HeldLimits, prompt: str, max_tokens: int, temperature: float,
              on_token: TokenCallback | None) -> Generation:  # fmt: skip
    started = time.perf_counter()
    stream = llm.create_completion(prompt, temperature=temperature, stream=True, max_tokens=max_tokens)
    text, stopped = _stream(cast(Iterator[dict[str, Any]], stream), lambda c: str(c["choices"][0]["text"]), on_token)
    return Generation(text, held.count, time.perf_counter() - started, stopped)


def _reply(llm: Llama, held: HeldLimits, messages: Messages, max_tokens: int, temperature: float,
           on_token: TokenCallback | None) -> Generation:  # fmt: skip
    started = time.perf_counter()
    stream = llm.create_chat_completion(
        messages=messages,  # type: ignore[arg-type]
        temperature=temperature,
        stream=True,
        max_tokens=max_tokens,
    )
    text, stopped = _stream(
        cast(Iterator[dict[str, Any]], stream), lambda c: c["choices"][0]["delta"].get("content"), on_token
    )
    return Generation(text, held.count, time.perf_counter() - started, stopped)


def generate(
    profile: Profile,
    prompt: str,
    *,
    max_tokens: int = 128,
    on_token: TokenCallback | None = None,
    verify: bool = False,
    temperature: float = 0.8,
    seed: int | None = None,
    raw: bool = True,
    chat_format: str | None = None,
) -> Generation:
    """Answer `prompt` as one chat turn (raw=False, the model's chat format) or complete it as plain text,
    streaming each piece of text to `on_token` as llama.cpp produces it."""
    if max_tokens < 1:
        raise UsageError("max_tokens must be at least 1", param="max_tokens")
    llm = load(profile, verify=verify, chat_format=chat_format)
    held = hold_max_tokens(llm)
    if seed is not None:
        llm.set_seed(seed)
    if raw:
        return _complete(llm, held, prompt, max_tokens, temperature, on_token)
    return _reply(llm, held, [{"role": "user", "content": prompt}], max_tokens, temperature, on_token)


def chat(
    profile: Profile,
    read_message: Callable[[], str | None],
    on_token: TokenCallback,
    *,
    max_tokens: int = 512,
    verify: bool = False,
    chat_format: str | None = None,
    on_reply: Callable[[Generation], None] | None = None,
) -> int:
    """An interactive chat in the model's chat format; ends when `read_message` returns None.

    Ctrl-C during a reply stops that reply (kept in the history as far as it got), not the chat.
    Returns the number of turns answered.
    """
    llm = load(profile, verify=verify, chat_format=chat_format)
    held = hold_max_tokens(llm)
    messages: Messages = []
    turns = 0
    while (message := read_message()) is not None:
        if not message.strip():
            continue
        messages.append({"role": "user", "content": message})
        reply = _reply(llm, held, messages, max_tokens, 0.8, on_token)
        messages.append({"role": "assistant", "content": reply.text})
        if on_reply is not None:
            on_reply(reply)
        turns += 1
    return turns
