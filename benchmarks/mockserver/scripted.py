"""The scripted fault: answers a test writes byte for byte, played as they are on the socket.

What a real server never should do, on demand: valid JSON of the wrong shape, SSE events split
anywhere, a Content-Length that lies, a connection dropped mid-answer, an HTML error page, and
(framing `raw`) any bytes at all, head included: a status of non-ASCII digits, a chunk size of
-1, a megabyte of headers. `gap_s` trickles the pieces (one every `gap_s` seconds) and `endless`
repeats the last one until the client hangs up (a chunked body that never ends). A test posts a
list of `Script`s to /mock/script (`MockProcess.script` does); every completion request then
plays the next one, round robin from the first. The same post can replace the /v1/models answer,
make routes missing (a partial server), or give any path its own answer (`routes`, where `*` is
every path: /health, /tokenize, a Hub's API alike). Nothing here runs on the calibration path:
the mock only looks here while a script is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

FRAMINGS = ("chunked", "length", "close", "short-length", "raw")


@dataclasses.dataclass(frozen=True)
class Script:
    """One answer: status, framing, body pieces (as written to the socket), an early drop."""

    status: int = 200
    framing: str = "chunked"  # chunked | length | close | short-length | raw (no head built)
    pieces: tuple[bytes, ...] = ()
    drop_after: int | None = None  # abort the connection after this many pieces
    content_type: str = "text/event-stream"
    gap_s: float = 0.0  # a pause before each piece after the first (a trickle)
    endless: bool = False  # then repeat the last piece, every gap_s, until the client leaves


NOT_FOUND = Script(status=404, framing="length", pieces=(b"not found",),
                   content_type="text/plain")


@dataclasses.dataclass
class Scripted:
    """What a test set: the answers to play, a /v1/models body, the routes that are missing,
    the answer of any path (`routes`; `*` for every path)."""

    answers: list[Script]
    models: bytes | None = None
    missing: frozenset[str] = frozenset()
    routes: dict[str, Script] = dataclasses.field(default_factory=dict)
    played: int = 0

    def answer(self, path: str, *, completion: bool) -> Script | None:
        """The scripted answer to a request for `path`; None where the mock answers itself."""
        if path in self.missing:
            return NOT_FOUND
        if (route := self.routes.get(path, self.routes.get("*"))) is not None:
            return route
        if path == "/v1/models" and self.models is not None:
            return Script(framing="length", pieces=(self.models,),
                          content_type="application/json")
        if completion and self.answers:
            script = self.answers[self.played % len(self.answers)]
            self.played += 1
            return script
        return None


# The wire format of POST /mock/script: JSON, bytes as latin-1 text (lossless for any byte).

def encode(answers: Sequence[Script], *, models: bytes | None, missing: Iterable[str],
           routes: dict[str, Script] | None = None) -> bytes:
    """The body of POST /mock/script."""
    return json.dumps({
        "answers": [_encoded(script) for script in answers],
        "models": None if models is None else models.decode("latin-1"),
        "missing": sorted(missing),
        "routes": {path: _encoded(script) for path, script in (routes or {}).items()}}).encode()


def _encoded(script: Script) -> dict[str, Any]:
    return {**dataclasses.asdict(script),
            "pieces": [piece.decode("latin-1") for piece in script.pieces]}


def _decoded(answer: dict[str, Any]) -> Script:
    script = Script(**{**answer, "pieces": tuple(piece.encode("latin-1")
                                                 for piece in answer["pieces"])})
    if script.framing not in FRAMINGS:
        raise ValueError(f"a script's framing is not one of {FRAMINGS}")
    return script


def decode(body: bytes) -> Scripted | None:
    """What POST /mock/script set; None when it set nothing (the mock answers as itself)."""
    request: dict[str, Any] = json.loads(body)
    answers = [_decoded(answer) for answer in request["answers"]]
    routes = {path: _decoded(answer) for path, answer in request.get("routes", {}).items()}
    models = request["models"]
    scripted = Scripted(answers=answers,
                        models=None if models is None else models.encode("latin-1"),
                        missing=frozenset(request["missing"]), routes=routes)
    set_any = answers or models is not None or scripted.missing or routes
    return scripted if set_any else None


def _head(script: Script) -> bytes:
    if script.framing == "raw":  # the test wrote the head itself, in the pieces
        return b""
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
    return ("\r\n".join(head) + "\r\n\r\n").encode()


async def play(transport: asyncio.Transport, script: Script) -> None:
    """Write `script` to the socket; a dropped, `close`, `short-length` or `raw` answer closes
    it (a `raw` one once its pieces are written: the test framed it, or did not)."""
    transport.write(_head(script))
    framed = (lambda piece: f"{len(piece):x}\r\n".encode() + piece + b"\r\n") \
        if script.framing == "chunked" else (lambda piece: piece)
    for number, piece in enumerate(script.pieces):
        if script.drop_after is not None and number >= script.drop_after:
            transport.abort()
            return
        if number and script.gap_s:
            await asyncio.sleep(script.gap_s)
        if transport.is_closing():
            return  # the client gave up: what it did with the trickle is the test's question
        transport.write(framed(piece))
    while script.endless and script.pieces and not transport.is_closing():
        await asyncio.sleep(max(script.gap_s, 0.01))
        transport.write(framed(script.pieces[-1]))
    if script.framing == "chunked":
        transport.write(b"0\r\n\r\n")
    if script.framing in ("close", "short-length", "raw"):
        transport.close()
