"""An incremental Server-Sent Events parser (the WHATWG event-stream rules).

Bytes go in as they come off the socket, in chunks of any size; whole events come out. It handles
frames split anywhere (even inside a UTF-8 character or between CR and LF), `\\r\\n`, `\\r` or `\\n`
line ends, comment lines (keep-alives such as `: ping`), multi-line `data:` fields, and streams
that end without `[DONE]` (call `close()` to flush a last event that lacks its blank line).
An event (or a line) longer than `max_event_chars` is a server's fault, not a reason to grow
without end: `feed` raises `MalformedResponse`.

>>> parser = SSEParser()
>>> parser.feed(b'data: {"a": 1}\\n\\nda')
[SSEEvent(data='{"a": 1}', event='message', id=None)]
>>> parser.feed(b'ta: [DONE]\\n\\n')
[SSEEvent(data='[DONE]', event='message', id=None)]
"""

from __future__ import annotations

import codecs
import dataclasses

from modal_llm_serving.endpoint.wire import MalformedResponse

__all__ = ["MAX_EVENT_CHARS", "SSEEvent", "SSEParser"]

MAX_EVENT_CHARS = 16 * 1024 * 1024  # a token event is ~300; a whole answer rarely 1 MB


@dataclasses.dataclass(slots=True)  # not frozen: one per token event, and a frozen init is slow
class SSEEvent:
    """One dispatched event: its data (lines joined by newlines), type and last event id."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed bytes, get events. One parser per response stream."""

    def __init__(self, *, max_event_chars: int = MAX_EVENT_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # an incomplete line, in the pieces it arrived in
        self._held = 0  # characters held: the pending line and the event's data so far
        self._limit = max_event_chars
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._last_id: str | None = None
        self._first_chunk = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse `chunk` and return the events it completed (often none or one).

        Linear in the bytes fed, however they are split: a piece without a line end is only
        appended (never re-scanned), and a buffer is joined once, when a line end arrives.
        """
        text = self._decoder.decode(chunk)
        if self._first_chunk and text:
            text = text.removeprefix("\ufeff")  # a byte-order mark may open the stream
            self._first_chunk = False
        if not text:
            return []
        if (not self._pending and not self._data and not self._event
                and text.startswith("data:") and text.endswith("\n\n")
                and text.count("\n") == 2 and "\r" not in text and len(text) <= self._limit):
            # the common read: exactly one one-line event (`data: {...}` and a blank line)
            value = text[5:-2]
            return [SSEEvent(value[1:] if value.startswith(" ") else value, "message",
                             self._last_id)]
        self._held += len(text)
        if self._held > self._limit:
            raise MalformedResponse(f"a server-sent event is longer than {self._limit} "
                                    "characters")
        ends_in_cr = bool(self._pending) and self._pending[-1].endswith("\r")
        if not ends_in_cr and "\n" not in text and "\r" not in text:
            self._pending.append(text)
            return []
        self._pending.append(text)
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """End of stream: return a last event left without its terminating blank line."""
        self._pending.append(self._decoder.decode(b"", final=True))
        events = self._drain(final=True)
        if rest := "".join(self._pending):
            self._process_line(rest)
        self._pending = []
        event = self._dispatch()
        return events + ([event] if event else [])

    def _drain(self, *, final: bool) -> list[SSEEvent]:
        buffer = "".join(self._pending)
        events: list[SSEEvent] = []
        position = 0
        while True:
            end, width = _find_line_end(buffer, position, final=final)
            if end < 0:
                break
            line = buffer[position:end]
            position = end + width
            if line:
                self._process_line(line)
            elif event := self._dispatch():
                events.append(event)
        self._pending = [buffer[position:]] if position < len(buffer) else []
        self._held = len(buffer) - position + self._data_chars
        return events

    def _process_line(self, line: str) -> None:
        if line.startswith(":"):
            return  # a comment: servers send these as keep-alives
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._data_chars += len(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields do not change what we dispatch

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message",
                         id=self._last_id)
        self._data, self._event, self._data_chars = [], "", 0
        return event


def _find_line_end(buffer: str, start: int, *, final: bool) -> tuple[int, int]:
    """Index and width of the first line terminator at or after `start`, or (-1, 0)."""
    # str.find runs in C: a per-character Python loop costs ~10 µs per event, which adds up to
    # real client overhead at thousands of events per second.
    newline = buffer.find("\n", start)
    carriage = buffer.find("\r", start, newline if newline >= 0 else len(buffer))
    if carriage < 0:
        return (newline, 1) if newline >= 0 else (-1, 0)
    if carriage + 1 < len(buffer):
        return carriage, 2 if buffer[carriage + 1] == "\n" else 1
    # a CR at the very end might be the first half of CRLF: wait for more bytes
    return (carriage, 1) if final else (-1, 0)
