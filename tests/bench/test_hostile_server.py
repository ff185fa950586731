"""A server is untrusted input: generated answers never break a run, a smoke test or a report.

The mock (benchmarks/mockserver/), in its scripted mode, plays scripts hypothesis writes:
chunks of valid JSON with wrong types (`usage` a list, a choice that is a string, token counts as
strings), garbage events, any split of the bytes, lying Content-Lengths, dropped connections,
HTML error pages.
Whatever comes, the harness finishes with every request accounted for (ok or failed, with an
error kind), writes records that load back, and the report renders; the smoke test returns its
report of five steps.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.report import render_report
from modal_llm_serving.cli import cli
from modal_llm_serving.endpoint.smoke import run_smoke

KNOWN_KINDS = re.compile(r"^(http_\d{3}|malformed_chunk|stream_error|no_tokens|reset|timeout|"
                         r"http_protocol|connect|cancelled|tls|bad_request)$")
# Generated cases per suite: 30 in CI (each is a short run on a local socket); more with
# MLS_FUZZ_EXAMPLES=1000 for a longer hunt.
EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "30"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


@st.composite
def chunks(draw: st.DrawFn) -> Any:
    """A stream chunk: right-shaped, or with any field replaced by any JSON value."""
    weird = json_values
    delta = draw(st.one_of(
        st.fixed_dictionaries({"content": st.one_of(st.text(max_size=6), weird)},
                              optional={"role": st.just("assistant")}), weird))
    choice = draw(st.one_of(
        st.fixed_dictionaries({"index": st.just(0), "delta": st.just(delta),
                               "finish_reason": st.one_of(st.none(), st.just("stop"), weird)}),
        weird))
    usage = draw(st.one_of(
        st.none(),
        st.fixed_dictionaries({"prompt_tokens": st.one_of(st.integers(0, 99), weird),
                               "completion_tokens": st.one_of(st.integers(0, 99), weird)}),
        weird))
    chunk = {"id": draw(st.one_of(st.just("c1"), weird)),
             "choices": draw(st.one_of(st.just([choice]), st.lists(weird, max_size=2), weird)),
             "usage": usage}
    if draw(st.booleans()):
        chunk["error"] = draw(weird)
    return draw(st.one_of(st.just(chunk), weird))


events = st.one_of(
    chunks(),
    st.just("[DONE]"),
    st.sampled_from([b"data: {not json\n\n", b": ping\n\n", b"event: x\ndata: 1\n\n",
                     b"garbage without a colon\n\n", b"data: \xff\xfe\n\n", b"\r\n\r\n"]),
    st.binary(max_size=12))


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    status = draw(st.sampled_from([200, 200, 200, 200, 400, 429, 500, 503]))
    if status == 200:
        body = sse(*draw(st.lists(events, max_size=6)))
        content_type = "text/event-stream"
    else:
        body = b"<html>\n<body>\n<h1>Service\nUnavailable</h1>\n</body>\n</html>\n"
        content_type = "text/html"
    framing = draw(st.sampled_from(["chunked", "length", "close", "short-length"]))
    pieces = split(body, draw(st.lists(st.integers(0, 400), max_size=5))) or (b"",)
    drop = draw(st.one_of(st.none(), st.integers(0, 3)))
    return Script(status=status, framing=framing, pieces=pieces, drop_after=drop,
                  content_type=content_type)


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


@pytest.fixture(scope="module")
def server() -> Any:
    with MockProcess(model="fuzz") as running:
        yield running
        # every fate seen came from a script, not a bug of the mock
        assert running.stats()["errors"] == []


def _bench(url: str, out: Path, n: int) -> dict[str, Any]:
    options = parse_options(url, model="fuzz", concurrency="2", num_requests=n, input_len="4",
                            output_len="4", timeout=5.0, stall_timeout=1.0)
    return run_benchmark(options, out_dir=out)[0].to_dict()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plays=st.lists(scripts(), min_size=1, max_size=4))
def test_any_answer_fails_only_its_request(server: MockProcess, tmp_path_factory: Any,
                                           plays: list[Script]) -> None:
    server.script(plays)
    out = tmp_path_factory.mktemp("fuzz")
    n = 4
    summary = _bench(server.url, out, n)
    assert summary["completed"] + summary["failed"] == n
    assert all(KNOWN_KINDS.match(kind) for kind in summary["error_counts"]), summary
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == n
    for line in lines:  # what was written loads back as a record, with a known fate
        record = RequestRecord.from_dict(json.loads(line))
        assert record.error is None or KNOWN_KINDS.match(record.error)
        assert record.error_detail is None or "\n" not in record.error_detail
    report = render_report(out).read_text()
    assert "<html>" not in report.replace("`", "")  # error pages are one escaped line at most


def test_wrong_types_in_chunks_are_counted_not_fatal(server: MockProcess, tmp_path: Path) -> None:
    """The shapes a real misbehaving server sent (issue examples), one per request."""
    good = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    server.script([
        Script(pieces=(sse(good, {"id": "c", "choices": [], "usage": [1, 2]}, "[DONE]"),)),
        Script(pieces=(sse({"id": "c", "choices": ["not an object"]}, "[DONE]"),)),
        Script(pieces=(sse({"id": "c", "choices": [{"delta": "a string"}]}, "[DONE]"),)),
        Script(pieces=(sse(good, {"choices": [], "usage": {"completion_tokens": "7"}},
                           "[DONE]"),)),
        Script(pieces=(sse(good, {"choices": [], "usage": {"prompt_tokens": 3,
                                                           "completion_tokens": 1}}, "[DONE]"),)),
    ])
    summary = _bench(server.url, tmp_path, 5)
    assert summary["completed"] == 1 and summary["failed"] == 4
    assert summary["error_counts"] == {"malformed_chunk": 4}


GOOD_MODELS = {"data": [{"id": "fuzz"}]}
GOOD_COMPLETION = {"id": "x", "choices": [{"message": {"content": "Paris."}}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plays=st.lists(scripts(), min_size=1, max_size=3),
       # right, or JSON that cannot be right: no top-level "choices" / "data" at all
       completion=st.one_of(st.just(GOOD_COMPLETION), json_values.filter(
           lambda value: not (isinstance(value, dict) and "choices" in value))),
       models=st.one_of(st.just(GOOD_MODELS), json_values.filter(
           lambda value: not (isinstance(value, dict) and "data" in value))))
def test_smoke_reports_every_step_whatever_comes(server: MockProcess, plays: list[Script],
                                                 completion: Any, models: Any) -> None:
    body = json.dumps(completion).encode()
    server.script([Script(framing="length", pieces=(body,), content_type="application/json"),
                   *plays], models=json.dumps(models).encode())
    try:
        report = run_smoke(server.url, ready_timeout=1.0, request_timeout=3.0)
    finally:
        server.script()
    steps = {step.name: step for step in report.steps}
    assert list(steps) == ["ready", "health", "models", "chat", "chat-stream"]
    assert all("\n" not in step.detail for step in report.steps)
    # the mock answers /health itself: the first two always pass; then the first wrong answer
    # fails its step, with what came back and the step's hint, and every later step is skipped
    wrong = ("models" if models != GOOD_MODELS else "chat" if completion != GOOD_COMPLETION
             else None)
    reached = ["ready", "health", "models", "chat", "chat-stream"]
    if wrong is not None:
        reached = reached[:reached.index(wrong)]
        failed = steps[wrong]
        # why: the key it lacks, or what the answer to its route was instead
        key, route = {"models": ("data", "/v1/models"),
                      "chat": ("choices", "/v1/chat/completions")}[wrong]
        assert failed.status == "fail" and failed.hint, failed
        assert failed.detail.startswith("MalformedResponse: "), failed
        assert f"{key} is missing" in failed.detail or route in failed.detail, failed
    assert all(steps[name].status == "pass" for name in reached[:4]), report.steps
    later = list(steps)[len(reached) + (wrong is not None):]
    assert all(steps[name].status == "skip" for name in later), report.steps
    if "chat-stream" in reached:  # what a generated stream gets depends on all of it, except:
        stream = steps["chat-stream"]
        if plays[0].status != 200:
            assert stream.status == "fail", stream
            if plays[0].framing != "short-length" and plays[0].drop_after is None:
                assert f"answered {plays[0].status}" in stream.detail, stream  # whole: read
    assert report.ok == (wrong is None and steps["chat-stream"].status == "pass")


def test_cli_smoke_on_a_broken_server_is_one_table_and_exit_1(server: MockProcess) -> None:
    server.script(models=b"[1, 2, 3]")
    try:
        result = CliRunner().invoke(cli, ["smoke", server.url, "--ready-timeout", "1"])
    finally:
        server.script()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "FAIL  models" in result.output


def test_raw_transport_never_sends_a_header_with_a_line_break(server: MockProcess) -> None:
    """Even past the CLI's and the library's checks, the transport itself refuses to send it."""
    import asyncio

    from modal_llm_serving.bench.http_types import TransportError
    from modal_llm_serving.bench.transport import make_transport

    async def send(headers: dict[str, str]) -> str:
        async with make_transport("raw", pool=1, timeout_s=5, stall_timeout_s=5) as transport:
            try:
                async with transport.post(f"{server.url}/v1/chat/completions", b"{}", headers):
                    return "sent"
            except TransportError as exc:
                return exc.kind

    served = server.stats()["requests"]
    for bad in ({"X-A": "1\r\nX-Injected: 1"}, {"X-B": "é"}, {"X\nC": "1"}):
        assert asyncio.run(send(bad)) == "bad_request"
    assert server.stats()["requests"] == served  # nothing reached the server


@pytest.mark.parametrize("missing", [{"/detokenize"}, {"/tokenize", "/detokenize"}])
def test_a_server_without_detokenize_gets_approximate_prompts_not_a_traceback(
        server: MockProcess, tmp_path: Path, missing: set[str]) -> None:
    good = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    server.script([Script(pieces=(sse(good, "[DONE]"),))], missing=missing)
    try:
        summary = _bench(server.url, tmp_path, 2)
    finally:
        server.script()
    assert summary["completed"] == 2
    assert summary["data"]["tokenizer_source"].startswith("none: word counts (approximate")
