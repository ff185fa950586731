"""`mls bench run --workers N`: how a load splits, and the split run against the mock.

The arithmetic (partition.py) is checked for every split hypothesis draws: parts add up to the
load, indices never collide, and the parts' arrivals are exactly the one schedule. The runs use
the calibration mock at small scale (a few workers, tens of streams): what matters here is that
sharding, merging and interruption keep every record, not speed (docs/PERFORMANCE.md has that).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench import shards
from modal_llm_serving.bench.data import Prompt
from modal_llm_serving.bench.options import Level, parse_options
from modal_llm_serving.bench.partition import resolve, shares
from modal_llm_serving.cli import cli
from modal_llm_serving.errors import UsageError
from tests.bench.test_bench import arrival_times
from tests.bench.test_bench_mock import _records, _run, _ttft_as_promised
from tests.terminal import as_in_a_terminal

EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "40"))
splits = st.lists(st.integers(1, 6), min_size=1, max_size=3)  # e.g. [containers, workers]


def _paths(sizes: list[int]) -> list[tuple[tuple[int, int], ...]]:
    """Every part of a load split by `sizes` (outermost first)."""
    return [tuple(zip(ks, sizes, strict=True))
            for ks in itertools.product(*(range(n) for n in sizes))]


@settings(max_examples=EXAMPLES, deadline=None)
@given(total=st.integers(0, 10_000), n=st.integers(1, 50),
       weights=st.none() | st.lists(st.integers(1, 100), min_size=50, max_size=50))
def test_shares_add_up_and_follow_the_weights(total: int, n: int,
                                              weights: list[int] | None) -> None:
    parts = shares(total, n, weights=weights[:n] if weights else None)
    assert sum(parts) == total and len(parts) == n and min(parts) >= 0
    if weights is None:
        assert max(parts) - min(parts) <= 1
    else:
        exact = [total * w / sum(weights[:n]) for w in weights[:n]]
        assert all(abs(part - value) < 1 for part, value in zip(parts, exact, strict=True))


@settings(max_examples=EXAMPLES, deadline=None)
@given(sizes=splits, streams=st.integers(1, 300), budget=st.integers(0, 3000),
       closed=st.booleans())
def test_parts_cover_the_load_once(sizes: list[int], streams: int, budget: int,
                                   closed: bool) -> None:
    if math.prod(sizes) > streams:
        with pytest.raises(ValueError, match="cannot be split"):
            for path in _paths(sizes):
                resolve(path=path, concurrency=streams if closed else None,
                        max_concurrency=None if closed else streams, num_requests=budget)
        return
    found = [resolve(path=path, concurrency=streams if closed else None,
                     max_concurrency=None if closed else streams, num_requests=budget)
             for path in _paths(sizes)]
    parts = len(found)
    assert parts == math.prod(sizes)
    assert sum((part.concurrency or part.max_concurrency or 0) for part in found) == streams
    assert min((part.concurrency or part.max_concurrency or 0) for part in found) >= 1
    indices = [index for part in found for index in part.indices()]
    assert sorted(indices) == list(range(budget))  # every request once, none twice
    if closed and budget >= 10 * parts:  # budgets follow the streams: parts end together
        for part in found:
            assert part.budget is not None and part.concurrency is not None
            assert abs(part.budget / budget - part.concurrency / streams) < 0.05 + 1 / streams


@settings(max_examples=EXAMPLES, deadline=None)
@given(sizes=splits, count=st.integers(1, 400), rate=st.floats(0.5, 1e4),
       arrival=st.sampled_from(["poisson", "constant", "gamma"]), seed=st.integers(0, 99))
def test_parts_arrivals_are_the_one_schedule(sizes: list[int], count: int, rate: float,
                                             arrival: str, seed: int) -> None:
    whole = arrival_times(count=count, rate=rate, arrival=arrival, burstiness=0.5, seed=seed)
    merged: dict[int, float] = {}
    for path in _paths(sizes):
        part = resolve(path=path, concurrency=None, max_concurrency=None, num_requests=count)
        mine = list(part.positions(iter(whole)))
        assert len(mine) == part.budget  # single-turn: one slot per arrival
        assert not set(merged) & {position for position, _ in mine}
        merged.update(mine)
    assert [merged[position] for position in range(count)] == whole


def test_unbounded_parts_never_share_an_index() -> None:
    found = [resolve(path=path, concurrency=7, max_concurrency=None, num_requests=None)
             for path in _paths([2, 3])]
    firsts = [list(itertools.islice(part.indices(), 200)) for part in found]
    everything = sorted(index for indices in firsts for index in indices)
    assert len(set(everything)) == len(everything) and everything[:1200] == list(range(1200))


def test_workers_are_chosen_from_streams_and_cores() -> None:
    config = parse_options("http://x", model="m")

    def choose(level: Level, workers: int | None = None, cap: int | None = None, *,
               cores: int = 16) -> int:
        options = dataclasses.replace(config, workers=workers, max_concurrency=cap)
        return shards.choose_workers(options, level, cores=cores)

    assert choose(Level("concurrency", 1)) == 1
    assert choose(Level("concurrency", 128)) == 1
    assert choose(Level("concurrency", 129)) == 2
    assert choose(Level("concurrency", 2048)) == 16
    assert choose(Level("concurrency", 2048), cores=2) == 2
    # asked for: as given, but never more processes than streams (or than cores: that is
    # for the health warnings to point out, not for this to overrule)
    assert choose(Level("concurrency", 3), 8) == 3
    assert choose(Level("rate", 5.0), 4, cores=2) == 4
    # an open loop: its cap is its streams
    assert choose(Level("rate", 5.0), cap=600) == 5
    assert choose(Level("rate", 5.0), cap=600, cores=2) == 2


@pytest.fixture(scope="module")
def mock() -> Any:
    # one process: GET /mock/requests then shows every request (one of several sees its own)
    with MockProcess(ttft_ms=20, itl_ms=4) as server:
        yield server


def _first_wave_spread_ms(requests: list[dict[str, Any]], streams: int) -> float:
    """How far apart the mock read each stream's first request: the first on each of the
    pools' connections (one per stream). Its own clock: each part stamps relative to its own
    start, so a part that started late looks on time in its records; only the mock can tell."""
    first: dict[int, int] = {}
    for request in requests:  # in the order the mock read them
        first.setdefault(request["connection"], request["received_ns"])
    assert len(first) == streams
    return (max(first.values()) - min(first.values())) / 1e6


def test_a_split_closed_loop_is_one_run(mock: Any, tmp_path: Path) -> None:
    before = mock.stats()["requests"]
    summary = _run(mock.url, tmp_path, concurrency="12", num_requests=60, input_len="8",
                   output_len="16", workers=3)
    records = _records(tmp_path)
    assert sorted(r["index"] for r in records) == list(range(60))
    assert summary["completed"] == 60 and summary["workers"] == 3
    assert summary["num_prompts"] == 60 and summary["total_output_tokens"] == 60 * 16
    assert len(summary["harness"]["shards"]) == 3 and summary["harness"]["workers"] == 3
    _ttft_as_promised(summary, 20)  # the busiest worker's loop lag bounds the error
    # all workers started together: the mock read the 12 streams' first requests within 200 ms
    # plus however late the latest worker says it started (a busy machine may wake one late)
    late_ms = summary["harness"]["start_late_ms"]
    assert _first_wave_spread_ms(mock.requests(after=before), 12) < 200 + late_ms, late_ms


def test_a_split_open_loop_sends_on_the_one_schedule(mock: Any, tmp_path: Path) -> None:
    summary = _run(mock.url, tmp_path, rate="80", arrival="gamma", burstiness=0.5,
                   num_requests=40, input_len="8", output_len="8", workers=2, seed=7)
    scheduled = sorted(r["scheduled_ns"] for r in _records(tmp_path))
    expected = arrival_times(count=40, rate=80, arrival="gamma", burstiness=0.5, seed=7)
    assert scheduled == [int(offset * 1e9) for offset in expected]
    assert summary["completed"] == 40 and summary["min_dispatch_lag_ms"] >= 0


def test_split_sessions_keep_their_turns_in_order(tmp_path: Path) -> None:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        summary = _run(server.url, tmp_path, concurrency="4", num_requests=24, turns=3,
                       input_len="6", output_len="5", workers=2)
        sessions = list(httpx.get(f"{server.url}/mock/stats").json()["sessions"].values())
    assert summary["completed"] == 24
    assert all(turns == [1, 3, 5][: len(turns)] for turns in sessions)
    assert sum(map(len, sessions)) == 24


def _children(pid: int) -> list[psutil.Process]:
    """The bench's worker processes (not multiprocessing's resource tracker)."""
    try:
        return [child for child in psutil.Process(pid).children(recursive=True)
                if "spawn_main" in " ".join(child.cmdline())]
    except psutil.NoSuchProcess:
        return []


def test_ctrl_c_keeps_every_workers_records(mock: Any, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", mock.url, "-c", "8",
         "-n", "100000", "--output-len", "10", "--input-len", "4", "--workers", "2", "--out",
         str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 60
    jsonl = tmp_path / "requests.jsonl"
    while time.monotonic() < deadline and not (jsonl.is_file() and jsonl.stat().st_size > 20000):
        time.sleep(0.2)
    workers = _children(process.pid)
    assert len(workers) == 2
    # as a terminal does: the signal reaches the whole process group
    process.send_signal(signal.SIGINT)
    for worker in workers:
        worker.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    records = _records(tmp_path)
    assert all(r["ok"] or r["error"] == "cancelled" for r in records)
    # both workers' finished requests are there (their index blocks are far apart)
    assert {r["index"] < 50_000 for r in records if r["ok"]} == {True, False}
    assert 1 <= sum(r["error"] == "cancelled" for r in records) <= 8
    assert len({r["index"] for r in records}) == len(records)
    assert not [worker for worker in workers if worker.is_running()
                and worker.status() != psutil.STATUS_ZOMBIE]
    report = CliRunner().invoke(cli, ["bench", "report", str(tmp_path)])
    assert report.exit_code == 0 and "interrupted; rebuilt" in report.output


def test_a_worker_that_dies_is_one_line_and_the_rest_is_kept(mock: Any,
                                                              tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", mock.url, "-c", "4",
         "-n", "100000", "--output-len", "10", "--input-len", "4", "--workers", "2", "--out",
         str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    jsonl = tmp_path / "requests.jsonl"
    while time.monotonic() < deadline and not (jsonl.is_file() and jsonl.stat().st_size > 20000):
        time.sleep(0.2)
    _children(process.pid)[0].kill()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    # one line says what happened: the only one marked as an error among the progress lines
    [error] = [line for line in err.splitlines() if "error" in line.lower()]
    assert error.startswith("Error: ") and "ended without its results" in error, err
    assert "exit code -9" in error and "Traceback" not in err
    assert len(_records(tmp_path)) > 10


def test_a_slow_collector_makes_workers_wait_not_break(tmp_path: Path) -> None:
    """Fast streams and a slow sink: the workers' batches fill the pipe faster than this
    process drains it; a worker must wait for room, never send half a batch."""
    records: list[Any] = []

    def slow_sink(record: Any) -> None:
        records.append(record)
        if len(records) == 1:
            time.sleep(3)  # meanwhile the workers go on: their pipes fill up

    # 512 tokens written at once: each record carries 512 gaps; 2 MB of them in about a second
    with MockProcess(ttft_ms=1, itl_ms=0, processes=2) as server:
        options = parse_options(server.url, model="mock", num_requests=500, workers=2)
        prompts = [Prompt(text="alpha bravo", input_len=2, output_len=512)]
        summary = shards.run_level(options, Level("concurrency", 32), prompts,
                                   sink=slow_sink).to_dict()
    assert summary["completed"] == 500 == len(records)


def test_in_region_app_splits_a_level_over_containers(mock: Any, tmp_path: Path) -> None:
    """The app's fan-out, offline: the Function has `.map` (what `--containers` calls), and the
    same split-and-merge runs here with threads standing in for containers."""
    import inspect
    from concurrent.futures import ThreadPoolExecutor

    from modal_llm_serving.bench import modal_app

    assert callable(modal_app.run_in_region.map)
    assert "containers" in inspect.signature(modal_app.main.info.raw_f).parameters

    def containers(parts: list[Any]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(len(parts)) as pool:
            return list(pool.map(lambda options: modal_app.run_in_region.local(options), parts))

    options = {"concurrency": "6,9", "num_requests": 36, "input_len": "4", "output_len": "8"}
    before = mock.stats()["requests"]
    summaries = [summary.to_dict() for summary in modal_app.run_split(
        parse_options(mock.url, **options), 3, tmp_path, run_parts=containers,
        start_margin_s=3.0)]
    assert [s["completed"] for s in summaries] == [36, 36]
    read = mock.requests(after=before)
    for slug, summary, streams, requests in zip(("c6", "c9"), summaries, (6, 9),
                                                (read[:36], read[36:]), strict=True):
        records = _records(tmp_path / slug)
        assert sorted(r["index"] for r in records) == list(range(36))
        assert summary["containers"] == 3 and len(summary["harness"]["shards"]) == 3
        # one shared start: the mock read the three containers' first requests together
        late_ms = summary["harness"]["start_late_ms"]  # the latest container's own report
        assert _first_wave_spread_ms(requests, streams) < 300 + late_ms, late_ms
        assert (tmp_path / slug / "parts" / "2" / "requests.jsonl").is_file()
    assert json.loads((tmp_path / "sweep.json").read_text())["complete"] is True
    assert (tmp_path / "report.md").is_file()
    with pytest.raises(UsageError, match="cannot split"):
        modal_app.run_split(parse_options(mock.url, **{**options, "concurrency": "2"}), 3,
                            tmp_path / "x", run_parts=containers)


MODAL_CREDENTIALS = bool(os.environ.get("MODAL_TOKEN_ID")) or (
    Path.home() / ".modal.toml").is_file()


@pytest.mark.live
@pytest.mark.skipif(not MODAL_CREDENTIALS, reason="needs Modal credentials")
def test_in_region_split_live(tmp_path: Path) -> None:  # pragma: no cover - needs credentials
    url = os.environ.get("MLS_LIVE_BENCH_URL")
    if not url:
        pytest.skip("set MLS_LIVE_BENCH_URL to a deployed endpoint")
    from modal_llm_serving.bench import modal_app

    with modal_app.app.run():
        summaries = [summary.to_dict() for summary in modal_app.run_split(
            parse_options(url, concurrency="4", num_requests=8, output_len="8"), 2, tmp_path,
            run_parts=lambda parts: list(modal_app.run_in_region.map(parts)))]
    assert summaries[0]["completed"] == 8 and summaries[0]["containers"] == 2
    assert sorted(r["index"] for r in _records(tmp_path)) == list(range(8))
