"""The scripted fault: answers a test writes byte for byte, played as they are on the socket.

What a real server never should do, on demand: valid JSON of the wrong shape, SSE events split
anywhere, a Content-Length that lies, a connection dropped mid-answer, an HTML error page. A test
posts a list of `Script`s to /mock/script (`MockProcess.script` does); every completion request
then plays the next one, round robin from the first. The same post can replace the /v1/models
answer and make routes missing (a partial server). Nothing here runs on the calibration path:
the mock only looks here while a script is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

FRAMINGS = ("chunked", "length", "close", "short-length")


@dataclasses.dataclass(frozen=True)
class Script:
    """One answer: status, framing, body pieces (as written to the socket), an early drop."""

    status: int = 200
    framing: str = "chunked"  # chunked | length | close | short-length
    pieces: tuple[bytes, ...] = ()
    drop_after: int | None = None  # abort the connection after this many pieces
    content_type: str = "text/event-stream"


NOT_FOUND = Script(status=404, framing="length", pieces=(b"not found",),
                   content_type="text/plain")


@dataclasses.dataclass
class Scripted:
    """What a test set: the answers to play, a /v1/models body, the routes that are missing."""

    answers: list[Script]
    models: bytes | None = None
    missing: frozenset[str] = frozenset()
    played: int = 0

    def answer(self, path: str, *, completion: bool) -> Script | None:
        """The scripted answer to a request for `path`; None where the mock answers itself."""
        if path in self.missing:
            return NOT_FOUND
        if path == "/v1/models" and self.models is not None:
            return Script(framing="length", pieces=(self.models,),
                          content_type="application/json")
        if completion and self.answers:
            script = self.answers[self.played % len(self.answers)]
            self.played += 1
            return script
        return None


# The wire format of POST /mock/script: JSON, bytes as latin-1 text (lossless for any byte).

def encode(answers: Sequence[Script], *, models: bytes | None,
           missing: Iterable[str]) -> bytes:
    """The body of POST /mock/script."""
    return json.dumps({
        "answers": [{**dataclasses.asdict(script),
                     "pieces": [piece.decode("latin-1") for piece in script.pieces]}
                    for script in answers],
        "models": None if models is None else models.decode("latin-1"),
        "missing": sorted(missing)}).encode()


def decode(body: bytes) -> Scripted | None:
    """What POST /mock/script set; None when it set nothing (the mock answers as itself)."""
    request: dict[str, Any] = json.loads(body)
    answers = [Script(**{**answer, "pieces": tuple(piece.encode("latin-1")
                                                   for piece in answer["pieces"])})
               for answer in request["answers"]]
    if any(script.framing not in FRAMINGS for script in answers):
        raise ValueError(f"a script's framing is not one of {FRAMINGS}")
    models = request["models"]
    scripted = Scripted(answers=answers,
                        models=None if models is None else models.encode("latin-1"),
                        missing=frozenset(request["missing"]))
    return scripted if answers or models is not None or scripted.missing else None


def play(transport: asyncio.Transport, script: Script) -> None:
    """Write `script` to the socket; a dropped, `close` or `short-length` answer closes it."""
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
    transport.write(("\r\n".join(head) + "\r\n\r\n").encode())
    for number, piece in enumerate(script.pieces):
        if script.drop_after is not None and number >= script.drop_after:
            transport.abort()
            return
        transport.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                        if script.framing == "chunked" else piece)
    if script.framing == "chunked":
        transport.write(b"0\r\n\r\n")
    if script.framing in ("close", "short-length"):
        transport.close()
