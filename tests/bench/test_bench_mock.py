"""`mls bench` against the calibration mock: faults, bounds, sessions, reports, cold start.

The mock (benchmarks/mockserver/) runs in its own process with known timings and injected
faults; it is used here only for what a real engine cannot do on demand (faults, exact timings).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.cli import cli
from tests.terminal import as_in_a_terminal


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=30, itl_ms=5) as server:
        yield server
        assert server.stats()["errors"] == []  # no fate here came from a bug of the mock


def _run(url: str, out: Path, **options: Any) -> dict[str, Any]:
    summaries = run_benchmark(parse_options(url, **options), out_dir=out)
    return summaries[0].to_dict()


def _records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()]


def _ttft_as_promised(summary: dict[str, Any], truth_ms: float) -> None:
    """README's promise, on any load: TTFT p50 never below the truth, and at most 1 ms plus the
    event-loop lag (p99) the same run reported above it."""
    ttft, lag = summary["median_ttft_ms"], summary["harness"]["loop_lag_p99_ms"]
    assert truth_ms <= ttft <= truth_ms + 1 + lag, (ttft, lag)


def _per_token_as_promised(value_ms: float, truth_ms: float, summary: dict[str, Any],
                           folder: Path, gaps: int) -> None:
    """A time measured between two stamps `gaps` token times apart: each stamp is late by at
    most the loop's worst lag plus the mock's own (it says how late it wrote), so the error
    is at most that over `gaps` (1 ms more for what neither measures), on any load."""
    late = summary["harness"]["loop_lag_max_ms"] + max(
        record["server_timing"]["max_late_ns"] for record in _records(folder)
        if record["ok"]) / 1e6
    assert abs(value_ms - truth_ms) <= (1 + late) / gaps, (value_ms, late)


def test_one_stream_measures_the_known_truth(mock: Any, tmp_path: Path) -> None:
    summary = _run(mock.url, tmp_path, concurrency="1", num_requests=6, input_len="16",
                   output_len="20")
    assert summary["completed"] == 6 and summary["failed"] == 0
    # truth: TTFT 30 ms, 5 ms per token (19 tokens after the first)
    _ttft_as_promised(summary, 30)
    _per_token_as_promised(summary["mean_tpot_ms"], 5, summary, tmp_path, gaps=19)
    assert summary["total_output_tokens"] == 120  # from usage, 20 per request
    assert summary["data"]["tokenizer_source"].startswith("server /tokenize")
    assert summary["data"]["exact_input_fraction"] == 1.0
    records = _records(tmp_path)
    assert len(records) == 6 and all(r["n_out"] == 20 and r["token_events"] == 20
                                     for r in records)


@pytest.mark.alone
def test_128_streams_read_ttft_within_the_lag_they_report(tmp_path: Path) -> None:
    """README's promise at 128 streams on a 2-core client: TTFT p50 never below the truth and
    at most 1 ms plus the event-loop lag p99 the same summary reports above it, on any load.

    The truth of each request is what the mock says it did: its first token 50 ms after it
    read the request, plus however late it wrote it (`server_timing`; a busy mock is not the
    client's error). A fixed bound would not do: on this shared 2-core machine the error was
    +0.5 ms idle, +4 ms with one core busy elsewhere, +70 ms with three busy processes, and
    the loop lag the harness reports rose with it every time (docs/PERFORMANCE.md).
    """
    with MockProcess(ttft_ms=50, itl_ms=10) as server:
        summary = _run(server.url, tmp_path, concurrency="128", num_requests=256,
                       input_len="8", output_len="10")
    assert summary["completed"] == 256
    errors = sorted(record["ttft_ms"] - 50 - record["server_timing"]["first_late_ns"] / 1e6
                    for record in _records(tmp_path))
    assert errors[0] >= 0, errors[:3]  # a stamp can be late, never early
    lag = summary["harness"]["loop_lag_p99_ms"]
    assert statistics.median(errors) <= 1 + lag, (statistics.median(errors), lag)


def test_chunked_streams_keep_tpot_per_token(tmp_path: Path) -> None:
    """4 tokens per event, 40 ms apart: TPOT is still 10 ms per token (not per event)."""
    with MockProcess(ttft_ms=20, itl_ms=10, chunk=4) as server:
        summary = _run(server.url, tmp_path, concurrency="1", num_requests=3, input_len="8",
                       output_len="24")
    record = _records(tmp_path)[0]
    assert record["token_events"] == 6 and record["n_out"] == 24
    # (t_last − t_first) / (24 − 4); ITL stays a gap between events (40 ms)
    _per_token_as_promised(summary["mean_tpot_ms"], 10, summary, tmp_path, gaps=20)
    _per_token_as_promised(summary["median_itl_ms"], 40, summary, tmp_path, gaps=1)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_every_transport_gives_the_same_fates(transport: str, tmp_path: Path) -> None:
    with MockProcess(ttft_ms=20, itl_ms=2, faults=("reset=3", "503=4")) as server:
        summary = _run(server.url, tmp_path, concurrency="2", num_requests=12, input_len="8",
                       output_len="10", transport=transport)
    assert summary["error_counts"] == {"reset": 3, "http_503": 3}  # #12 is both: 503 wins
    # these libraries stamp a chunk when their reader hands it over, after their own parsing,
    # not as it arrives (docs/PERFORMANCE.md: +1.6% at 1 stream, +38% at 128): the README's
    # promise is the raw transport's; here never early, and not far off
    ttft, lag = summary["median_ttft_ms"], summary["harness"]["loop_lag_p99_ms"]
    assert 20 <= ttft <= 35 + lag, (ttft, lag)


def test_each_fault_gets_its_fate_and_the_run_goes_on(tmp_path: Path) -> None:
    faults = ("503=5", "429=7", "reset=6", "malformed=11", "stall=13", "nodone=2", "split=3")
    # the counts below are exact, so no healthy request may meet the stall timeout: 3 s is 1500
    # token gaps, kept even by a loaded machine, and the stall fault pauses 10 s
    with MockProcess(ttft_ms=10, itl_ms=2, faults=faults, stall_s=10) as server:
        summary = _run(server.url, tmp_path, concurrency="4", num_requests=26, input_len="8",
                       output_len="12", stall_timeout=3.0)
    records = _records(tmp_path)
    assert len(records) == 26 == summary["completed"] + summary["failed"]
    # the mock numbers the requests as it reads them, and the first fault of a number wins
    # (503, 429, reset, stall, malformed): 5, 3, 4, 2 (#13, #26) and 2 (#11, #22) of 26
    assert summary["error_counts"] == {"http_503": 5, "http_429": 3, "reset": 4, "timeout": 2,
                                       "malformed_chunk": 2}
    assert "injected 503" in summary["error_examples"]["http_503"]
    ok = [r for r in records if r["ok"]]
    # split frames, keep-alive comments and a missing [DONE] do not fail a request: the other
    # 10 (#3 and #9 split, #2, #4, #8 and #16 without [DONE]) succeed
    assert summary["completed"] == len(ok) == 10
    assert sum(not r["saw_done"] for r in ok) == 4
    assert all(r["n_out"] == 12 for r in ok)


def test_503_then_success_with_retries(tmp_path: Path) -> None:
    with MockProcess(ttft_ms=5, itl_ms=1, faults=("503=2",)) as server:
        summary = _run(server.url, tmp_path, concurrency="1", num_requests=6, input_len="4",
                       output_len="4", retries=2)
    assert summary["completed"] == 6
    # the mock's 2nd, 4th, ... request answers 503: after the first, each request needs a retry
    assert [r["attempts"] for r in _records(tmp_path)] == [1, 2, 2, 2, 2, 2]


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with MockProcess(faults=("hang=1",)) as server:
        started = time.monotonic()
        summary = _run(server.url, tmp_path, concurrency="2", num_requests=2, input_len="4",
                       output_len="4", timeout=1.5, stall_timeout=30.0)
    assert summary["error_counts"] == {"timeout": 2}
    # the 1.5 s timeout ended it, not the stall timeout (a hang sends no byte, so a stall
    # timeout shorter than this one would end it first and hide a request timeout ignored)
    assert "(the request timeout)" in summary["error_examples"]["timeout"]
    # a run without either would wait out the mock's hour-long hang (30 s is 20x the timeout:
    # room for a loaded machine, far from the hour)
    assert time.monotonic() - started < 30


def test_open_loop_reports_latency_from_the_schedule(mock: Any, tmp_path: Path) -> None:
    summary = _run(mock.url, tmp_path, rate="40", arrival="poisson", num_requests=30,
                   input_len="8", output_len="8")
    assert summary["completed"] == 30 and summary["request_rate"] == 40
    records = _records(tmp_path)
    assert all(r["scheduled_ns"] is not None for r in records)

    def mean_ms(later: str, earlier: str) -> float:
        return statistics.mean(r[later] - r[earlier] for r in records) / 1e6

    # each is measured from the record's scheduled send, not its actual send: a summary that
    # took TTFT for TTFT from schedule would still pass a `>=` against TTFT, not these
    assert summary["mean_sched_ttft_ms"] == pytest.approx(mean_ms("first_token_ns",
                                                                  "scheduled_ns"))
    assert summary["mean_sched_e2el_ms"] == pytest.approx(mean_ms("last_token_ns",
                                                                  "scheduled_ns"))
    assert summary["mean_dispatch_lag_ms"] == pytest.approx(mean_ms("sent_ns", "scheduled_ns"))
    # every send comes some time after its scheduled moment, so from the schedule is later
    assert summary["mean_sched_ttft_ms"] > summary["mean_ttft_ms"]
    assert summary["min_dispatch_lag_ms"] >= 0  # never sent before its scheduled time


def test_duration_bound_and_capped_open_loop(mock: Any, tmp_path: Path) -> None:
    summary = _run(mock.url, tmp_path, rate="inf", max_concurrency=3, duration=1.0,
                   input_len="4", output_len="10")
    # no new request starts after the duration (on the run's own clock; without the bound this
    # run would never end, and the suite's timeout would say so). A request is taken before the
    # end and stamped when its bytes reach the connection, which on a busy machine can be a few
    # ms later (1.006 s seen in the suite); a bound that let requests start on would send one
    # every 25 ms here (3 streams of 75 ms requests), soon past 50 ms
    assert max(record["sent_ns"] for record in _records(tmp_path)) < 1_050_000_000
    assert summary["completed"] > 5 and summary["max_concurrency"] == 3
    assert summary["achieved_concurrency"] <= 3.05


def test_multi_turn_sessions_reuse_the_prefix_with_one_header(tmp_path: Path) -> None:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        summary = _run(server.url, tmp_path, concurrency="2", num_requests=9, turns=3,
                       input_len="6", output_len="5")
        stats = httpx.get(f"{server.url}/mock/stats").json()
    assert summary["completed"] == 9
    sessions = list(stats["sessions"].values())
    # each conversation's turns carry the earlier user/assistant pairs (1, 3, 5 messages); the
    # request budget may cut the last conversations short, never reorder them
    assert all(turns == [1, 3, 5][: len(turns)] for turns in sessions)
    assert sum(map(len, sessions)) == 9 and sessions.count([1, 3, 5]) >= 2
    records = _records(tmp_path)
    assert len({r["session_id"] for r in records}) == len(sessions)
    assert {r["turn"] for r in records} == {0, 1, 2}


def test_cli_run_report_and_json(mock: Any, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, [
        "bench", "run", mock.url, "-c", "1,3", "-n", "6", "--input-len", "uniform:4:12",
        "--output-len", "6", "--slo", "ttft:1000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "TTFT = first token-bearing event − send" in result.output
    for name in ("sweep.json", "report.md", "latency_throughput.png", "latency_c1.png",
                 "c3/requests.jsonl", "c3/summary.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "TPOT = (t_last − t_first) / (N_out − tokens in first event)" in report
    again = CliRunner().invoke(cli, ["bench", "report", str(out / "c1"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["completed"] == 6


@pytest.mark.parametrize(("args", "message"), [
    (["not-a-url"], "is not an http(s) URL"),
    (["http://x", "-c", "0,2"], "not a whole number"),
    (["http://x", "-c", "2", "-r", "3"], "not both"),
    (["http://x", "--rate", "-3"], "must be > 0"),
    (["http://x", "--input-len", "normal:-5:1"], "--input-len"),
    (["http://x", "--slo", "ttft"], "METRIC:MS"),
    (["http://x", "--dataset", "/no/such.jsonl"], "does not exist"),
    (["http://x", "--rate", "inf", "--duration", "5"], "without limit"),
    (["http://x", "--duration", "5", "--warmup", "3", "--cooldown", "2"], "nothing of"),
])
def test_cli_explains_bad_arguments_in_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "run", *args, "--model", "m"])
    assert result.exit_code == 2
    assert message in result.output
    # the message alone: no usage synopsis or help hint around it, no traceback
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_cli_wrong_model_records_404s(mock: Any, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--model", "nope", "-n", "3",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "not among the served models" in result.output
    assert "http_404" in result.output and "does not exist" in result.output
    assert len(_records(tmp_path)) == 3


def test_cli_unreachable_server_records_connect_errors(tmp_path: Path) -> None:
    # a port held bound but not listening: refused, and nothing else can take it meanwhile
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = CliRunner().invoke(cli, ["bench", "run", url, "--model", "m", "-n", "2",
                                          "--out", str(tmp_path)])
        no_model = CliRunner().invoke(cli, ["bench", "run", url])
    assert result.exit_code == 1 and "connect" in result.output
    assert [r["error"] for r in _records(tmp_path)] == ["connect", "connect"]
    assert no_model.exit_code == 2 and "pass --model" in no_model.output


def test_bad_dataset_lines_are_explained(mock: Any, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "alpha bravo", "output_tokens": 3}\n{"oops": 1}\n')
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--dataset", str(data),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "prompts.jsonl:2" in result.output  # a bad file: 2


def test_user_jsonl_and_sharegpt_prompts(mock: Any, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "alpha bravo charlie", "output_tokens": 3}\n'
                    '{"messages": [{"role": "user", "content": "delta echo"}],'
                    ' "output_tokens": 5}\n')
    summary = _run(mock.url, tmp_path / "a", concurrency="1", num_requests=4, dataset=data)
    assert summary["total_output_tokens"] == 16 and summary["completed"] == 4
    share = tmp_path / "share.json"
    share.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "alpha bravo"},
                           {"from": "gpt", "value": "one two three four"}]}]))
    summary = _run(mock.url, tmp_path / "b", concurrency="1", num_requests=2, dataset=share)
    assert summary["total_output_tokens"] == 8  # the reply's length, in the mock's word tokens


def test_interrupted_run_keeps_finished_requests(tmp_path: Path) -> None:
    with MockProcess(ttft_ms=5, itl_ms=5) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", server.url, "-c",
             "2", "-n", "100000", "--output-len", "10", "--input-len", "4", "--out",
             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_in_a_terminal)
        deadline = time.monotonic() + 60
        jsonl = tmp_path / "requests.jsonl"
        while time.monotonic() < deadline:
            if jsonl.is_file() and jsonl.stat().st_size > 5000:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    records = _records(tmp_path)
    assert len(records) >= 10 and all(r["ok"] or r["error"] == "cancelled" for r in records)
    report = CliRunner().invoke(cli, ["bench", "report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert "interrupted; rebuilt" in report.output and (tmp_path / "latency.png").is_file()


def test_cold_start_retries_503_until_the_first_token() -> None:
    with MockProcess(ttft_ms=5, itl_ms=1, cold_s=3.0) as server:
        httpx.post(f"{server.url}/mock/scale-to-zero")  # 503s for the next 3 s
        result = CliRunner().invoke(cli, ["bench", "cold-start", server.url, "--model", "mock",
                                          "--repeat", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    first, second = payload["trials"]
    # the first trial waits out the rest of the cold period (less whatever startup took)
    assert first["seconds_to_first_token"] > 0.5 and first["outcomes"]["http_503"] >= 1
    assert first["outcomes"]["ok"] == 1 and first["attempts"] == first["outcomes"]["http_503"] + 1
    assert second["outcomes"] == {"ok": 1}
    assert second["seconds_to_first_token"] < first["seconds_to_first_token"]


def test_cold_start_clock_can_start_at_a_given_moment() -> None:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        result = CliRunner().invoke(cli, ["bench", "cold-start", server.url, "--model", "mock",
                                          "--since", str(time.time() - 30), "--json"])
        future = CliRunner().invoke(cli, ["bench", "cold-start", server.url, "--model", "mock",
                                          "--since", str(time.time() + 60)])
    assert result.exit_code == 0, result.output
    # from the given moment, 30 s ago (the upper bound only catches a clock read in the wrong
    # unit or from the wrong moment: 60 s of room for a loaded machine)
    assert 30 <= json.loads(result.stdout)["trials"][0]["seconds_to_first_token"] < 90
    assert future.exit_code == 2 and "in the future" in future.output


def test_cold_start_gives_up_on_a_non_retryable_answer() -> None:
    with MockProcess() as server:
        result = CliRunner().invoke(cli, ["bench", "cold-start", server.url, "--model", "nope"])
    assert result.exit_code == 1 and "not retryable: http_404" in result.output


def test_in_region_app_is_pinned_and_runs_the_same_harness(mock: Any, tmp_path: Path) -> None:
    from modal_llm_serving.bench import modal_app

    info = modal_app.run_in_region.info()
    assert info.regions == [modal_app.BENCH_REGION] == ["us-east"]
    assert info.timeout == modal_app.BENCH_TIMEOUT and info.cpu == modal_app.BENCH_CPU
    result = modal_app.run_here(parse_options(mock.url, concurrency="2", num_requests=4,
                                              input_len="4", output_len="4"), out_dir=tmp_path)
    assert result["summaries"][0]["completed"] == 4
    assert {"requests.jsonl", "summary.json", "report.md"} <= set(result["files"])


def _modal_credentials() -> bool:
    return bool(os.environ.get("MODAL_TOKEN_ID")) or (Path.home() / ".modal.toml").is_file()


@pytest.mark.live
@pytest.mark.skipif(not _modal_credentials(), reason="needs Modal credentials")
def test_in_region_app_live(mock: Any) -> None:  # pragma: no cover - needs credentials
    url = os.environ.get("MLS_LIVE_BENCH_URL")
    if not url:
        pytest.skip("set MLS_LIVE_BENCH_URL to a deployed endpoint")
    from modal_llm_serving.bench import modal_app

    with modal_app.app.run():
        result = modal_app.run_in_region.remote(parse_options(url, concurrency="1",
                                                              num_requests=3, output_len="8"))
    assert result["summaries"][0]["completed"] == 3


def test_an_endpoint_behind_modal_proxy_auth_is_measured_and_its_tokens_never_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Modal Endpoint (or Server) answers 401 without a proxy token; `mls bench run` sends one
    from MODAL_PROXY_TOKEN_ID/SECRET as Modal-Key/Modal-Secret (or as given with --header, the
    single-Bearer form), so an Endpoint and a self-written app run the same workload."""
    token_id, secret = "wk-benchendpointid1234", "ws-benchendpointsecret5678"
    monkeypatch.delenv("MODAL_PROXY_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_PROXY_TOKEN_SECRET", raising=False)
    short = ["-n", "3", "--input-len", "8", "--output-len", "4"]
    with MockProcess(ttft_ms=5, itl_ms=1, model="qwen3-8b",
                     proxy_auth=f"{token_id}:{secret}") as endpoint:
        refused = CliRunner().invoke(cli, ["bench", "run", endpoint.url, "--model", "qwen3-8b",
                                           *short, "--out", str(tmp_path / "refused")])
        assert refused.exit_code == 1 and "http_401" in refused.output
        monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", token_id)
        monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", secret)
        paired = CliRunner().invoke(cli, ["bench", "run", endpoint.url, *short,
                                          "--out", str(tmp_path / "paired")])
        assert paired.exit_code == 0, paired.output
        summary = json.loads((tmp_path / "paired" / "summary.json").read_text())
        assert summary["completed"] == 3 and summary["model_id"] == "qwen3-8b"  # /v1/models
        monkeypatch.delenv("MODAL_PROXY_TOKEN_ID")
        monkeypatch.delenv("MODAL_PROXY_TOKEN_SECRET")
        bearer = CliRunner().invoke(cli, [
            "bench", "run", endpoint.url, *short, "--out", str(tmp_path / "bearer"),
            "--header", f"Authorization: Bearer {token_id}.{secret}"])
        assert bearer.exit_code == 0, bearer.output
        assert endpoint.stats()["errors"] == []
    for result in (refused, paired, bearer):
        assert secret not in result.output and token_id not in result.output
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) >= 6
    for path in written:
        data = path.read_bytes()
        assert secret.encode() not in data and token_id.encode() not in data, path
