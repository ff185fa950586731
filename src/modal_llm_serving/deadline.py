"""Deadlines for network waits: one overall bound on a call, where httpx bounds each read.

httpx's timeouts (and those of httpx2, under huggingface_hub) bound each read and each write: a
server that sends one byte every half second never trips them, and one that never ends its
chunked body holds a command for ever. Inside `within(seconds, what=...)`, every connect, read
and write of a client made by `bounded(...)` waits at most until that one moment, and then
raises `DeadlineExceeded` (an `EndpointTimeout`: exit 1, one line naming what timed out):

    with within(10.0, what="GET /v1/models"):
        response = client.get("/v1/models")   # done in 10 s, however the server trickles

Nested calls keep the earlier deadline. How: httpcore, beneath httpx, does its I/O through a
network backend, a documented extension point of its connection pools; `bounded` wraps the
backend of each pool of a client so that every socket operation takes the smaller of its own
timeout and what is left. httpx builds its pools without exposing that hook, so `bounded`
reaches them by their attribute names (`tests/test_deadlines.py` fails if those move).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from modal_llm_serving.errors import EndpointTimeout, UntrustedDataError

__all__ = ["DeadlineExceeded", "bounded", "check", "fetch", "left", "within"]

T = TypeVar("T")
# The body is decoded by then: the headers that framed or encoded it would mislead a reader.
_FRAMING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# A margin for timers that fire a little early: a read cut this close to the deadline is its cut.
_EARLY_S = 0.05


class DeadlineExceeded(EndpointTimeout):
    """Raised when a call inside `within(...)` is still waiting at its deadline."""


_CURRENT: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "mls_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float, *, what: str) -> Iterator[None]:
    """Bound every network wait inside by `seconds` from now (or an earlier deadline around)."""
    end = time.monotonic() + seconds
    message = f"{what}: no complete answer within {seconds:g} s"
    outer = _CURRENT.get()
    token = _CURRENT.set(outer if outer is not None and outer[0] <= end else (end, message))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def left() -> float | None:
    """Seconds left until the current deadline (None outside `within`)."""
    current = _CURRENT.get()
    return None if current is None else current[0] - time.monotonic()


def check() -> None:
    """Raise `DeadlineExceeded` if the current deadline has passed (for waits between calls)."""
    current = _CURRENT.get()
    if current is not None and time.monotonic() >= current[0]:
        raise DeadlineExceeded(current[1])


def _bounded_call(operation: Callable[[float | None], T], timeout: float | None) -> T:
    """`operation(timeout)`, its timeout cut to the current deadline."""
    current = _CURRENT.get()
    if current is None:
        return operation(timeout)
    end, message = current
    remaining = end - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(message)
    try:
        return operation(remaining if timeout is None else min(timeout, remaining))
    except Exception:
        if time.monotonic() >= end - _EARLY_S:  # the cut timeout fired: say it was the deadline
            raise DeadlineExceeded(message) from None
        raise


class _Stream:
    """A network stream whose reads and writes end by the deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = _bounded_call(lambda cut: self._inner.read(max_bytes, cut), timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _bounded_call(lambda cut: self._inner.write(buffer, cut), timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _Stream:
        return _Stream(_bounded_call(
            lambda cut: self._inner.start_tls(ssl_context, server_hostname, cut), timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    """A network backend whose connects and streams end by the deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    **options: Any) -> _Stream:
        return _Stream(_bounded_call(
            lambda cut: self._inner.connect_tcp(host, port, cut, **options), timeout))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            **options: Any) -> _Stream:
        return _Stream(_bounded_call(
            lambda cut: self._inner.connect_unix_socket(path, cut, **options), timeout))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bounded(client: T) -> T:
    """`client` (an httpx or httpx2 Client) with every pool's I/O ending by the deadline."""
    transports = [getattr(client, "_transport", None),
                  *getattr(client, "_mounts", {}).values()]
    pools = [getattr(transport, "_pool", None) for transport in transports if transport]
    if not pools or pools[0] is None or not hasattr(pools[0], "_network_backend"):
        raise RuntimeError(f"{type(client).__module__} moved its connection pool: deadlines "
                           "cannot be applied (update modal_llm_serving/deadline.py)")
    for pool in pools:
        if pool is not None and not isinstance(pool._network_backend, _Backend):
            pool._network_backend = _Backend(pool._network_backend)
    return client


def fetch(client: httpx.Client, method: str, url: str, *, seconds: float, max_bytes: int,
          **request: Any) -> httpx.Response:
    """One request of a `bounded` client, whole (its body read) within `seconds`, the body at
    most `max_bytes` (else UntrustedDataError); httpx errors as httpx raises them."""
    with within(seconds, what=f"{method} {url}"), \
            client.stream(method, url, **request) as streamed:
        parts, size = [], 0
        for part in streamed.iter_bytes():
            size += len(part)
            if size > max_bytes:
                raise UntrustedDataError(f"the answer to {method} {url} is larger than "
                                         f"{max_bytes} bytes")
            parts.append(part)
    headers = [(name, value) for name, value in streamed.headers.items()
               if name.lower() not in _FRAMING_HEADERS]
    return httpx.Response(streamed.status_code, headers=headers, content=b"".join(parts),
                          request=streamed.request)
