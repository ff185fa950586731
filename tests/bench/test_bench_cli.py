"""`mls bench run`'s flags, end to end: the real command against the mock on a loopback port.

Each test asserts what the flag changes where it can be seen: what the mock read (paths, bodies,
headers, on which connection, when: GET /mock/requests) or what the records say, never only the
exit code. The mock's stamps and the client's are on one clock (CLOCK_MONOTONIC), so "before the
clock started" and "not before its scheduled time" are orderings, not timings.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving.cli import cli
from tests.bench.test_bench import arrival_times
from tests.bench.test_bench_mock import _records
from tests.bench.test_hostile_server import sse

SHORT = ["--input-len", "4", "--output-len", "3", "--no-report"]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        yield server
        assert server.stats()["errors"] == []  # no outcome here came from a bug of the mock


def bench(mock: MockProcess, out: Path, *args: str,
          code: int = 0) -> tuple[Result, list[dict[str, Any]]]:
    """`mls bench run` against the mock; its result and the completion requests the mock read."""
    before = mock.stats()["requests"]
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--out", str(out), *SHORT,
                                      *args])
    assert result.exit_code == code, result.output
    return result, mock.requests(after=before)


def bodies(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(request["body"]) for request in seen]


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


@pytest.mark.parametrize(("transport", "agent"), [
    ("raw", None), ("aiohttp", "aiohttp/"), ("httpx", "python-httpx/")])
def test_transport_picks_the_http_client_the_server_sees(mock: MockProcess, tmp_path: Path,
                                                         transport: str,
                                                         agent: str | None) -> None:
    _result, seen = bench(mock, tmp_path, "-n", "2", "--transport", transport)
    # each library names itself in User-Agent; the raw transport sends none
    agents = {request["headers"].get("user-agent") for request in seen}
    assert len(seen) == 2 and len(agents) == 1, agents
    [sent] = agents
    assert (sent is None) if agent is None else (agent in (sent or "")), sent
    assert summary(tmp_path)["completed"] == 2


@pytest.mark.parametrize(("endpoint", "path", "field"), [
    ("chat", "/v1/chat/completions", "messages"), ("completions", "/v1/completions", "prompt")])
def test_endpoint_picks_the_route_and_the_body_shape(mock: MockProcess, tmp_path: Path,
                                                     endpoint: str, path: str,
                                                     field: str) -> None:
    _result, seen = bench(mock, tmp_path, "-n", "2", "--endpoint", endpoint)
    assert [request["path"] for request in seen] == [path, path]
    other = {"messages": "prompt", "prompt": "messages"}[field]
    assert all(field in body and other not in body for body in bodies(seen))
    assert all(record["ok"] and record["n_out"] == 3 for record in _records(tmp_path))


def test_min_tokens_asks_for_the_output_length_as_a_floor(mock: MockProcess,
                                                          tmp_path: Path) -> None:
    _result, plain = bench(mock, tmp_path / "plain", "-n", "2")
    _result, floor = bench(mock, tmp_path / "floor", "-n", "2", "--min-tokens")
    assert all("min_tokens" not in body for body in bodies(plain))  # only when asked
    assert [(body["min_tokens"], body["max_tokens"]) for body in bodies(floor)] == [(3, 3)] * 2


def test_no_ignore_eos_lets_the_model_stop_early(mock: MockProcess, tmp_path: Path) -> None:
    _result, exact = bench(mock, tmp_path / "exact", "-n", "2")
    _result, free = bench(mock, tmp_path / "free", "-n", "2", "--no-ignore-eos")
    assert [body.get("ignore_eos") for body in bodies(exact)] == [True, True]
    assert all("ignore_eos" not in body for body in bodies(free))


def test_turns_carry_the_conversation_so_far(mock: MockProcess, tmp_path: Path) -> None:
    _result, seen = bench(mock, tmp_path, "-c", "2", "-n", "6", "--turns", "3")
    conversations: dict[str, list[list[dict[str, str]]]] = {}
    for request, body in zip(seen, bodies(seen), strict=True):
        conversations.setdefault(request["headers"]["modal-session-id"], []).append(
            body["messages"])
    assert len(conversations) == 2
    for turns in conversations.values():
        assert [len(messages) for messages in turns] == [1, 3, 5]
        # each turn repeats the earlier ones word for word, the mock's own replies included
        assert turns[1][:1] == turns[0] and turns[2][:3] == turns[1]
        assert [message["role"] for message in turns[2]] == ["user", "assistant"] * 2 + ["user"]
        assert turns[1][1]["content"].split() == ["alpha", "bravo", "charlie"]
    assert sorted(record["turn"] for record in _records(tmp_path)) == [0, 0, 1, 1, 2, 2]


def test_session_header_names_the_header_that_carries_the_conversation(
        mock: MockProcess, tmp_path: Path) -> None:
    _result, seen = bench(mock, tmp_path, "-c", "2", "-n", "4", "--turns", "2",
                          "--session-header", "X-Sticky")
    ids = [request["headers"].get("x-sticky") for request in seen]
    assert None not in ids and all("modal-session-id" not in r["headers"] for r in seen)
    assert sorted(ids.count(value) for value in set(ids)) == [2, 2]  # one id per conversation
    assert {record["session_id"] for record in _records(tmp_path)} == set(ids)


def test_prewarm_opens_the_pool_before_the_clock_starts(mock: MockProcess,
                                                        tmp_path: Path) -> None:
    def opened(flag: str) -> tuple[int, list[dict[str, Any]], int]:
        before = mock.stats()["connections"]
        # 3 streams, 1 request: a prewarmed pool opens 3 connections, an unwarmed one 1
        _result, seen = bench(mock, tmp_path / flag, "-c", "3", "-n", "1", flag)
        t0 = summary(tmp_path / flag)["t0_perf_counter_ns"]  # on the mock's clock too
        return mock.stats()["connections"] - before, seen, t0

    warm, _seen, _t0 = opened("--prewarm")
    cold, [request], t0 = opened("--no-prewarm")
    assert warm - cold == 2  # the same preflight, then the pool's other 2 connections
    # unwarmed, the handshake is inside the clock: its connection came after the start (the
    # other way round is no ordering: a busy mock may accept a prewarmed connection late)
    assert request["connected_ns"] > t0


def test_rate_spaces_the_arrivals(mock: MockProcess, tmp_path: Path) -> None:
    _result, seen = bench(mock, tmp_path, "--rate", "20", "--arrival", "constant", "-n", "5")
    t0 = summary(tmp_path)["t0_perf_counter_ns"]
    assert sorted(record["scheduled_ns"] for record in _records(tmp_path)) == \
        [k * 50_000_000 for k in range(5)]
    # the k-th request the mock read came no sooner than the k-th arrival (20/s: 50 ms apart);
    # all at once (--rate ignored) would read them all within a few ms of the start
    read = sorted(request["received_ns"] - t0 for request in seen)
    assert all(at >= k * 50_000_000 for k, at in enumerate(read)), read


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_arrival_picks_the_schedule(mock: MockProcess, tmp_path: Path, arrival: str) -> None:
    _result, seen = bench(mock, tmp_path, "--rate", "40", "--arrival", arrival,
                          "--burstiness", "0.5", "--seed", "3", "-n", "6")
    scheduled = sorted(record["scheduled_ns"] for record in _records(tmp_path))
    expected = arrival_times(count=6, rate=40, arrival=arrival, burstiness=0.5, seed=3)
    assert scheduled == [int(offset * 1e9) for offset in expected]
    assert len({b - a for a, b in itertools.pairwise(scheduled)}) == 5  # not constant gaps
    t0 = summary(tmp_path)["t0_perf_counter_ns"]
    read = sorted(request["received_ns"] - t0 for request in seen)
    assert all(at >= when for at, when in zip(read, scheduled, strict=True)), (read, scheduled)


def test_retries_resend_a_503_until_it_is_answered(mock: MockProcess, tmp_path: Path) -> None:
    busy = Script(status=503, framing="length", content_type="application/json",
                  pieces=(b'{"error": {"message": "busy, try again"}}',))
    good = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    answer = Script(pieces=(sse(good, {"choices": [], "usage": {"prompt_tokens": 4,
                                                                "completion_tokens": 1}},
                                "[DONE]"),))
    mock.script([busy, answer])  # every request: a 503 first, then an answer
    try:
        _result, once = bench(mock, tmp_path / "once", "-n", "2")
        mock.script([busy, answer])  # from the first answer again
        _result, retried = bench(mock, tmp_path / "retried", "-n", "2", "--retries", "1")
    finally:
        mock.script()
    # without --retries a 503 is the request's fate (the next request gets the answer)
    assert len(once) == 2 and [r["error"] for r in _records(tmp_path / "once")] == \
        ["http_503", None]
    assert len(retried) == 4  # each request sent twice
    records = _records(tmp_path / "retried")
    assert [(r["ok"], r["attempts"], r["status"]) for r in records] == [(True, 2, 200)] * 2
