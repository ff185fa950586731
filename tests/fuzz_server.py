"""A hostile OpenAI-compatible server for the contract tests: every answer is scripted.

It speaks raw HTTP/1.1 on a socket (no framework), so a script can do what a real server never
should: valid JSON of the wrong shape, SSE events split anywhere, a Content-Length that lies,
a connection dropped mid-answer, an HTML error page. /v1/models, /tokenize and /detokenize answer
correctly (unless a script says otherwise) so a benchmark gets as far as sending requests; every
completion request plays the next script of the list the test set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Script:
    """One answer: status, framing, body pieces (as written to the socket), an early drop."""

    status: int = 200
    framing: str = "chunked"  # chunked | length | close | short-length
    pieces: tuple[bytes, ...] = ()
    drop_after: int | None = None  # abort the connection after this many pieces
    content_type: str = "text/event-stream"


class FuzzServer:
    """Serves in a background thread; `scripts` is read per request, round robin."""

    def __init__(self) -> None:
        self.scripts: list[Script] = [Script(pieces=(b"data: [DONE]\n\n",))]
        self.served = 0
        self.models_answer: bytes = json.dumps({"data": [{"id": "fuzz"}]}).encode()
        self.missing: set[str] = set()  # routes answered 404 (a partial server)
        self.errors: list[str] = []  # the server's own failures (tests assert there are none)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FuzzServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = {name.strip().lower(): value.strip() for name, _, value in
                           (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = await self._answer(method, path.split("?")[0], body, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client may vanish at any point
        except Exception as exc:  # a bug in this server: it must not pass for a client fate
            self.errors.append(repr(exc))
        with contextlib.suppress(Exception):
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        if path in self.missing:
            await _write(writer, Script(status=404, framing="length", pieces=(b"not found",),
                                        content_type="text/plain"))
            return True
        if path in ("/health", "/v1/models", "/tokenize", "/detokenize"):
            payload = (b"" if path == "/health" else self.models_answer if path == "/v1/models"
                       else _tokenize(body) if path == "/tokenize" else _detokenize(body))
            await _write(writer, Script(framing="length", pieces=(payload,),
                                        content_type="application/json"))
            return True
        script = self.scripts[self.served % len(self.scripts)]
        self.served += 1
        return await _write(writer, script)


async def _write(writer: asyncio.StreamWriter, script: Script) -> bool:
    """Play `script`; True if the connection can serve another request."""
    body = b"".join(script.pieces)
    head = [f"HTTP/1.1 {script.status} X", f"Content-Type: {script.content_type}"]
    if script.framing == "chunked":
        head.append("Transfer-Encoding: chunked")
    elif script.framing == "length":
        head.append(f"Content-Length: {len(body)}")
    elif script.framing == "short-length":  # says more than it sends, then hangs up
        head.append(f"Content-Length: {len(body) + 10}")
    else:
        head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    for number, piece in enumerate(script.pieces):
        if script.drop_after is not None and number >= script.drop_after:
            writer.transport.abort()
            return False
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                     if script.framing == "chunked" else piece)
        await writer.drain()
    if script.framing == "chunked":
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    if script.framing in ("close", "short-length"):
        writer.close()
        return False
    return True


def _tokenize(body: bytes) -> bytes:
    prompt = json.loads(body).get("prompt", "")
    return json.dumps({"tokens": [len(word) for word in prompt.split()]}).encode()


def _detokenize(body: bytes) -> bytes:
    tokens = json.loads(body).get("tokens", [])
    return json.dumps({"prompt": " ".join("w" * max(1, int(t) % 9) for t in tokens)}).encode()


def sse(*events: Any) -> bytes:
    """Events as one SSE body: dicts and lists as JSON, bytes as they are, str as data."""
    out = []
    for event in events:
        if isinstance(event, bytes):
            out.append(event)
        elif isinstance(event, str):
            out.append(f"data: {event}\n\n".encode())
        else:
            out.append(f"data: {json.dumps(event)}\n\n".encode())
    return b"".join(out)


def split(data: bytes, cuts: list[int]) -> tuple[bytes, ...]:
    """`data` cut at the given offsets (any framing a network could produce)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return tuple(data[a:b] for a, b in itertools.pairwise(points) if b > a)


@contextlib.contextmanager
def fuzz_server() -> Iterator[FuzzServer]:
    with FuzzServer() as server:
        yield server
