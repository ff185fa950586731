"""What every benchmark transport shares: the error it raises and the shapes it presents.

Its own module so that `transport.py` (which picks an implementation) and `rawhttp.py` (one
implementation) both depend on it, and not on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["CONNECT_TIMEOUT_S", "Response", "Transport", "TransportError"]

CONNECT_TIMEOUT_S = 30.0  # opening a connection (TCP and TLS) may take this long


class TransportError(Exception):
    """A request failed below HTTP; `kind` is the record's error kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Response(Protocol):
    status: int
    headers: dict[str, str]  # names in lower case

    def chunks(self) -> AsyncIterator[tuple[int, bytes]]: ...

    async def read_body(self, limit: int) -> bytes: ...


class Transport(Protocol):
    async def __aenter__(self) -> Transport: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def post(self, url: str, body: bytes,
             headers: dict[str, str]) -> contextlib.AbstractAsyncContextManager[Response]: ...
