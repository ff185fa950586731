"""Property tests of the SSE parser: any split of a valid stream gives the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modal_llm_serving.endpoint.sse import SSEEvent, SSEParser

# Field values: any text without line terminators (they end a field by definition).
_value = st.text(alphabet=st.characters(blacklist_characters="\r\n",
                                        blacklist_categories=("Cs",)), max_size=40)
_line_end = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A stream in wire form plus the events a conforming parser must dispatch."""
    wire, expected = [], []
    last_id: str | None = None
    if draw(st.booleans()):
        wire.append("\ufeff")  # a byte-order mark may open the stream
    for _ in range(draw(st.integers(0, 6))):
        end = draw(_line_end)
        if draw(st.booleans()):
            wire.append(": keep-alive" + end)
        data_lines = draw(st.lists(_value, min_size=0, max_size=3))
        event_type = draw(st.one_of(st.none(), _value.filter(lambda v: v != "")))
        event_id = draw(st.one_of(st.none(), _value.filter(lambda v: "\0" not in v)))
        values = []
        for line in data_lines:
            if draw(st.booleans()):
                wire.append(f"data: {line}{end}")
                values.append(line)
            else:  # no space after the colon: the spec strips one leading space of the value
                wire.append(f"data:{line}{end}")
                values.append(line.removeprefix(" "))
        if event_type is not None:
            wire.append(f"event: {event_type}{end}")
        if event_id is not None:
            wire.append(f"id: {event_id}{end}")
            last_id = event_id
        if draw(st.booleans()):
            wire.append(f"retry: 1000{end}")
        wire.append(end)  # blank line: dispatch
        if data_lines:
            expected.append(SSEEvent(data="\n".join(values),
                                     event=event_type or "message", id=last_id))
    return "".join(wire).encode("utf-8"), expected


def _feed_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[start:cut])
        start = cut
    events += parser.feed(data[start:])
    return events + parser.close()


@settings(max_examples=400, deadline=None)
@given(streams(), st.data())
def test_any_split_gives_the_events_of_the_whole(stream: tuple[bytes, list[SSEEvent]],
                                                 data: st.DataObject) -> None:
    wire, expected = stream
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    assert _feed_in_pieces(wire, cuts) == expected
    # byte at a time: splits inside UTF-8 characters and between CR and LF
    assert _feed_in_pieces(wire, list(range(len(wire)))) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_garbage_never_crashes(blob: bytes, cuts: list[int]) -> None:
    events = _feed_in_pieces(blob, [cut for cut in cuts if cut <= len(blob)])
    assert all(isinstance(event.data, str) for event in events)


def test_missing_done_and_missing_blank_line_still_yield_the_last_event() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a": 1}\n\ndata: {"b": 2}') == [SSEEvent('{"a": 1}')]
    assert parser.close() == [SSEEvent('{"b": 2}')]


def test_multi_line_data_comments_and_crlf() -> None:
    parser = SSEParser()
    events = parser.feed(b": ping\r\n\r\ndata: one\r\ndata: two\r\n\r\n")
    assert events == [SSEEvent("one\ntwo")]


def test_cr_at_the_end_of_a_read_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("x")]


def _scanned_chars(feeds: list[bytes], monkeypatch: pytest.MonkeyPatch) -> int:
    """Characters the parser reads to find line ends, over all `feeds` (the joins of pending
    pieces copy no more than that)."""
    import modal_llm_serving.endpoint.sse as sse_module

    real = sse_module._find_line_end
    total = [0]

    def counting(buffer: str, start: int, *, final: bool) -> tuple[int, int]:
        end, width = real(buffer, start, final=final)
        total[0] += (end + width if end >= 0 else len(buffer)) - start + 1  # what find() read
        return end, width

    monkeypatch.setattr(sse_module, "_find_line_end", counting)
    parser = SSEParser()
    for feed in feeds:
        parser.feed(feed)
    parser.close()
    return total[0]


@pytest.mark.parametrize("size", [4_096, 65_536])
def test_work_is_linear_in_the_input_however_it_is_split(size: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A long line in 1-byte reads, and many events in one read, cost O(bytes), not O(bytes²):
    counted, not timed (an earlier parser re-scanned its whole buffer on every read)."""
    line = b"data: " + b"x" * size + b"\n\n"
    byte_by_byte = _scanned_chars([line[i:i + 1] for i in range(len(line))], monkeypatch)
    many_events = _scanned_chars([b"data: 1\n\n" * (size // 9)], monkeypatch)
    assert byte_by_byte <= 4 * len(line)
    assert many_events <= 4 * size
