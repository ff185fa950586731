"""Send one streaming completion and stamp its events (the harness's measuring loop).

Bytes are stamped with `time.perf_counter_ns()` by the transport the moment a read arrives (in
`data_received` for the raw transport), before SSE parsing or JSON decoding, so parsing cost never
shows up as latency. Every event in one read shares the stamp of that read: it is when those
bytes reached us.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from modal_llm_serving.bench.http_types import Transport, TransportError
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.endpoint.sse import SSEParser
from modal_llm_serving.endpoint.wire import (
    MalformedResponse,
    error_message,
    one_line,
    parse_object,
    read_chunk,
)

__all__ = ["RequestSpec", "RetryPolicy", "send_streaming"]

_ERROR_BODY_LIMIT = 400


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """A ready-to-send request: URL, JSON body bytes and headers (auth and session included)."""

    url: str
    body: bytes
    headers: dict[str, str]
    chat: bool


RETRY_BACKOFF_S = 0.5  # the pause before a retry


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which HTTP statuses to retry and how often; by default, none."""

    statuses: frozenset[int] = frozenset()
    max_retries: int = 0


async def send_streaming(transport: Transport, spec: RequestSpec,
                         record: RequestRecord, *, t0_ns: int,
                         retry: RetryPolicy = RetryPolicy()) -> str:
    """Run `spec`, filling `record` in place (stamps relative to `t0_ns`); return the text."""
    record.sent_ns = time.perf_counter_ns() - t0_ns
    attempt = 0
    while True:
        attempt += 1
        record.attempts = attempt
        text = await _attempt(transport, spec, record, t0_ns=t0_ns)
        retryable = record.status in retry.statuses
        if record.error is None or not retryable or attempt > retry.max_retries:
            return text
        await asyncio.sleep(RETRY_BACKOFF_S)
        _reset_for_retry(record)


def _reset_for_retry(record: RequestRecord) -> None:
    record.error = record.error_detail = None
    record.status = None
    record.first_token_ns = record.last_token_ns = None
    record.itl_ns = []
    record.token_events = 0
    record.completion_tokens = record.prompt_tokens = record.cached_tokens = None
    record.saw_done = False


async def _attempt(transport: Transport, spec: RequestSpec,
                   record: RequestRecord, *, t0_ns: int) -> str:
    parts: list[str] = []
    not_a_stream = ""
    try:
        async with transport.post(spec.url, spec.body, spec.headers) as response:
            record.status = response.status
            if response.status != 200:
                body = await response.read_body(_ERROR_BODY_LIMIT)
                record.error = f"http_{response.status}"
                record.error_detail = error_message(body)
            else:
                not_a_stream = _not_an_event_stream(response.headers)
                await _consume(response.chunks(), spec, record, parts, t0_ns=t0_ns)
    except TransportError as exc:
        if record.error is None:
            record.error, record.error_detail = exc.kind, exc.detail
    record.end_ns = time.perf_counter_ns() - t0_ns
    if record.error is None and record.first_token_ns is None:
        record.error = "no_tokens"
        record.error_detail = "the stream ended without a token-bearing event" + not_a_stream
    return "".join(parts)


def _not_an_event_stream(headers: dict[str, str]) -> str:
    """What the answer was instead of a plain event stream (an HTML page, a compressed body:
    its events cannot be read), as a clause for the error; empty if it was one."""
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    encoding = headers.get("content-encoding", "").strip().lower()
    if kind == "text/event-stream" and encoding in ("", "identity"):
        return ""
    what = f"Content-Type {kind or 'missing'}" + (f", Content-Encoding {encoding}"
                                                  if encoding not in ("", "identity") else "")
    return f": the answer was not a plain text/event-stream ({one_line(what, 120)})"


async def _consume(chunks: Any, spec: RequestSpec, record: RequestRecord, parts: list[str],
                   *, t0_ns: int) -> None:
    parser = SSEParser()
    chat = spec.chat
    last = None
    now = 0
    try:
        async for stamp, data in chunks:
            now = stamp - t0_ns  # stamped by the transport as the bytes arrived, before parsing
            for event in parser.feed(data):
                last = _handle(event.data, now, chat, record, parts, last)
                if record.error is not None:
                    return
        for event in parser.close():
            last = _handle(event.data, now, chat, record, parts, last)  # bytes of the last read
            if record.error is not None:
                return
    except MalformedResponse as exc:  # an event past the parser's bound
        record.error, record.error_detail = "malformed_chunk", str(exc)


def _handle(data: str, now: int, chat: bool, record: RequestRecord, parts: list[str],
            last: int | None) -> int | None:
    if data == "[DONE]":
        record.saw_done = True
        return last
    try:  # the server is untrusted input: an odd chunk fails this request, never the run
        chunk = read_chunk(parse_object(data, what="the chunk"), chat=chat)
    except MalformedResponse as exc:
        record.error, record.error_detail = "malformed_chunk", str(exc)
        return last
    if chunk.error is not None:
        record.error, record.error_detail = "stream_error", chunk.error
        return last
    if chunk.completion_tokens is not None:
        record.completion_tokens = chunk.completion_tokens
    if chunk.prompt_tokens is not None:
        record.prompt_tokens = chunk.prompt_tokens
    if chunk.cached_tokens is not None:
        record.cached_tokens = chunk.cached_tokens
    if chunk.server_timing is not None:
        record.server_timing = chunk.server_timing
    if not chunk.token_bearing:
        return last
    if chunk.text:
        parts.append(chunk.text)
        record.text_chars += len(chunk.text)
    record.token_events += 1
    if last is None:
        record.first_token_ns = now
    else:
        record.itl_ns.append(now - last)
    record.last_token_ns = now
    return now
