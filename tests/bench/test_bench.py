"""Unit tests of the benchmark's pure parts: metric formulas, percentiles, specs, the token rule."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modal_llm_serving.bench.data import WordTokenizer, parse_length, synthetic_prompts
from modal_llm_serving.bench.http1 import ChunkedDecoder
from modal_llm_serving.bench.metrics import Accumulator, percentile, stats
from modal_llm_serving.bench.options import Slo, parse_levels, parse_options, parse_slos
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.runner import arrivals
from modal_llm_serving.bench.summary import LevelSummary
from modal_llm_serving.endpoint.wire import MalformedResponse, read_chunk
from modal_llm_serving.errors import UsageError

MS = 1_000_000


def arrival_times(*, count: int, rate: float, arrival: str, burstiness: float,
                  seed: int) -> list[float]:
    """The first `count` send offsets (s) of the open loop's schedule."""
    return list(itertools.islice(arrivals(rate=rate, arrival=arrival, burstiness=burstiness,
                                          seed=seed), count))


def is_token_event(payload: dict[str, Any], *, chat: bool) -> bool:
    """Token-bearing: non-empty `choices`, except the role-only chunk that opens a chat stream."""
    try:
        return read_chunk(payload, chat=chat).token_bearing
    except MalformedResponse:
        return False


def _summary(accumulator: Accumulator, **window: Any) -> dict[str, Any]:
    """The accumulator's numbers as summary.json writes them."""
    return LevelSummary(measured=accumulator.summary(**window), harness={}, label="",
                        run=None).to_dict()


def _record(index: int, *, sent: float, first: float, gaps: list[float], n_out: int | None,
            error: str | None = None, scheduled: float | None = None) -> RequestRecord:
    """A record with stamps in ms (converted to ns)."""
    record = RequestRecord(index=index, input_len=10, max_tokens=n_out or 0,
                           scheduled_ns=None if scheduled is None else int(scheduled * MS),
                           sent_ns=int(sent * MS), first_token_ns=int(first * MS),
                           itl_ns=[int(g * MS) for g in gaps], completion_tokens=n_out,
                           prompt_tokens=12, token_events=len(gaps) + 1, error=error)
    record.last_token_ns = int((first + sum(gaps)) * MS)
    record.end_ns = record.last_token_ns + MS
    return record


def test_formulas_of_one_request() -> None:
    record = _record(0, sent=100, first=150, gaps=[10] * 9, n_out=10, scheduled=95)
    assert record.ttft_ms == pytest.approx(50)
    assert record.e2el_ms == pytest.approx(140)
    assert record.tpot_ms == pytest.approx(90 / 9)  # (t_last − t_first) / (N_out − 1)
    assert record.sched_ttft_ms == pytest.approx(55)
    assert record.dispatch_lag_ms == pytest.approx(5)


def test_tpot_counts_tokens_of_a_chunked_first_event() -> None:
    # 4 tokens per event: 5 events, 20 tokens, events 40 ms apart (10 ms per token)
    record = _record(0, sent=0, first=50, gaps=[40] * 4, n_out=20)
    assert record.tokens_in_first_event == 4
    assert record.tpot_ms == pytest.approx(160 / 16)


def test_one_output_token_has_no_tpot_and_failures_have_no_latency() -> None:
    assert _record(0, sent=0, first=5, gaps=[], n_out=1).tpot_ms is None
    failed = _record(1, sent=0, first=5, gaps=[1], n_out=2, error="reset")
    assert failed.ttft_ms is None and failed.tpot_ms is None


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy_linear(values: list[float], p: float) -> None:
    numpy = pytest.importorskip("numpy")
    assert percentile(sorted(values), p) == pytest.approx(float(numpy.percentile(values, p)),
                                                          rel=1e-9, abs=1e-6)


def test_stats_report_n_and_population_std() -> None:
    result = stats([1.0, 2.0, 3.0, 4.0])
    assert result["n"] == 4 and result["median"] == 2.5
    assert result["std"] == pytest.approx(math.sqrt(1.25))
    assert stats([])["n"] == 0 and stats([])["mean"] is None


def test_summary_throughput_goodput_errors_and_window() -> None:
    accumulator = Accumulator()
    accumulator.add(_record(0, sent=0, first=40, gaps=[10] * 9, n_out=10))  # ttft 40
    accumulator.add(_record(1, sent=0, first=80, gaps=[10] * 9, n_out=10))  # ttft 80
    accumulator.add(_record(2, sent=0, first=10, gaps=[], n_out=1, error="http_503"))
    summary = _summary(accumulator, slo=Slo(ttft_ms=50))
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["total_output_tokens"] == 20
    assert summary["n_itl"] == 18 and summary["mean_itl_ms"] == pytest.approx(10)
    # duration: first send (0) to last end (80 + 90 + 1 ms)
    assert summary["duration"] == pytest.approx(0.171)
    assert summary["output_throughput"] == pytest.approx(20 / 0.171)
    assert summary["slo_good"] == 1 and summary["slo_attainment"] == pytest.approx(1 / 3)
    assert summary["error_counts"] == {"http_503": 1}
    # vLLM's key names for the same meaning
    for key in ("mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
                "p99_itl_ms", "mean_e2el_ms", "request_throughput", "total_token_throughput"):
        assert key in summary


def test_warmup_and_cooldown_leave_requests_out_of_the_window() -> None:
    accumulator = Accumulator()
    for index, sent in enumerate((0, 1000, 2000, 3000)):
        accumulator.add(_record(index, sent=sent, first=sent + 50, gaps=[10], n_out=2))
    summary = _summary(accumulator, warmup_s=0.5, cooldown_s=0.5)
    assert summary["completed"] == 2 and summary["excluded_by_window"] == 2


def test_token_bearing_rule_skips_the_role_opener_but_not_empty_utf8_tokens() -> None:
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    partial_utf8 = {"choices": [{"delta": {"content": ""}}]}
    usage = {"choices": [], "usage": {"completion_tokens": 3}}
    assert not is_token_event(role, chat=True)
    assert is_token_event(partial_utf8, chat=True)
    assert is_token_event({"choices": [{"delta": {"content": "hi", "role": "assistant"}}]},
                          chat=True)
    assert not is_token_event(usage, chat=True)
    assert is_token_event({"choices": [{"text": ""}]}, chat=False)


@pytest.mark.parametrize(("concurrency", "rate", "message"), [
    ("1,x", None, "not a whole number"), ("0", None, "not a whole number"),
    ("1,,4", None, "empty item"), ("4,4", None, "repeats"), (None, "-1", "must be > 0"),
    (None, "fast", "not a number"), ("1", "2", "not both"), (None, "nan", "must be > 0"),
])
def test_nonsense_sweeps_are_usage_errors(concurrency: str | None, rate: str | None,
                                          message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_levels(concurrency=concurrency, rate=rate)


def test_sweeps_parse() -> None:
    assert [level.slug for level in parse_levels(concurrency="1,8", rate=None)] == ["c1", "c8"]
    assert [level.slug for level in parse_levels(concurrency=None, rate="0.5,inf")] == \
        ["r0.5", "r-inf"]


@pytest.mark.parametrize("spec", ["0", "uniform:9:3", "normal:x:1", "zipf:1:2", "uniform:1"])
def test_bad_length_specs(spec: str) -> None:
    with pytest.raises(UsageError, match="--input-len"):
        parse_length(spec, option="--input-len")


def test_bad_slos_and_cross_option_checks() -> None:
    with pytest.raises(UsageError, match="METRIC:MS"):
        parse_slos(["latency:5"])
    with pytest.raises(UsageError, match="nothing of --duration"):
        parse_options("http://x", duration=10, warmup=6, cooldown=5)
    assert parse_slos(["ttft:500", "tpot:50"]) == Slo(ttft_ms=500, tpot_ms=50)


def test_the_cli_and_the_library_default_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mls bench run`'s defaults (shown in its help) are parse_options' defaults."""
    import inspect

    from click.testing import CliRunner

    from modal_llm_serving.bench import options
    from modal_llm_serving.cli import cli

    given: dict[str, Any] = {}

    def capture(url: str, **values: Any) -> None:
        given.update(values)
        raise UsageError("captured")

    monkeypatch.setattr(options, "parse_options", capture)
    CliRunner().invoke(cli, ["bench", "run", "http://x"])
    library = inspect.signature(parse_options).parameters
    shared = set(library) - {"url", "headers"}
    assert set(given) - {"headers"} == shared
    assert {name: given[name] for name in shared} == \
        {name: library[name].default for name in shared}


def test_arrivals_have_the_asked_rate_and_shape() -> None:
    for arrival, burstiness in (("constant", 1.0), ("poisson", 1.0), ("gamma", 0.25)):
        times = arrival_times(count=20_001, rate=50, arrival=arrival, burstiness=burstiness,
                              seed=1)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        mean = sum(gaps) / len(gaps)
        cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
        assert mean == pytest.approx(1 / 50, rel=0.05)
        expected_cv = {"constant": 0.0, "poisson": 1.0, "gamma": 2.0}[arrival]  # 1/sqrt(shape)
        assert cv == pytest.approx(expected_cv, abs=0.1)
    assert arrival_times(count=3, rate=math.inf, arrival="poisson", burstiness=1, seed=0) == \
        [0.0, 0.0, 0.0]


def test_synthetic_prompts_have_exact_lengths() -> None:
    prompts, exact = synthetic_prompts(WordTokenizer(), count=50,
                                       input_len=parse_length("uniform:5:40", option="x"),
                                       output_len=parse_length("7", option="y"), seed=3)
    assert exact == 1.0
    assert all(len(p.text.split()) == p.input_len and 5 <= p.input_len <= 40 for p in prompts)
    assert {p.output_len for p in prompts} == {7}


@given(st.binary(max_size=200), st.data())
def test_chunked_decoder_any_split(payload: bytes, data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 1000)))
    wire, start = b"", 0
    while start < len(payload):
        size = rng.randint(1, 30)
        piece = payload[start:start + size]
        wire += b"%x\r\n%s\r\n" % (len(piece), piece)
        start += size
    wire += b"0\r\n\r\n"
    decoder, out = ChunkedDecoder(), b""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    start = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[start:cut])
        start = cut
    assert out == payload and decoder.done


def test_shared_summary_keys_are_the_ones_vllm_bench_serve_writes() -> None:
    """Where the meaning is the same, the key is vLLM's: checked against its installed source."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    source = (Path(spec.origin).parent / "benchmarks" / "serve.py").read_text()
    plain = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
             "request_throughput", "request_goodput", "output_throughput",
             "total_token_throughput", "max_concurrency", "request_rate", "burstiness",
             "num_prompts", "model_id", "endpoint_type", "date")
    for key in plain:
        assert f'"{key}"' in source, key
    # per-metric keys are built as f"mean_{metric}_ms", f"p{p}_{metric}_ms", ...
    for pattern in ('f"mean_{metric_attribute_name}_ms"', 'f"median_{metric_attribute_name}_ms"',
                    'f"std_{metric_attribute_name}_ms"', 'f"p{p_word}_{metric_attribute_name}_ms"'):
        assert pattern in source, pattern
    accumulator = Accumulator()
    accumulator.add(_record(0, sent=0, first=5, gaps=[1, 1], n_out=3))
    summary = _summary(accumulator, slo=Slo(ttft_ms=10))
    expected = {"duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput",
                "total_token_throughput"}
    expected |= {f"{stat}_{metric}_ms" for stat in ("mean", "median", "std", "p99")
                 for metric in ("ttft", "tpot", "itl", "e2el")}
    assert expected <= set(summary)


def test_a_sweep_whose_tokens_came_in_one_read_reports_without_a_warning(
        tmp_path: Any) -> None:
    """A short stream read in one piece has TPOT 0 (every token the same stamp): the sweep's
    plot must not ask for an axis from 0 to 0 (matplotlib warns; the suite makes that an
    error), as a Ctrl-C'd sweep of 4-token requests did."""
    from modal_llm_serving.bench.report import render_report
    from modal_llm_serving.bench.results import JsonlSink, write_json

    for slug in ("c1", "c2"):
        with JsonlSink(tmp_path / slug / "requests.jsonl") as sink:
            sink(_record(0, sent=0, first=5, gaps=[0, 0, 0], n_out=4))
    write_json(tmp_path / "sweep.json", {"levels": ["c1", "c2"], "complete": False,
                                         "summaries": []})
    assert render_report(tmp_path).is_file()
    assert (tmp_path / "latency_throughput.png").is_file()
