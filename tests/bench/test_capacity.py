"""`mls bench run --search`: the SLO syntax, the search's choices, and the mock's known knee.

The mock (benchmarks/mockserver/, `--knee N`) serves N streams at a time and queues the rest,
as an engine with `--max-num-seqs N` does: its capacity is known exactly (N streams, or N / S
requests/s for a service time S), so the search is checked against the truth, end to end from
the command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.options import Search
from modal_llm_serving.bench.search import TARGET_WIDTH, next_level
from modal_llm_serving.bench.slo import Objective, judge, parse_slo, parse_slos
from modal_llm_serving.cli import cli
from tests.bench.test_bench_mock import _records
from tests.terminal import as_in_a_terminal

# The knee: 4 slots, TTFT 10 ms, then 4 more tokens 20 ms apart: a stream holds its slot
# S = 90 ms, so the mock serves 4 streams, or 4 / 0.09 = 44.4 requests/s. Below the knee TTFT is
# 10 ms; a request that queues waits up to S more. The SLO's 50 ms sits between, 40 ms from each.
KNEE, TTFT_MS, ITL_MS, TOKENS = 4, 10, 20, 5
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000
LIMIT_MS = 50
SHORT = ["--input-len", "4", "--output-len", str(TOKENS), "--slo", f"ttft:p95:{LIMIT_MS}ms"]


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port bound and never listening: a request that gets past the checks is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(("text", "objective"), [
    ("ttft:p95:500ms", Objective("ttft", 500, 95)),
    ("TPOT:p50:50", Objective("tpot", 50, 50)),  # a bare number is ms
    ("e2el:p99:10s", Objective("e2el", 10_000, 99)),
    ("e2el:p90:0.5s", Objective("e2el", 500, 90)),
    ("ttft:500", Objective("ttft", 500, None)),  # vLLM's goodput form: no percentile
])
def test_slo_syntax(text: str, objective: Objective) -> None:
    assert parse_slo(text) == objective
    assert parse_slo(str(objective)) == objective  # the canonical text reads back the same


@pytest.mark.parametrize("args", [
    ["--slo", "ttft:p97:500ms"], ["--slo", "ttft:p95:500min"], ["--slo", "ttft:p95:-5ms"],
    ["--slo", "ttft:p95:0ms"], ["--slo", "itl:p95:5ms"], ["--slo", "ttft:p95"],
    ["--slo", "ttft:p95:infms"], ["--slo", "ttft:p95:nan"], ["--slo", "ttft:x:p95:5ms"],
])
def test_a_bad_slo_is_one_line_with_the_syntax(args: list[str], tmp_path: Path,
                                              refusing_url: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "run", refusing_url, "--model", "m",
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "METRIC:PERCENTILE:LIMIT, e.g. ttft:p95:500ms" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--search", "concurrency"], "--search judges each level by SLOs"),
    (["--search", "concurrency", "--slo", "ttft:500"], "write it as e.g. ttft:p95:500ms"),
    (["--search", "concurrency", "--slo", "ttft:p95:1s", "-c", "1,2"], "one --concurrency"),
    (["--search", "rate", "--slo", "ttft:p95:1s", "-c", "4"], "one --rate value"),
    (["--search", "rate", "--slo", "ttft:p95:1s", "-r", "inf"], "finite --rate"),
    (["--search", "concurrency", "--slo", "ttft:p95:1s", "-c", "8", "--max-level", "4"],
     "at least the start"),
    (["--search", "concurrency", "--slo", "ttft:p95:1s", "--max-level", "2.5"], "whole streams"),
    (["--slo", "ttft:p95:1s", "--slo", "ttft:p99:2s"], "gives ttft twice"),
])
def test_search_options_are_checked_before_any_request(args: list[str], message: str,
                                                       tmp_path: Path, refusing_url: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "run", refusing_url, "--model", "m",
                                      "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_a_level_holds_an_slo_at_its_percentile_with_errors_as_misses() -> None:
    slo = parse_slos(["ttft:p95:100ms", "tpot:p50:20ms", "e2el:2000"])
    assert slo is not None
    level = {"completed": 95, "failed": 5, "p95_ttft_ms": 99.0, "p50_tpot_ms": 20.0,
             "request_goodput": 9.0}
    verdict = judge(slo, level)
    assert verdict["passed"] and [v["slo"] for v in verdict["slos"]] == [
        "ttft:p95:100ms", "tpot:p50:20ms"]  # e2el:2000 is goodput only
    assert not judge(slo, {**level, "p95_ttft_ms": 100.5})["passed"]
    # 6 % failed is more than a p95 SLO leaves; the p50 one still holds
    six = judge(slo, {**level, "completed": 94, "failed": 6})
    assert [v["passed"] for v in six["slos"]] == [False, True] and not six["passed"]
    assert not judge(slo, {**level, "completed": 0, "failed": 0})["passed"]


@pytest.mark.parametrize("kind", ["concurrency", "rate"])
@pytest.mark.parametrize("knee", [1, 3, 4, 7, 40, 97, 1000])
def test_the_search_brackets_any_knee_without_running_a_level_twice(kind: str,
                                                                    knee: int) -> None:
    """A server that holds the SLOs up to `knee` and fails above: the levels the search picks
    end in a bracket around the knee, as narrow as promised, each level once."""
    search = Search("concurrency" if kind == "concurrency" else "rate", None, 64, None)
    verdicts: dict[float, bool] = {}
    order = []
    while (value := next_level(search, 1, verdicts)[0]) is not None:
        assert value not in verdicts
        order.append(value)
        verdicts[value] = value <= knee
    low = max(v for v, ok in verdicts.items() if ok)
    high = min(v for v, ok in verdicts.items() if not ok)
    assert low <= knee < high
    assert high - low <= max(1 if kind == "concurrency" else 0, TARGET_WIDTH * low)
    assert next_level(search, 1, verdicts)[1] == "narrow"
    assert len(order) <= 2 * (knee.bit_length() + 1) + 2  # doubling, then halving the bracket


def test_the_search_says_why_it_stopped_short() -> None:
    capped = Search("concurrency", 8, 64, None)
    assert next_level(capped, 1, {1: True, 2: True, 4: True})[0] == 8
    assert next_level(capped, 1, {1: True, 2: True, 4: True, 8: True}) == (None, "max level")
    every = Search("concurrency", None, 64, None)
    assert next_level(every, 8, {8: False}) == (4, "")  # the start failed: halve
    assert next_level(every, 8, {8: False, 4: False, 2: False, 1: False}) == (None,
                                                                               "lowest level")
    rate = Search("rate", None, 64, None)
    assert next_level(rate, 1, {1: True, 2: False})[0] == 1.5
    assert next_level(rate, 1, {1: True, 1.5: True, 2: False})[0] == 1.75


def search(mock: MockProcess, out: Path, *args: str, code: int = 0) -> dict[str, Any]:
    """`mls bench run --search` against the mock; sweep.json's capacity."""
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--out", str(out), *SHORT,
                                      *args])
    assert result.exit_code == code, result.output
    capacity: dict[str, Any] = json.loads((out / "sweep.json").read_text())["capacity"]
    return capacity


def test_concurrency_search_finds_the_mocks_knee(tmp_path: Path) -> None:
    with MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        capacity = search(mock, tmp_path, "--search", "concurrency", "-c", "2", "-n", "12",
                          "--no-report")
        assert mock.stats()["errors"] == []
    assert capacity["bracket"] == {"highest_pass": KNEE, "lowest_fail": KNEE + 1}
    assert capacity["capacity"] == KNEE and capacity["bracketed"] and capacity["complete"]
    assert capacity["stopped"] == "narrow"
    tried = [row["value"] for row in capacity["levels"]]
    assert tried[:3] == [2, 4, 8] and len(set(tried)) == len(tried)  # doubled, none twice
    # each level is a normal level folder of the sweep, listed by load
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["levels"] == [f"c{value}" for value in sorted(tried)] and sweep["complete"]
    for row in capacity["levels"]:
        assert len(_records(tmp_path / row["slug"])) == 12
        assert json.loads((tmp_path / row["slug"] / "summary.json").read_text())[
            "max_concurrency"] == row["value"]


def test_a_search_where_no_level_holds_exits_1_in_one_line(tmp_path: Path) -> None:
    """A 1 ms TTFT SLO against a mock whose first token takes 10 ms: the first level fails, the
    search halves to one stream, which fails too, and stops there; the run exits 1 with one line
    saying so, and sweep.json has no capacity."""
    with MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        result = CliRunner().invoke(cli, [
            "bench", "run", mock.url, "--out", str(tmp_path), "--input-len", "4",
            "--output-len", str(TOKENS), "--slo", "ttft:p95:1ms", "--search", "concurrency",
            "-c", "2", "-n", "6", "--no-report"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == "no level held every SLO; see the levels above"
    assert "Traceback" not in result.output
    capacity = json.loads((tmp_path / "sweep.json").read_text())["capacity"]
    assert capacity["capacity"] is None and capacity["stopped"] == "lowest level"
    assert [row["value"] for row in capacity["levels"]] == [2, 1]


def test_the_cost_at_the_capacity_is_the_capacity_levels_measured_cost(tmp_path: Path) -> None:
    """With a GPU given, the search ends with what a million tokens cost at the highest load
    that met the SLOs: that level's measured throughput at the catalog's price (2x H100 at
    $3.95 per GPU-hour, unpinned), in the terminal and in the report."""
    with MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--out", str(tmp_path),
                                          *SHORT, "--search", "concurrency", "-c", "2",
                                          "-n", "12", "--gpu", "H100", "--gpus", "2"])
    assert result.exit_code == 0, result.output
    capacity = json.loads((tmp_path / "sweep.json").read_text())["capacity"]
    level = json.loads((tmp_path / capacity["capacity_slug"] / "summary.json").read_text())
    expected = 2 * 3.95 / (3600 * level["output_throughput"]) * 1e6
    [line] = [line for line in result.stdout.splitlines()
              if line.startswith("cost at the capacity")]
    assert f"({capacity['capacity_slug']}): ${expected:.4g} per million output tokens" in line
    assert "2x H100 at $7.9/h" in line
    assert line.replace("$", "\\$") in (tmp_path / "report.md").read_text()  # Markdown-escaped


def test_rate_search_finds_the_mocks_rate_knee(tmp_path: Path) -> None:
    """Open loop, constant arrivals: nothing queues below N / S requests/s. Above it the queue
    grows by (rate - knee) requests a second, so a level of D seconds that is only slightly
    over may still hold the SLO: its last requests wait (rate / knee - 1) * D. The passing end
    is above the knee by at most what the SLO's slack allows at the 95th request of 100."""
    duration_s = 0.4
    knee = KNEE / SERVICE_S
    with MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        capacity = search(mock, tmp_path, "--search", "rate", "-r", "30", "--arrival",
                          "constant", "--duration", str(duration_s), "--no-report")
        assert mock.stats()["errors"] == []
    low, high = capacity["bracket"]["highest_pass"], capacity["bracket"]["lowest_fail"]
    overshoot = (LIMIT_MS - TTFT_MS) / 1000 / (0.95 * duration_s)
    assert knee < high and low <= knee * (1 + overshoot), (low, high, knee)
    assert (high - low) / low <= TARGET_WIDTH and capacity["capacity"] == low
    assert all(row["slug"].startswith("r") for row in capacity["levels"])


def test_an_interrupted_search_keeps_its_levels_and_the_capacity_so_far(
        tmp_path: Path) -> None:
    """The 8th request hangs: the search's second level (requests 7 to 12) never ends by
    itself. Ctrl-C there keeps the first level, the second's finished requests, and the
    capacity known so far, marked incomplete."""
    with MockProcess(ttft_ms=5, itl_ms=1, faults=("hang=8",)) as mock:
        process = subprocess.Popen(
            [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", mock.url,
             "--search", "concurrency", "-n", "6", "--out", str(tmp_path), "--no-report",
             "--input-len", "4", "--output-len", "3", "--slo", "ttft:p95:10s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_in_a_terminal)
        assert process.stdout is not None
        for line in process.stdout:  # the first level's summary: the second one starts
            if line.startswith("concurrency 1:"):
                break
        while mock.stats()["requests"] < 12:  # every request of the second level sent
            pass
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "capacity so far: 1 streams" in err
    capacity = json.loads((tmp_path / "sweep.json").read_text())["capacity"]
    assert capacity["stopped"] == "interrupted" and not capacity["complete"]
    assert [(row["slug"], row["passed"]) for row in capacity["levels"]] == [
        ("c1", True), ("c2", None)]
    assert capacity["capacity"] == 1 and not capacity["bracketed"]
    # every request of the level has its record: the hung one (and any still streaming)
    # cancelled, the rest finished
    second = _records(tmp_path / "c2")
    assert len(second) == 6 and sum(r["ok"] for r in second) >= 4
    assert {r["error"] for r in second if not r["ok"]} == {"cancelled"}
    # the report shows the search as far as it went
    report = CliRunner().invoke(cli, ["bench", "report", str(tmp_path)])
    assert report.exit_code == 0 and "capacity so far: 1 streams" in report.output
    markdown = (tmp_path / "report.md").read_text()
    assert "## Capacity at the SLOs" in markdown and "| 2 | c2 | interrupted |" in markdown
    assert "- knee NOT bracketed: no level failed" in markdown
