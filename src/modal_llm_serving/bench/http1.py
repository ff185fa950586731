"""HTTP/1.1 response framing read as untrusted input: the head, the body's framing, chunks.

No I/O here: `rawhttp.py` feeds these bytes as they arrive, and the tests feed any bytes at all.
A server decides every framing value, so each is checked before it is believed: the status is
three ASCII digits, Content-Length plain ASCII digits, a chunk size plain ASCII hex, each within
a bound (`int()` alone takes `-1`, `+5`, ` 5`, `٥` and `²`, and a negative chunk size once spun
the decoder forever). A head's lines, their count and its total size are bounded; a response
with both Transfer-Encoding and Content-Length, or a transfer coding other than chunked, is
refused (the request-smuggling shapes). Anything off raises `TransportError("http_protocol")`,
never another exception, and every call runs in time linear in the bytes it is given.

>>> head = parse_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2")
>>> head.status, head.framing, head.length
(200, 'length', 2)
>>> parse_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: -1")
Traceback (most recent call last):
...
modal_llm_serving.bench.http_types.TransportError: http_protocol: bad Content-Length '-1'
"""

from __future__ import annotations

import dataclasses
import re

from modal_llm_serving.bench.http_types import TransportError
from modal_llm_serving.redact import redact

__all__ = ["MAX_HEAD", "ChunkedDecoder", "Head", "parse_head"]

MAX_HEAD = 64 * 1024  # a response head (status line and headers), in bytes
MAX_LINE = 8 * 1024  # one header line
MAX_HEADERS = 128
MAX_BODY = 1 << 40  # the largest Content-Length or chunk size believed (1 TiB)
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or a trailer line
MAX_TRAILERS = 128

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # a token (RFC 9110)
_LENGTH = re.compile(r"[0-9]{1,13}\Z")  # Content-Length: digits only, no sign or space
# chunk-size [ chunk-ext ]: ASCII hex, then ;name[=value] extensions of visible ASCII
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,10})[ \t]*(?:;[\t\x20-\x7e]*)?\Z")


def _shown(text: str | bytes, limit: int) -> str:
    """A piece of a server's framing for an error message: secrets masked before it is cut (a
    cut first could leave part of a key), then quoted."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")  # one character a byte: nothing raises, nothing merges
    return repr(redact(text)[:limit])


def _refuse(detail: str) -> TransportError:
    return TransportError("http_protocol", detail)


@dataclasses.dataclass(frozen=True)
class Head:
    """A checked response head; `framing` is how its body ends: `chunked`, `length` (after
    `length` bytes), `close` (when the server closes) or `none` (1xx, 204, 304)."""

    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    framing: str
    length: int | None = None


def parse_head(block: bytes) -> Head:
    """A response head: the bytes before its blank line (CRLF CRLF), without them."""
    if len(block) > MAX_HEAD:
        raise _refuse("response headers too large")
    lines = block.split(b"\r\n")
    if not (status := _STATUS.match(lines[0])):
        raise _refuse(f"not an HTTP/1.1 status line: {_shown(lines[0], 60)}")
    if len(lines) - 1 > MAX_HEADERS:
        raise _refuse(f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if len(line) > MAX_LINE or not colon or not _NAME.match(name) or any(
                byte in value for byte in b"\r\n\0"):
            raise _refuse(f"bad header line {_shown(line, 40)}")  # folded lines included
        key, text = name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    code = int(status[1])
    framing, length = _framing(code, headers)
    return Head(status=code, headers=headers, framing=framing, length=length)


def _framing(status: int, headers: dict[str, str]) -> tuple[str, int | None]:
    """How the body is delimited (RFC 9112 section 6.3), refusing what is ambiguous."""
    encoding, length = headers.get("transfer-encoding"), headers.get("content-length")
    if status < 200 or status in (204, 304):
        return "none", None
    if encoding is not None:
        if length is not None:
            raise _refuse("both Transfer-Encoding and Content-Length (ambiguous framing)")
        if encoding.strip().lower() != "chunked":
            raise _refuse(f"unsupported Transfer-Encoding {_shown(encoding, 40)}")
        return "chunked", None
    if length is not None:
        values = {value.strip() for value in length.split(",")}
        if len(values) != 1 or not _LENGTH.match(value := values.pop()) or int(value) > MAX_BODY:
            raise _refuse(f"bad Content-Length {_shown(length, 40)}")
        return "length", int(value)
    return "close", None


class ChunkedDecoder:
    """Transfer-Encoding: chunked, fed any slices; returns payload bytes as they complete.

    Each `feed` either consumes bytes or waits for more: a line is only looked for in what
    arrived, and a line longer than its bound is refused instead of waited for.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # payload bytes left in the current chunk
        self._state = "size"  # size | data | crlf | trailer | done
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out, position, end = [], 0, len(buffer)
        while position < end and self._state != "done":
            if self._state == "data":
                take = min(self._remaining, end - position)
                out.append(buffer[position:position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
                continue
            line_end = buffer.find(b"\r\n", position, position + MAX_CHUNK_LINE + 2)
            if line_end < 0:
                if end - position > MAX_CHUNK_LINE:
                    raise _refuse("chunk header too long")
                break
            self._line(buffer[position:line_end])
            position = line_end + 2
        self._buffer = buffer[position:]  # sliced once per read, not once per chunk
        return b"".join(out)

    def _line(self, line: bytes) -> None:
        if self._state == "crlf":
            if line:
                raise _refuse("chunk not followed by CRLF")
            self._state = "size"
        elif self._state == "size":
            if not (match := _CHUNK_SIZE.match(line)) or int(match[1], 16) > MAX_BODY:
                raise _refuse(f"bad chunk size {_shown(line, 20)}")
            self._remaining = int(match[1], 16)
            self._state = "data" if self._remaining else "trailer"
        elif not line:  # the trailer section ends with an empty line
            self._state = "done"
        else:
            self._trailers += 1
            if self._trailers > MAX_TRAILERS or b":" not in line:
                raise _refuse(f"bad trailer line {_shown(line, 20)}")
