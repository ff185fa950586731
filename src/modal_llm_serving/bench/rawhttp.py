"""A minimal HTTP/1.1 client on asyncio protocols: the benchmark's lowest-overhead transport.

Why not a general client: at hundreds of streams on a 2-core machine the client's own per-request
and per-chunk work becomes part of every latency. Here bytes are stamped in `data_received`, the
moment the event loop hands them over (before any coroutine resumes), requests are written with a
single `write`, and chunked bodies are decoded by a small state machine. Keep-alive connections
are pooled per origin (up to `pool`); TLS via the standard `ssl` module.

It speaks just what an OpenAI-compatible streaming endpoint needs: POST with a body, responses
framed by Content-Length, chunked transfer encoding, or connection close. What the server sends
is framed by `http1.py`, which believes no framing value it has not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator

from modal_llm_serving.bench.http1 import MAX_HEAD, ChunkedDecoder, Head, parse_head
from modal_llm_serving.bench.http_types import CONNECT_TIMEOUT_S, TransportError
from modal_llm_serving.endpoint.client import tls_failure

__all__ = ["RawTransport"]

MAX_INTERIM = 8  # interim answers (100 Continue, 103 Early Hints) skipped before the real one


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; reads land in a queue with their arrival stamps.

    The stall timeout is one watchdog timer per connection, not a timeout per read: a timer
    armed and cancelled for each of tens of thousands of reads a second was a tenth of the
    client's CPU at 512 streams. The watchdog wakes every `stall_s`, and fails a read only if
    that read has waited the whole `stall_s` with no byte.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reads: deque[tuple[int, bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._stall_s = 0.0
        self._waiting_since = 0.0  # monotonic seconds: when the current read began to wait

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter_ns(), data))
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read(self, stall_s: float) -> tuple[int, bytes] | None:
        """The next read with its arrival stamp; None at end of stream; TransportError
        "timeout" after `stall_s` without a byte."""
        while not self.reads:
            if self.closed:
                return None
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            self._waiting_since = time.monotonic()
            if self._watchdog is None:
                self._stall_s = stall_s
                self._watchdog = loop.call_later(stall_s, self._check_stall)
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.reads.popleft()

    def _check_stall(self) -> None:
        self._watchdog = None
        waiter = self.waiter
        if waiter is None or waiter.done() or self.closed:
            return  # not waiting now: the next read that waits arms it again
        waited = time.monotonic() - self._waiting_since
        if waited >= self._stall_s:
            waiter.set_exception(TransportError(
                "timeout", f"no bytes for {self._stall_s:g} s (the stall timeout)"))
        else:
            self._watchdog = asyncio.get_running_loop().call_later(
                self._stall_s - waited, self._check_stall)

    def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.close()


class _RawResponse:
    def __init__(self, connection: _Connection, head: Head, leftover: tuple[int, bytes],
                 stall_s: float) -> None:
        self.status = head.status
        self.headers = head.headers
        self._framing = head.framing
        self._connection = connection
        self._leftover = leftover
        self._stall = stall_s
        self.complete = False
        self._length = head.length if head.framing == "length" else None

    async def chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        """Body bytes with the stamp of the read that delivered them."""
        if self._framing == "none" or self._length == 0:
            self.complete = not self._leftover[1]  # bytes past the end: not reusable
            return
        decoder = ChunkedDecoder() if self._framing == "chunked" else None
        remaining = self._length
        pending: tuple[int, bytes] | None = self._leftover
        while True:
            if pending is None:
                pending = await self._connection.read(self._stall)
                if pending is None:
                    if decoder is None and remaining is None:  # framed by connection close
                        self.complete = True
                        return
                    raise TransportError("reset", "the connection closed mid-response")
            stamp, data = pending
            pending = None
            if decoder is not None:
                payload = decoder.feed(data)
                if payload:
                    yield stamp, payload
                if decoder.done:
                    self.complete = True
                    return
            elif remaining is not None:
                payload, extra = data[:remaining], data[remaining:]
                remaining -= len(payload)
                if payload:
                    yield stamp, payload
                if remaining == 0:
                    self.complete = not extra
                    return
            elif data:
                yield stamp, data

    async def read_body(self, limit: int) -> bytes:
        parts, size = [], 0
        async for _stamp, data in self.chunks():
            if size < limit:
                parts.append(data)
                size += len(data)
        return b"".join(parts)[:limit]


class RawTransport:
    """HTTP/1.1 keep-alive pool over asyncio protocols; `post` yields a streaming response."""

    def __init__(self, *, pool: int, timeout_s: float, stall_timeout_s: float) -> None:
        self._slots = asyncio.Semaphore(pool)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._timeout = timeout_s
        self._stall = stall_timeout_s
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> RawTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def prewarm(self, url: str, count: int) -> int:
        """Open up to `count` idle connections to `url`'s origin now; return how many opened.

        A benchmark's clock should not include the first wave's TCP/TLS handshakes: at 128 streams
        on 2 cores they cost the first requests ~20 ms of TTFT that no later request pays.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return 0
        origin = (parts.scheme, parts.hostname,
                  parts.port or (443 if parts.scheme == "https" else 80))
        results = await asyncio.gather(*(self._connect(origin) for _ in range(count)),
                                       return_exceptions=True)
        opened = [item for item in results if isinstance(item, _Connection)]
        self._idle.setdefault(origin, []).extend(opened)
        return len(opened)

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):  # not wait_for: see read()
                _transport, connection = await loop.create_connection(
                    _Connection, host, port, ssl=context,
                    server_hostname=host if context else None)
        except TimeoutError:
            raise TransportError("connect", f"no connection to {host}:{port} within "
                                            f"{CONNECT_TIMEOUT_S:g} s") from None
        except ssl.SSLError as exc:  # our mistake (https to a plain server), never retried
            raise TransportError("tls", f"{host}:{port}: {tls_failure(exc)}") from None
        except OSError as exc:
            raise TransportError("connect", f"{host}:{port}: {exc.strerror or exc}") from None
        return connection

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: bytes,
                   headers: dict[str, str]) -> AsyncIterator[_RawResponse]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("bad_url", f"{url!r} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, parts.hostname, port)
        host_header = parts.netloc.rpartition("@")[2]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
                f"Content-Length: {len(body)}"]
        fields = "".join(headers) + "".join(headers.values())
        if "\r" in fields or "\n" in fields or "\0" in fields:
            # A CR or LF would end the header early or inject another: never sent (the CLI and
            # the library refuse such headers earlier; this transport does not rely on it).
            raise TransportError("bad_request", "a header holds a line break or NUL; not sent")
        head += [f"{name}: {value}" for name, value in headers.items()]
        try:
            request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
        except UnicodeEncodeError:
            raise TransportError("bad_request", "a header or the URL is not ASCII; not sent") \
                from None
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    connection, response = await self._exchange(origin, request)
                    try:
                        yield response
                    except BaseException:
                        connection.close()
                        raise
                    if response.complete and not connection.closed and \
                            response.headers.get("connection", "").lower() != "close":
                        self._idle.setdefault(origin, []).append(connection)
                    else:
                        connection.close()
            except TimeoutError:
                raise TransportError("timeout", f"no complete answer within {self._timeout:g} s "
                                                "(the request timeout)") from None

    async def _exchange(self, origin: tuple[str, str, int],
                        request: bytes) -> tuple[_Connection, _RawResponse]:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            if connection.closed or connection.reads:
                connection.close()
                continue
            assert connection.transport is not None
            connection.transport.write(request)
            try:
                return connection, await self._read_head(connection)
            except TransportError as exc:
                connection.close()
                if exc.kind != "reset" or exc.detail != "closed before any byte":
                    raise
                # the server closed this idle keep-alive connection: try a fresh one
        connection = await self._connect(origin)
        assert connection.transport is not None
        connection.transport.write(request)
        try:
            return connection, await self._read_head(connection)
        except BaseException:
            connection.close()
            raise

    async def _read_head(self, connection: _Connection) -> _RawResponse:
        """The response head, past any interim (1xx) answers such as 100 Continue."""
        buffer, stamp, received = b"", 0, False
        for _answer in range(MAX_INTERIM + 1):
            searched = 0
            while (end := buffer.find(b"\r\n\r\n", searched)) < 0:
                if len(buffer) > MAX_HEAD:
                    raise TransportError("http_protocol", "response headers too large")
                searched = max(0, len(buffer) - 3)  # a trickled head is scanned once, not per byte
                item = await connection.read(self._stall)
                if item is None:
                    detail = "closed in the headers" if received else "closed before any byte"
                    raise TransportError("reset", detail)
                stamp, data = item
                buffer, received = buffer + data, True
            head = parse_head(buffer[:end])
            buffer = buffer[end + 4:]
            if head.status >= 200:
                return _RawResponse(connection, head, (stamp, buffer), self._stall)
            if head.status == 101:
                raise TransportError("http_protocol", "101 Switching Protocols, not asked for")
        raise TransportError("http_protocol", f"more than {MAX_INTERIM} interim (1xx) answers")
