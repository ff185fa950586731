"""The engine's own view: the strict Prometheus reader, and the scraper against the mock.

The mock (benchmarks/mockserver/) serves /metrics in vLLM's names with an exact truth: the
streams it is writing, and a prefix cache whose hits it also reports per request as
`usage.prompt_tokens_details.cached_tokens`. Real vLLM's /metrics: tests/bench/test_bench_vllm.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.engine import Scraper, engine_summary, read_snapshot
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.bench.prometheus import (
    MAX_BYTES,
    MAX_LINE,
    MAX_LINES,
    PrometheusTextError,
    parse,
)
from modal_llm_serving.cli import cli
from modal_llm_serving.recipes.files import load_recipe, recipe_path

NAMES = {"vllm:num_requests_running", "vllm:prefix_cache_hits_total"}


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=20, itl_ms=10) as server:
        yield server
        assert server.stats()["errors"] == []


def test_the_reader_takes_the_format_as_prometheus_client_writes_it() -> None:
    text = (b'# HELP vllm:num_requests_running Number of requests.\n'
            b'# TYPE vllm:num_requests_running gauge\n'
            b'vllm:num_requests_running{engine="0",model_name="a \\"b\\" \\\\ c\\n"} 3.0\n'
            b'vllm:num_requests_running{engine="1",} 2 1700000000000\n'
            b'vllm:prefix_cache_hits_total +Inf\n'
            b'vllm:other_bucket{le="+Inf"} NaN\n\n# EOF\n')
    samples = parse(text, names=NAMES)
    assert samples == [
        ("vllm:num_requests_running", (("engine", "0"), ("model_name", 'a "b" \\ c\n')), 3.0),
        ("vllm:num_requests_running", (("engine", "1"),), 2.0),
        ("vllm:prefix_cache_hits_total", (), float("inf"))]
    snapshot = read_snapshot(text, t_ns=7)
    # summed over engines; an infinite counter is not a reading
    assert snapshot.values == {"running": 5.0} and snapshot.source == "vllm"


@pytest.mark.parametrize(("text", "says"), [
    (b"<html><body>Not Found</body></html>", "line 1 is not a sample"),
    (b'{"detail": "Not Found"}', "line 1 is not a sample"),
    (b"vllm:num_requests_running 1\nvllm:num_requests_running one\n", "line 2 is not a sample"),
    (b'vllm:num_requests_running{engine="0} 1\n', "line 1 has a malformed label set"),
    (b'vllm:num_requests_running{engine=0} 1\n', "line 1 has a malformed label set"),
    (b'vllm:num_requests_running{a="1"b="2"} 1\n', "line 1 has a malformed label set"),
    (b"vllm:num_requests_running{" + b",".join(b'l%d="v"' % i for i in range(40)) + b"} 1",
     "more than 32 labels"),
    (b"vllm:num_requests_running \xff\n", "not UTF-8"),
    (b"x 1\n" * (MAX_LINES + 1), f"more than {MAX_LINES} lines"),
    (b"# " + b"a" * (MAX_LINE + 1), f"line 1 is longer than {MAX_LINE}"),
    (b"#" * (MAX_BYTES + 1), f"larger than {MAX_BYTES} bytes"),
    (b"unrelated_metric 1\n", "none of vLLM's or SGLang's metrics"),
])
def test_the_reader_refuses_hostile_text_naming_the_line(text: bytes, says: str) -> None:
    with pytest.raises(PrometheusTextError, match=says):
        read_snapshot(text, t_ns=0)


def _run(url: str, out: Path, **options: Any) -> dict[str, Any]:
    return run_benchmark(parse_options(url, **options), out_dir=out)[0].to_dict()


def test_a_level_reads_the_engine_and_the_cached_tokens_the_mock_knows(
        mock: Any, tmp_path: Path) -> None:
    """4 streams of 30 tokens (0.3 s each), 8 requests, one shared system prompt of 64 words:
    the engine ran at most the 4 streams and at least one while scraped, and its prefix-cache
    counters moved by exactly the cached tokens the requests report."""
    summary = _run(mock.url, tmp_path, concurrency="4", num_requests=8, input_len="16",
                   output_len="30", shared_prefix="1:64", scrape_interval=0.1)
    engine = summary["engine"]
    assert engine["source"] == "vllm" and engine["failed_scrapes"] == 0
    assert 1 <= engine["running_max"] <= 4 and engine["waiting_max"] == 0
    records = [json.loads(line) for line in (tmp_path / "requests.jsonl").open()]
    cached = sum(record["cached_tokens"] for record in records)
    assert cached > 0 and summary["total_cached_tokens"] == cached
    assert engine["prefix_cache_hits"] == cached
    assert engine["prefix_cache_queries"] == sum(record["prompt_tokens"] for record in records)
    assert engine["prefix_cache_hit_rate"] == pytest.approx(summary["cached_token_share"])
    timeline = [json.loads(line) for line in (tmp_path / "engine_metrics.jsonl").open()]
    assert len(timeline) == engine["scrapes"] >= 3
    assert [point["t_ns"] for point in timeline] == sorted(point["t_ns"] for point in timeline)
    result = CliRunner().invoke(cli, ["bench", "report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "prefix-cache hit rate" in result.output and (tmp_path / "engine.png").is_file()
    assert "![engine.png](engine.png)" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("script", "says"), [
    ({"missing": ["/metrics"]}, "GET /metrics answered 404"),
    ({"routes": {"/metrics": Script(framing="length", content_type="text/html",
                                    pieces=(b"<html>a login page</html>",))}},
     "GET /metrics is not an engine's Prometheus text (line 1 is not a sample"),
])
def test_an_absent_endpoint_is_noted_once_and_the_run_goes_on(
        script: dict[str, Any], says: str, tmp_path: Path) -> None:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        server.script(**script)
        result = CliRunner().invoke(cli, ["bench", "run", server.url, "-c", "2", "-n", "4",
                                          "--output-len", "4", "--out", str(tmp_path / "r"),
                                          "--no-report"])
        assert server.stats()["errors"] == []
    assert result.exit_code == 0, result.output
    assert result.output.count(f"engine view: none ({says}") == 1
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["engine"] == {"unavailable": saved["engine"]["unavailable"]}
    assert saved["completed"] == 4


def test_the_scraper_sends_the_headers_the_bench_sends(tmp_path: Path) -> None:
    """Behind Modal's proxy auth, /metrics answers 401 without the tokens."""
    with MockProcess(ttft_ms=5, itl_ms=1, proxy_auth="wk-id:ws-secret") as server:
        summary = _run(server.url, tmp_path, concurrency="1", num_requests=2, output_len="4",
                       headers={"Modal-Key": "wk-id", "Modal-Secret": "ws-secret"})
    assert summary["completed"] == 2
    assert summary["engine"]["source"] == "vllm", summary["engine"]


APP_KEY = "the-apps-key"


@pytest.fixture(scope="module")
def deployed(mock: Any) -> str:
    """The mock behind the vLLM recipe's own forwarder, as a deployed app serves it."""
    port = load_recipe(recipe_path("vllm_online")).start_forwarder(
        mock.url, api_key=APP_KEY, host="127.0.0.1", port=0)
    return f"http://127.0.0.1:{port}"  # a daemon thread: it ends with the tests


@pytest.mark.parametrize(("key", "says"), [
    (APP_KEY, None),
    (None, "GET /metrics answered 401: a deployed app passes it only with its key; "
           "pass --api-key"),
    ("not-the-key", "GET /metrics answered 401: the key was refused; check --api-key against "
                    "the app's key"),
], ids=["the-key", "no-key", "another-key"])
def test_a_deployed_apps_engine_view_comes_with_its_key(
        deployed: str, key: str | None, says: str | None, tmp_path: Path) -> None:
    """The recipe's forwarder passes /metrics only with the app's key; `mls bench run` sends
    the key it was given, and without it (or with another) says why the view is missing."""
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["bench", "run", deployed, "-c", "2", "-n", "4",
                                      "--output-len", "4", "--out", str(out), "--no-report",
                                      *(["--api-key", key] if key else [])])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "summary.json").read_text())
    assert saved["completed"] == 4  # the mock itself asks for no key: the run is the same
    if says is None:
        assert saved["engine"]["source"] == "vllm" and saved["engine"]["scrapes"] >= 2
    else:
        assert saved["engine"] == {"unavailable": says}
        assert result.output.count(f"engine view: none ({says}") == 1


def test_a_refused_connection_is_noted_not_raised() -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        scraper = Scraper(f"http://127.0.0.1:{sock.getsockname()[1]}", {}, interval_s=0.1)
        scraper.start()
        scraper.stop()
    assert scraper.snapshots == []
    assert engine_summary(scraper.snapshots, unavailable=scraper.unavailable) == {
        "unavailable": "GET /metrics failed (ConnectError)"}
