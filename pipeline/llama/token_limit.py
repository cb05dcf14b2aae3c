"""max_tokens that holds, for `mm run` and `mm run --server`.

llama-cpp-python 0.3 checks max_tokens only after a complete UTF-8 character: in llama.py
`_create_completion` the multi-byte `continue` skips the check, so a reply that ends inside a character
runs on (`mm run -n 256` sampled 257 tokens; the server answered max_tokens 5 with 9). `TokenLimit` is a
stopping criterion that ends the generation after exactly `limit` tokens. A stopping criterion, not a logits
processor that forces the end-of-generation token: under a grammar that does not allow that token, llama.cpp
aborts the process ("Unexpected empty grammar stack").
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama


class TokenLimit:
    """Ends a generation after `limit` tokens; counts what was sampled.

    llama-cpp-python calls a stopping criterion with the context so far after each sampled token (before
    the token joins it) and once more after the generation ends; the first call sees the prompt alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sampled = 0  # tokens sampled, an end-of-generation token included (as llama-server counts)
        self.cut = False  # the generation was ended here, at the limit
        self._prompt: int | None = None

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if self._prompt is None:
            self._prompt = len(input_ids)
        accepted = len(input_ids) - self._prompt
        self.sampled = max(self.sampled, accepted + 1)
        if accepted >= self.limit:
            self.cut = True
        return accepted >= self.limit

    @property
    def count(self) -> int:
        return min(self.sampled, self.limit)


def _finish_as_length(chunk: dict[str, Any]) -> dict[str, Any]:
    """A reply cut at max_tokens finishes for "length" (TokenLimit's stop reads as "stop" to llama-cpp-python)."""
    for choice in chunk.get("choices", []):
        if choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "length"
    return chunk


@dataclass
class HeldLimits:
    """The limit of the model's latest completion (`mm run` reports how many tokens it sampled)."""

    last: TokenLimit | None = None

    @property
    def count(self) -> int:
        return self.last.count if self.last is not None else 0


def hold_max_tokens(llm: Llama) -> HeldLimits:
    """Make every completion of this model (the server's, and each chat reply, which llama-cpp-python's chat
    handlers build through create_completion) stop at its max_tokens and say "length" when cut there."""
    from llama_cpp import StoppingCriteriaList

    held = HeldLimits()
    original: Callable[..., Any] = llm.create_completion
    signature = inspect.signature(original)

    @functools.wraps(original)
    def create_completion(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs)
        limit = call.arguments.get("max_tokens", signature.parameters["max_tokens"].default)
        if limit is None or limit <= 0:  # up to the context: llama.cpp stops there itself
            return original(*args, **kwargs)
        bound = held.last = TokenLimit(limit)
        others = call.arguments.get("stopping_criteria") or []
        call.arguments["stopping_criteria"] = StoppingCriteriaList([*others, bound])
        result = original(*call.args, **call.kwargs)
        if isinstance(result, dict):
            return _finish_as_length(result) if bound.cut else result
        return _stream(result, bound)

    llm.create_completion = create_completion  # type: ignore[method-assign]
    return held


def _stream(chunks: Iterator[dict[str, Any]], bound: TokenLimit) -> Iterator[dict[str, Any]]:
    for chunk in chunks:
        yield _finish_as_length(chunk) if bound.cut else chunk
