"""`mls bench` against real vLLM (the session's tiny server), cross-checked with the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.local.serve import LocalServer

pytestmark = pytest.mark.engine


def _run(server: LocalServer, out: Path, **options: Any) -> tuple[dict[str, Any], list[Any]]:
    options.setdefault("api_key", server.api_key)
    summary = run_benchmark(parse_options(server.base_url, **options), out_dir=out)[0].to_dict()
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return summary, records


def test_exact_lengths_and_usage_against_vllm(tiny_server: LocalServer, tmp_path: Path) -> None:
    summary, records = _run(tiny_server, tmp_path, concurrency="2", num_requests=6,
                            input_len="24", output_len="12")
    assert summary["completed"] == 6, summary["error_counts"]
    assert summary["data"]["tokenizer_source"].startswith("server /tokenize")
    assert summary["data"]["exact_input_fraction"] == 1.0
    assert all(r["completion_tokens"] == 12 for r in records)  # ignore_eos + min_tokens
    # the chat template adds tokens around the 24 of the prompt text
    assert all(r["prompt_tokens"] > 24 for r in records)
    assert summary["total_output_tokens"] == 72
    # a fast tiny model can deliver all of a stream in one read: E2EL >= TTFT, not >
    assert 0 < summary["median_ttft_ms"] <= summary["median_e2el_ms"]
    assert summary["n_tpot"] == 6 and summary["mean_tpot_ms"] >= 0


def test_token_events_match_what_the_openai_sdk_sees(tiny_server: LocalServer,
                                                     tmp_path: Path) -> None:
    """Our token-bearing rule against the official SDK's view of the very same stream.

    One real stream's bytes are captured, then read by both: a server may put several tokens in
    one event (vLLM does when its output falls behind the engine), so two separate requests need
    not have the same events, but one stream read twice must.
    """
    import httpx

    from modal_llm_serving.endpoint.sse import SSEParser
    from modal_llm_serving.endpoint.wire import read_chunk

    _summary, records = _run(tiny_server, tmp_path, concurrency="1", num_requests=1,
                             input_len="16", output_len="10")
    assert records[0]["completion_tokens"] == 10 and 1 <= records[0]["token_events"] <= 10
    body = {"model": "tiny", "messages": [{"role": "user", "content": "alpha beta"}],
            "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    raw = httpx.post(f"{tiny_server.base_url}/v1/chat/completions", json=body, timeout=120,
                     headers={"Authorization": f"Bearer {tiny_server.api_key}"}).content
    replay = httpx.Client(transport=httpx.MockTransport(lambda _request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=raw)))
    client = openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="replayed",
                           http_client=replay)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "alpha beta"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True})
    with_choices, role_only, usage = 0, 0, None
    for chunk in stream:
        if chunk.choices:
            with_choices += 1
            delta = chunk.choices[0].delta
            role_only += bool(delta.role and not delta.content and
                              not chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 10
    assert role_only == 1  # vLLM opens with one role-only chunk, which carries no token
    parser = SSEParser()
    ours = sum(read_chunk(json.loads(event.data), chat=True).token_bearing
               for event in [*parser.feed(raw), *parser.close()] if event.data != "[DONE]")
    assert ours == with_choices - role_only


def test_completions_endpoint_and_sessions(tiny_server: LocalServer, tmp_path: Path) -> None:
    summary, _records = _run(tiny_server, tmp_path / "c", concurrency="2", num_requests=4,
                             endpoint="completions", input_len="8", output_len="6")
    assert summary["completed"] == 4 and summary["total_output_tokens"] == 24
    summary, records = _run(tiny_server, tmp_path / "s", concurrency="1", num_requests=2,
                            turns=2, input_len="8", output_len="6")
    assert summary["completed"] == 2
    assert [r["turn"] for r in records] == [0, 1]
    assert records[1]["prompt_tokens"] > records[0]["prompt_tokens"] + 6  # carries turn 1


def test_vllm_errors_are_recorded(tiny_server: LocalServer, tmp_path: Path) -> None:
    summary, _records = _run(tiny_server, tmp_path / "m", concurrency="1", num_requests=2,
                             model="no-such-model", input_len="4", output_len="4")
    assert summary["error_counts"] == {"http_404": 2}
    assert "no-such-model" in summary["error_examples"]["http_404"]
    summary, _records = _run(tiny_server, tmp_path / "k", concurrency="1", num_requests=2,
                             model="tiny", api_key="wrong-key", input_len="4", output_len="4")
    assert summary["error_counts"] == {"http_401": 2}


def test_engine_view_of_a_shared_prefix_run(tiny_server: LocalServer, tmp_path: Path) -> None:
    """Real vLLM's /metrics read by our strict reader (every name engine.py looks for is there),
    and a shared-prefix run whose prefix the engine caches: a nonzero hit rate from /metrics and
    cached tokens in the usage. The prefix spans two of the CPU build's 128-token blocks."""
    import httpx

    from modal_llm_serving.bench.engine import QUANTITIES, read_snapshot

    answer = httpx.get(f"{tiny_server.base_url}/metrics", timeout=30,
                       headers={"Authorization": f"Bearer {tiny_server.api_key}"})
    assert answer.status_code == 200
    snapshot = read_snapshot(answer.content, t_ns=0)
    assert snapshot.source == "vllm" and set(snapshot.values) == set(QUANTITIES)
    summary, records = _run(tiny_server, tmp_path, concurrency="2", num_requests=8,
                            input_len="16", output_len="4", shared_prefix="1:300",
                            scrape_interval=0.5)
    assert summary["completed"] == 8, summary["error_counts"]
    engine = summary["engine"]
    assert engine["source"] == "vllm" and engine["prefix_cache_hit_rate"] > 0, engine
    assert engine["scrapes"] >= 2 and engine["failed_scrapes"] == 0
    assert engine["mean_ttft_ms"] > 0 and engine["mean_queue_time_ms"] is not None
    assert all(r["cached_tokens"] is not None for r in records)
    assert summary["total_cached_tokens"] >= 256 and summary["cached_token_share"] > 0


def test_capacity_search_runs_end_to_end_against_vllm(tiny_server: LocalServer,
                                                      tmp_path: Path) -> None:
    """`--search` against a real engine, on small budgets: each level run, judged from its own
    summary, and the search stopped where it was told to."""
    from click.testing import CliRunner

    from modal_llm_serving.cli import cli

    result = CliRunner().invoke(cli, [
        "bench", "run", tiny_server.base_url, "--api-key", tiny_server.api_key, "--out",
        str(tmp_path), "--search", "concurrency", "--slo", "e2el:p95:300s", "--max-level", "2",
        "-n", "4", "--input-len", "8", "--output-len", "4", "--no-report"])
    assert result.exit_code == 0, result.output
    capacity = json.loads((tmp_path / "sweep.json").read_text())["capacity"]
    assert [(row["slug"], row["passed"]) for row in capacity["levels"]] == [
        ("c1", True), ("c2", True)]
    # both held: the capacity is the higher load unless its goodput fell short of the lower's
    # (2 streams of a CPU engine sharing 2 cores with other work can serve fewer good requests
    # a second than 1), by the documented rule: the highest load within 5 % of the best goodput
    one, two = (row["goodput"] for row in capacity["levels"])
    assert capacity["capacity"] == (2 if two >= 0.95 * max(one, two) else 1), capacity
    assert capacity["stopped"] == "max level"
    assert not capacity["bracketed"]  # nothing failed: the knee is above --max-level
    for row in capacity["levels"]:
        summary = json.loads((tmp_path / row["slug"] / "summary.json").read_text())
        assert summary["completed"] == 4, summary["error_counts"]
        assert row["slos"][0]["value_ms"] == summary["p95_e2el_ms"] > 0
