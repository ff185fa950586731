"""One writer per results folder, stopped the same way by any signal, never a half line.

Every test runs `mls bench run` as a real process against the mock (benchmarks/mockserver/):
two runs racing on one --out, --overwrite over a live run, a claim left by a killed run,
SIGINT/SIGTERM/SIGHUP mid-run, and a disk that refuses writes (a file size limit in the child:
the kernel answers EFBIG part-way through a write, as a full disk answers ENOSPC).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.results import read_records
from modal_llm_serving.cli import cli
from tests.terminal import as_in_a_terminal


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=5, itl_ms=5) as server:
        yield server


def start(url: str, out: Path, *extra: str, requests: int = 100_000,
          limit_bytes: int | None = None) -> subprocess.Popen[str]:
    """`mls bench run` in its own process (each request about 50 ms at 2 streams)."""
    def in_the_child() -> None:
        as_in_a_terminal()
        if limit_bytes is not None:  # its writes past this get EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    argv = [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", url, "-c", "2",
            "-n", str(requests), "--output-len", "10", "--input-len", "4", "--no-report",
            "--out", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=in_the_child)


def wait_for(done: Callable[[], bool], *, what: str, timeout: float = 60) -> None:
    """Poll `done` until it holds (a state to reach, not a time to wait); 60 s is only there
    to fail a hung run instead of waiting for the suite's timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.05)


def wait_for_records(out: Path, count: int, *, timeout: float = 60) -> None:
    jsonl = out / "requests.jsonl"
    wait_for(lambda: jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= count,
             what=f"{count} records in {jsonl}", timeout=timeout)


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the JSONL, each a whole JSON record (fails on a half line)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode().splitlines()]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize(("number", "code", "words"), [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),
    (signal.SIGHUP, 129, "hung up (SIGHUP)"),
])
def test_a_stop_signal_keeps_records_and_writes_the_summary(
        mock: Any, tmp_path: Path, number: int, code: int, words: str) -> None:
    process = start(mock.url, tmp_path)
    wait_for_records(tmp_path, 10)
    process.send_signal(number)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"{words}: finished requests"), err
    records = whole_lines(tmp_path / "requests.jsonl")
    assert len(records) >= 10 and all(r["ok"] or r["error"] == "cancelled" for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] + summary["failed"] == len(records)
    assert "interrupted" in summary["label"]
    assert not (tmp_path / ".mls-lock").exists()  # the claim ends with the run


def test_a_stop_signal_reaches_every_worker_process_through_the_parent(
        mock: Any, tmp_path: Path) -> None:
    process = start(mock.url, tmp_path, "--workers", "2")
    wait_for_records(tmp_path, 10)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    records = whole_lines(tmp_path / "requests.jsonl")
    assert len(records) >= 10 and all(r["ok"] or r["error"] == "cancelled" for r in records)
    # the workers ignore the signal: only the parent's word stops them, and a worker told to
    # stop records its streams in flight as cancelled (one never told is cut off when the
    # parent's grace runs out, and its last records are lost)
    assert any(r["error"] == "cancelled" for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] + summary["failed"] == len(records)


def test_two_runs_on_one_folder_one_is_refused(mock: Any, tmp_path: Path) -> None:
    first, second = (start(mock.url, tmp_path, requests=40) for _ in range(2))
    outcomes = [(p.returncode, err) for p in (first, second)
                for _out, err in [p.communicate(timeout=120)]]
    codes = sorted(code for code, _err in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    assert len(error_lines(refused)) == 1, refused
    records = whole_lines(tmp_path / "requests.jsonl")
    assert sorted(r["index"] for r in records) == list(range(40))  # one run's, all of them


def test_overwrite_refuses_a_live_run_and_leaves_it_alone(mock: Any, tmp_path: Path) -> None:
    live = start(mock.url, tmp_path)
    wait_for_records(tmp_path, 5)
    second = start(mock.url, tmp_path, "--overwrite", requests=5)
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 2
    [line] = error_lines(err)
    assert "being written by another run (pid" in line and str(live.pid) in line
    live.send_signal(signal.SIGINT)
    live.communicate(timeout=60)
    assert live.returncode == 130
    assert all(r["index"] < 100_000 for r in whole_lines(tmp_path / "requests.jsonl"))


def test_the_claim_of_a_killed_run_is_free_at_once(mock: Any, tmp_path: Path) -> None:
    killed = start(mock.url, tmp_path)
    wait_for_records(tmp_path, 5)
    killed.kill()  # SIGKILL: nothing runs, its lock file stays behind
    killed.communicate(timeout=30)
    assert (tmp_path / ".mls-lock").exists()
    again = start(mock.url, tmp_path, "--overwrite", requests=4)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert len(whole_lines(tmp_path / "requests.jsonl")) == 4


@pytest.mark.parametrize("limit", [1, 3000, 20_000])
def test_a_full_disk_is_one_line_exit_2_and_whole_records(mock: Any, tmp_path: Path,
                                                          limit: int) -> None:
    process = start(mock.url, tmp_path / "out", limit_bytes=limit)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    [line] = error_lines(err)
    assert "requests.jsonl" in line and "EFBIG" in line, line
    records = whole_lines(tmp_path / "out" / "requests.jsonl")
    assert len(records) * 200 < limit + 1  # what fitted, cut back to the last whole line


def test_a_read_only_results_folder_is_one_line_exit_2(mock: Any, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through a folder's permissions")
    tmp_path.chmod(0o500)
    try:
        process = start(mock.url, tmp_path / "out", requests=2)
        _out, err = process.communicate(timeout=60)
    finally:
        tmp_path.chmod(0o700)
    assert process.returncode == 2 and len(error_lines(err)) == 1, err


def test_a_half_written_last_line_is_counted_and_reported(tmp_path: Path) -> None:
    record = RequestRecord(index=0, input_len=4, max_tokens=4, sent_ns=0,
                           first_token_ns=500_000, end_ns=1_000_000, completion_tokens=4,
                           token_events=4).to_dict()
    text = json.dumps(record) + "\n" + json.dumps(record)[:30]  # killed mid-line
    (tmp_path / "requests.jsonl").write_text(text)
    records = read_records(tmp_path / "requests.jsonl")
    assert len(list(records)) == 1 and records.skipped == 1
    result = CliRunner().invoke(cli, ["bench", "report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 line of requests.jsonl is not a whole record" in result.output


def test_ctrl_c_mid_sweep_keeps_the_finished_levels_and_the_one_it_stopped(
        tmp_path: Path) -> None:
    """`-c 1,4,16`, stopped in its second level: the first level whole, the second's records
    and rebuilt summary, no third level, sweep.json saying so, and no half-written file."""
    # the 5th completion request hangs: the first level's 3 requests pass, then the second
    # level cannot end by itself (one of its 3 requests waits forever)
    with MockProcess(ttft_ms=5, itl_ms=1, faults=("hang=5",)) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", server.url, "-c",
             "1,4,16", "-n", "3", "--output-len", "4", "--input-len", "4", "--out",
             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_in_a_terminal)
        wait_for(lambda: server.stats()["requests"] >= 6, what="the second level's 3 requests")
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: finished requests"), err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c1", "c4", "sweep.json"]
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["levels"] == ["c1", "c4", "c16"] and sweep["complete"] is False
    assert [summary["completed"] for summary in sweep["summaries"]] == [3]  # c1 only
    first = json.loads((tmp_path / "c1" / "summary.json").read_text())
    assert first["completed"] == 3 and "interrupted" not in first["label"]
    assert [r["ok"] for r in whole_lines(tmp_path / "c1" / "requests.jsonl")] == [True] * 3
    stopped = whole_lines(tmp_path / "c4" / "requests.jsonl")
    assert sorted(r["index"] for r in stopped) == [0, 1, 2]  # all it sent, each with its fate
    assert all(r["ok"] or r["error"] == "cancelled" for r in stopped)
    assert any(r["error"] == "cancelled" for r in stopped)  # the hung one, at least
    rebuilt = json.loads((tmp_path / "c4" / "summary.json").read_text())
    assert "interrupted" in rebuilt["label"]
    assert rebuilt["completed"] + rebuilt["failed"] == 3
    # nothing half-written: no temporaries, no claim left, every file whole
    left = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")
                  if path.is_file())
    # each level keeps the engine's /metrics timeline, the stopped one too
    assert left == ["c1/engine_metrics.jsonl", "c1/requests.jsonl", "c1/summary.json",
                    "c4/engine_metrics.jsonl", "c4/requests.jsonl", "c4/summary.json",
                    "sweep.json"], left  # the report is left to `report`
