"""One connection to the mock: read requests, route them, stream answers, inject faults.

Raw asyncio protocol (on uvloop), so the mock costs as little CPU as possible. A fault-free
stream goes to the process's ticker (ticker.py, the hot path); a stream with `--fault`s walks
its schedule in its own task to inject them; a scripted answer (scripted.py) is written as the
test wrote it. A failure of the mock itself is recorded (state.errors), never passed off as an
answer the client has to explain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import socket
import time
from typing import Any

from . import scripted
from .state import COMPLETIONS, MockState, tokenize
from .ticker import WORDS, Plan

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           429: "Too Many Requests", 503: "Service Unavailable"}


class Protocol(asyncio.Protocol):
    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.received_ns = 0
        self.first_ns = 0
        self.session: str | None = None
        self.headers: dict[str, str] = {}
        self.connection = 0  # this connection's number in the process, from 1
        self.connected_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.connected_ns = time.perf_counter_ns()
        self.state.connections += 1
        self.connection = self.state.connections
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        try:
            request = self._parse()
        except Exception as exc:  # the mock's own failure: recorded
            self._failed(exc)
            return
        if request is None:
            return
        method, path, body = request
        self.busy = True
        self.received_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC: comparable across processes
        asyncio.get_running_loop().create_task(
            self._serve(method, path, body, self.received_ns))

    def _parse(self) -> tuple[str, str, bytes] | None:
        """The next whole request in the buffer (method, path, body), taken out of it."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        method, path, _ = [*lines[0].split(" "), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < head_end + 4 + length:
            return None
        self.session = headers.get("modal-session-id")
        self.headers = headers
        body = self.buffer[head_end + 4: head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        return method, path, body

    async def _serve(self, method: str, path: str, body: bytes, received: int) -> None:
        try:
            await self._route(method, path.split("?")[0], body, received)
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-answer (uvloop raises RuntimeError on a closed one)
        except Exception as exc:  # the mock's own failure: recorded
            self._failed(exc)
        self.busy = False
        if self.transport is not None and not self.transport.is_closing() and self.buffer:
            self._next()

    def _failed(self, exc: Exception) -> None:
        """A bug in the mock: recorded (tests assert there are none), the connection dropped."""
        self.state.errors.append(repr(exc))
        if self.transport is not None:
            self.transport.abort()

    def _send_text(self, text: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(text), text))

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        assert self.transport is not None
        self.transport.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data)

    async def _route(self, method: str, path: str, body: bytes, received: int) -> None:
        state = self.state
        if path.startswith("/mock/"):
            return self._control(path, body)
        if state.settings.proxy_auth and not self._proxy_authorized(state.settings.proxy_auth):
            return self._send(401, {"error": {"message": "missing or invalid proxy auth "
                                              "(Modal-Key and Modal-Secret)"}})
        if state.scripted is not None:  # a test's scripted answers: off the calibration path
            completion = path in COMPLETIONS
            script = state.scripted.answer(path, completion=completion)
            if script is not None:
                if completion:
                    self._remember(path, body, received)
                assert self.transport is not None
                return await scripted.play(self.transport, script)
        if path == "/health":
            return self._send(200, {})
        if path == "/metrics":
            return self._send_text(state.metrics())
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [
                {"id": state.settings.model, "object": "model"}]})
        if path in ("/tokenize", "/detokenize"):
            request = json.loads(body or b"{}")
            if path == "/tokenize":
                tokens = tokenize(request.get("prompt", ""))
                return self._send(200, {"count": len(tokens), "tokens": tokens})
            text = " ".join(WORDS[t % len(WORDS)] for t in request.get("tokens", []))
            return self._send(200, {"prompt": text})
        if path not in COMPLETIONS:
            return self._send(404, {"error": {"message": f"no route {path}"}})
        if time.monotonic() < state.cold_until:
            return self._send(503, {"error": {"message": "scaled to zero; starting"}})
        self._remember(path, body, received)
        faults = state.fault_for(state.count)
        if "hang" in faults:
            await asyncio.sleep(3600)
            return None
        for status in (503, 429):
            if str(status) in faults:
                return self._send(status, {"error": {"message": f"injected {status}"}})
        try:
            request = json.loads(body)
        except ValueError:
            return self._send(400, {"error": {"message": "body is not JSON"}})
        if request.get("model") != state.settings.model:
            return self._send(404, {"error": {"message": f"The model `{request.get('model')}` "
                                                         "does not exist."}})
        if self.session is not None:
            turns = state.sessions.setdefault(self.session, [])
            turns.append(len(request.get("messages") or []))
        n = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        tokens = tokenize(json.dumps(request.get("messages") or request.get("prompt")))
        chat = path.endswith("chat/completions")
        async with state.slot() as start:
            state.running += 1
            try:
                await self._stream(chat, n, faults, received if start is None else start,
                                   prompt_len=len(tokens), cached=state.cached_tokens(tokens))
            finally:
                state.running -= 1
        return None

    def _remember(self, path: str, body: bytes, received: int) -> None:
        self.state.remember(path, self.headers, body, received_ns=received,
                            connection=self.connection, connected_ns=self.connected_ns)

    def _proxy_authorized(self, expected: str) -> bool:
        """Modal's proxy auth: the pair as two headers, or as one Bearer token `ID.SECRET`."""
        token_id, _, secret = expected.partition(":")
        pair = (self.headers.get("modal-key"), self.headers.get("modal-secret"))
        bearer = self.headers.get("authorization", "")
        return pair == (token_id, secret) or bearer == f"Bearer {token_id}.{secret}"

    def _control(self, path: str, body: bytes) -> None:
        """The routes that steer the mock: its stats, a scale to zero, a test's script."""
        state = self.state
        if path == "/mock/stats":
            return self._send(200, state.stats())
        if path == "/mock/requests":
            return self._send(200, list(state.seen))
        if path == "/mock/scale-to-zero":
            state.cold_until = time.monotonic() + state.settings.cold_s
            return self._send(200, {"cold_s": state.settings.cold_s})
        if path == "/mock/script":
            try:
                state.scripted = scripted.decode(body)
            except (ValueError, KeyError, TypeError) as exc:  # the test's mistake, not ours
                return self._send(400, {"error": {"message": f"bad script: {exc!r}"}})
            return self._send(200, {"scripted": state.scripted is not None})
        return self._send(404, {"error": {"message": f"no route {path}"}})

    async def _stream(self, chat: bool, n: int, faults: set[str], received: int, *,
                      prompt_len: int, cached: int) -> None:
        settings = self.state.settings
        transport = self.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = max(1, settings.chunk)
        plan = Plan(self, chat=chat, n=n, chunk=chunk, received=received,
                    ttft_ns=int(settings.ttft_ms * 1e6),
                    gap_ns=int(chunk * settings.itl_ms * 1e6), prompt_len=prompt_len,
                    cached=cached,
                    split="split" in faults, done_marker="nodone" not in faults)
        if not faults:  # the common case: the process's one ticker writes it
            await self.state.ticker.play(plan)
            return
        while not plan.done.done():  # a stream with faults goes on its own, to inject them
            # due on the monotonic clock itself (the loop's clock is cached per iteration)
            while (delay := plan.due - time.perf_counter_ns()) > 0:
                await asyncio.sleep(delay / 1e9)  # a timer may fire early: never write early
            now = time.perf_counter_ns()
            if plan.index == plan.events // 2 and plan.index > 0:
                if "reset" in faults:
                    transport.abort()
                    return
                if "stall" in faults:
                    await asyncio.sleep(settings.stall_s)
                if "malformed" in faults:
                    self.write(b"data: {not json\n\n", split=False)
            plan.emit(now)

    def finish(self, n: int, prompt_len: int, cached: int, first_late: int, max_late: int, *,
               split: bool, done: bool) -> None:
        """The usage event (with the mock's own stamps), [DONE], the end of the body."""
        assert self.transport is not None
        usage = {"object": "chunk", "choices": [],
                 "usage": {"prompt_tokens": prompt_len, "completion_tokens": n,
                           "total_tokens": prompt_len + n,
                           "prompt_tokens_details": {"cached_tokens": cached}},
                 # the mock's own stamps (perf_counter_ns) and lateness: calibration separates
                 # the mock's delays from the client's
                 "server_timing": {"received_ns": self.received_ns, "first_ns": self.first_ns,
                                   "first_late_ns": first_late, "max_late_ns": max_late}}
        self.write(b"data: " + json.dumps(usage).encode() + b"\n\n", split=split)
        if done:
            self.write(b"data: [DONE]\n\n", split=split)
        self.transport.write(b"0\r\n\r\n")

    def write(self, data: bytes, *, split: bool) -> None:
        """One SSE event as HTTP/1.1 chunks: whole, or (the `split` fault) in 1-7 byte pieces
        with `: keep-alive` comments between."""
        assert self.transport is not None
        if not split:
            self.transport.write(_framed(data))
            return
        pieces, start = [], 0
        while start < len(data):
            size = random.randint(1, 7)
            pieces.append(data[start:start + size])
            start += size
            if random.random() < 0.2:
                pieces.append(b": keep-alive\n\n" if data[start - 1:start] == b"\n" else b"")
        for piece in pieces:
            if piece:
                self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))


@functools.lru_cache(maxsize=4096)
def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (cached: token events repeat across streams)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
