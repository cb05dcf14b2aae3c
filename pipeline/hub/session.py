"""The HTTP client mm and huggingface_hub share: bounded waits on every request, the token kept to the Hub's host.

huggingface_hub's default client has no timeout at all (`timeout=None`), and many of its calls pass
`timeout=None` explicitly, so a stalled commit endpoint hangs `mm push` forever. Every request made
through `get_session()` goes through `_BoundedTransport` instead:

- connect, read, write and pool timeouts fill in whatever the caller left unbounded;
- a total deadline per request (a base plus time for the bytes at a minimum rate), so a server that
  trickles a byte per read timeout cannot hold a command forever;
- the Authorization header only to the configured endpoint's host: an LFS `verify` or upload href on
  another host (which huggingface_hub would send the write token to) gets none.

Retries stay huggingface_hub's own (`http_backoff`: 5 at most) and mm's (transfer.py's budgets, push's
conflict loop), all bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook

from pipeline.base.constants import HUB_DEADLINE_ENV, HUB_TIMEOUT_ENV, env_value

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_DEADLINE_SECONDS = 300.0
MIN_BYTES_PER_SECOND = 64 * 1024  # the slowest transfer a request's deadline allows for its body


def timeout_seconds() -> float:
    return _seconds(HUB_TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS)


def deadline_seconds() -> float:
    return _seconds(HUB_DEADLINE_ENV, DEFAULT_DEADLINE_SECONDS)


def _seconds(name: str, default: float) -> float:
    try:
        value = float(env_value(name) or "")
    except ValueError:
        return default
    return value if 0 < value < 1e6 else default


def install(endpoint: Callable[[], str]) -> None:
    """Make huggingface_hub's shared client (and mm's, which is the same) a bounded one."""
    set_client_factory(lambda: _client(endpoint))


def _client(endpoint: Callable[[], str]) -> httpx2.Client:
    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True,
        timeout=timeout_seconds(),
        transport=_BoundedTransport(httpx2.HTTPTransport(), endpoint),
    )


class _BoundedTransport(httpx2.BaseTransport):
    def __init__(self, inner: httpx2.BaseTransport, endpoint: Callable[[], str]) -> None:
        self.inner = inner
        self.endpoint = endpoint

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if _origin(request.url) != _origin(httpx2.URL(self.endpoint())):
            request.headers.pop("Authorization", None)  # an href on another host: no token
        limit = timeout_seconds()
        timeouts = dict(request.extensions.get("timeout") or {})
        request.extensions["timeout"] = {
            key: limit if timeouts.get(key) is None else min(float(timeouts[key]), limit)
            for key in ("connect", "read", "write", "pool")
        }
        started = time.monotonic()
        deadline = started + deadline_seconds() + _length(request.headers) / MIN_BYTES_PER_SECOND
        response = self.inner.handle_request(request)
        deadline += _length(response.headers) / MIN_BYTES_PER_SECOND
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_DeadlineStream(response.stream, deadline, request, started),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that stops with a timeout once the request's deadline has passed."""

    def __init__(self, inner: httpx2.SyncByteStream, deadline: float, request: httpx2.Request, started: float) -> None:
        self.inner, self.deadline, self.request, self.started = inner, deadline, request, started

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout(
                    f"no complete answer within {self.deadline - self.started:.0f} s", request=self.request
                )
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _origin(url: httpx2.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port, the default port spelled out (https://hf.co and https://hf.co:443 are one)."""
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


def _length(headers: httpx2.Headers) -> int:
    value = headers.get("Content-Length", "")
    return int(value) if value.isdigit() else 0
