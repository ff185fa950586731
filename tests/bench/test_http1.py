"""The raw transport's HTTP/1.1 framing, fuzzed: whatever bytes a server sends, it ends in time
with a result or a classified error (`TransportError`), never another exception and never a spin.

Status lines, headers and chunk framing are drawn from what a hostile or broken server sends:
digits that are not ASCII (`٢٠٠`, `²`), signs and spaces (`-1`, `+5`, ` 5`), numbers past any
bound, both Transfer-Encoding and Content-Length, folded and oversized header lines, thousands of
headers, chunk sizes of `-1` or with bytes past ASCII in their extensions. Each goes to the
parser as bytes (any split), then over loopback from the mock to the real transport.
"""

from __future__ import annotations

import asyncio
import doctest
import os
import re
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving.bench import http1
from modal_llm_serving.bench.http1 import MAX_CHUNK_LINE, ChunkedDecoder, parse_head
from modal_llm_serving.bench.http_types import TransportError
from modal_llm_serving.bench.rawhttp import RawTransport
from tests.bench.test_hostile_server import split

EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "200"))
# A parse is microseconds; a spin or a quadratic scan would blow this by orders of magnitude.
# The bound leaves room for a 2-core machine busy with other tests (500 ms was once exceeded
# there by a scheduling stall alone).
QUICK = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5))

NUMBERS = ["0", "1", "2", "200", "404", "-1", "+5", " 5", "5 ", "0x10", "1e3", "1_000", "٢٠٠",
           "²", "２００", "9" * 30, "", "5, 5", "5, 6", "5,", "18446744073709551616", "\x00",
           "1\t", "12345678901234567890"]
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70).map(str),
                    st.text(max_size=6))
status_lines = st.one_of(
    st.builds(lambda version, code, reason: f"{version} {code} {reason}".encode(),
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 ", "http/1.1",
                               "ICY"]),
              st.one_of(st.integers(100, 599).map(str), numbers),
              st.sampled_from(["OK", "", "Ok\x00", "é", "a\rb"])),
    st.binary(max_size=40))
header_names = st.sampled_from(["Content-Length", "Transfer-Encoding", "Content-Type",
                                "Connection", "X-A", " Content-Length", "Content Length", "",
                                "Bad\x00", "é"])
header_values = st.one_of(numbers, st.sampled_from(["chunked", "gzip", "chunked, gzip",
                                                    "identity", "Chunked ", "close"]))
header_lines = st.one_of(
    st.builds(lambda name, value: f"{name}: {value}".encode(), header_names,
              header_values),
    st.sampled_from([b" folded continuation", b"\tfolded", b"no colon", b"X: a\nb",
                     b"X: " + b"a" * 9000]),
    st.binary(max_size=30))
heads = st.builds(lambda status, lines, many: b"\r\n".join([status, *lines, *([b"X: y"] * many)]),
                  status_lines, st.lists(header_lines, max_size=5),
                  st.sampled_from([0, 0, 0, 200, 5000]))

CHUNK_SIZES = ["1", "a", "A", "0", "-1", "+1", " 1", "1 ", "1;ext", "1;ext=\x80", "1 ;x=y",
               "ffffffffffffffff", "10000000000", "٣", "0x1", "", "1\x00", "g", "-0"]
chunk_lines = st.one_of(st.sampled_from(CHUNK_SIZES), st.text(max_size=8))


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """Chunk framing: size lines (good and hostile), payloads that fit them or do not, trailers."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        size = draw(chunk_lines).encode()
        payload = draw(st.binary(max_size=20))
        crlf = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]))
        parts.append(size + b"\r\n" + payload + crlf)
    if draw(st.booleans()):
        parts.append(b"0\r\n" + draw(st.sampled_from([b"", b"X: 1\r\n", b"bad\r\n"])) + b"\r\n")
    return b"".join(parts)


def test_module_examples() -> None:
    result = doctest.testmod(http1)
    assert result.attempted > 0 and result.failed == 0


@QUICK
@given(head=heads)
def test_any_head_is_a_head_or_a_protocol_error(head: bytes) -> None:
    try:
        parsed = parse_head(head)
    except TransportError as exc:
        assert exc.kind == "http_protocol"
        return
    assert 100 <= parsed.status <= 599
    assert head[len("HTTP/1.1 "):][:3].isascii()
    assert parsed.framing in ("chunked", "length", "close", "none")
    if parsed.framing == "length":  # believed only when it was plain ASCII digits, one value
        assert parsed.length is not None and 0 <= parsed.length <= 1 << 40
        assert re.fullmatch(r"[0-9]+", parsed.headers["content-length"].split(",")[0].strip())
    if parsed.framing == "chunked":
        assert "content-length" not in parsed.headers


@QUICK
@given(body=chunked_bodies(), cuts=st.lists(st.integers(0, 500), max_size=8))
def test_any_chunk_framing_decodes_or_is_refused_in_bounded_time(body: bytes,
                                                                   cuts: list[int]) -> None:
    decoder = ChunkedDecoder()
    try:
        for piece in split(body, cuts):
            decoder.feed(piece)
    except TransportError as exc:
        assert exc.kind == "http_protocol"
        return
    # not refused: finished, or waiting for bytes it has good reason to wait for
    assert decoder.done or len(decoder._buffer) <= MAX_CHUNK_LINE + 1 or decoder._state == "data"


@pytest.mark.parametrize("framing", [b"-1\r\nabc\r\n", b"+1\r\na\r\n", b"\xd9\xa3\r\nabc\r\n",
                                     b"1;\x80\r\na\r\n", b"x" * (MAX_CHUNK_LINE + 10)])
def test_the_chunk_sizes_that_spun_or_lied_are_refused_at_once(framing: bytes) -> None:
    outcome: list[str] = []

    def feed() -> None:
        try:
            ChunkedDecoder().feed(framing)
        except TransportError as exc:
            outcome.append(exc.kind)

    # in a thread, so a decoder that spins (as -1 did) fails here instead of hanging the suite;
    # a refusal takes microseconds, 5 s is only the limit of waiting for one
    worker = threading.Thread(target=feed, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "the decoder is still going: it spins"
    assert outcome == ["http_protocol"]


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK",  # ٢٠٠
    b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2",  # ²
    b"HTTP/1.1 200 OK\r\nContent-Length: -1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
    b"HTTP/1.1 200 OK\r\n folded: line",
    b"HTTP/1.1 200 OK" + b"\r\nX: y" * 129,
])
def test_framing_a_server_should_never_send_is_refused(head: bytes) -> None:
    with pytest.raises(TransportError, match="http_protocol"):
        parse_head(head)


# --- the same bytes over loopback, to the real transport ---------------------------------------

@pytest.fixture(scope="module")
def server() -> Any:
    with MockProcess(model="fuzz") as running:
        yield running
        assert running.stats()["errors"] == []


async def _post(url: str, timeout_s: float) -> str:
    async with RawTransport(pool=1, timeout_s=timeout_s, stall_timeout_s=timeout_s) as transport:
        try:
            async with transport.post(f"{url}/v1/chat/completions", b"{}", {}) as response:
                body = await response.read_body(1 << 20)
                return f"status {response.status}, {len(body)} bytes"
        except TransportError as exc:
            return exc.kind


@settings(max_examples=max(10, EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(head=heads, body=st.one_of(chunked_bodies(), st.binary(max_size=40)),
       cuts=st.lists(st.integers(0, 500), max_size=4), interim=st.booleans())
def test_any_answer_over_loopback_ends_in_time_with_a_result_or_a_kind(
        server: MockProcess, head: bytes, body: bytes, cuts: list[int], interim: bool) -> None:
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + head + b"\r\n\r\n" + body
    server.script([Script(framing="raw", pieces=tuple(split(wire, cuts)))])
    timeout_s = 1.0
    start = time.monotonic()
    outcome = asyncio.run(_post(server.url, timeout_s))
    # within its timeout; 10 s more is room for a loaded machine to start a loop and connect,
    # and still catches a client that spins on what it read or ignores its deadline
    assert time.monotonic() - start < timeout_s + 10.0, outcome
    assert outcome.startswith("status ") or outcome in (
        "http_protocol", "reset", "timeout"), outcome
