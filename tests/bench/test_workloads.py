"""Workloads users have: shared-prefix prompts and trace replay, against the calibration mock.

The mock records every completion request as read (GET /mock/requests: body, headers, when), so
these tests check what was sent and in which order, never what the client says it sent.
Timings are orders and schedules, not wall-clock bounds.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.bench.trace import MAX_LINES, load_trace
from modal_llm_serving.cli import cli
from modal_llm_serving.errors import DatasetError, UsageError


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=10, itl_ms=5) as server:
        yield server
        assert server.stats()["errors"] == []


def _records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "requests.jsonl").open()]


def test_shared_prefix_prompts_open_with_one_of_n_system_prompts(mock: Any,
                                                                  tmp_path: Path) -> None:
    before = mock.stats()["requests"]
    run_benchmark(parse_options(mock.url, concurrency="2", num_requests=12, input_len="8",
                                output_len="2", shared_prefix="3:40", turns=2),
                  out_dir=tmp_path)
    bodies = [json.loads(seen["body"]) for seen in mock.requests(after=before)]
    assert len(bodies) == 12
    systems = {body["messages"][0]["content"] for body in bodies}
    assert all(body["messages"][0]["role"] == "system" for body in bodies)
    assert 1 < len(systems) <= 3 and all(len(text.split()) == 40 for text in systems)
    # a second turn keeps its conversation's system prompt first, then the first turn
    second = [body for body in bodies if len(body["messages"]) == 4]
    assert len(second) == 6
    assert all([m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
               for body in second)
    firsts = {body["messages"][1]["content"]: body["messages"][0]["content"]
              for body in bodies if len(body["messages"]) == 2}
    assert all(firsts[body["messages"][1]["content"]] == body["messages"][0]["content"]
               for body in second)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["shared_prefixes"] == 3 and summary["data"]["shared_prefix_len"] == 40


TRACE = [  # out of order on purpose: the replay goes by timestamp
    # due 10 ms after the turn before it, which takes longer: it waits for that answer
    {"timestamp": 0.12, "input_len": 6, "output_len": 3, "session_id": "s"},
    {"timestamp": 0.0, "input_len": 5, "output_len": 3},
    {"timestamp": 0.10, "input_len": 7, "output_len": 3, "session_id": "s", "hash_ids": [1]},
    {"timestamp": 0.20, "input_len": 4, "output_len": 3},
    {"timestamp": 0.50, "input_len": 9, "output_len": 3, "session_id": 7},
]


def _trace(tmp_path: Path, lines: list[Any]) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def test_a_trace_replays_on_its_clock_scaled_with_sessions_in_order(mock: Any,
                                                                    tmp_path: Path) -> None:
    before = mock.stats()["requests"]
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "--trace",
                                      str(_trace(tmp_path, TRACE)), "--trace-speed", "2",
                                      "--out", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "trace replay x2: 5 ok" in result.output
    records = sorted(_records(tmp_path / "r"), key=lambda record: record["sent_ns"])
    # sessions start at their first timestamp / 2, never early; one turn waits for the other
    starts = [record["scheduled_ns"] for record in records if record["turn"] == 0]
    assert starts == [0, 50_000_000, 100_000_000, 250_000_000]
    assert all(record["sent_ns"] >= record["scheduled_ns"] for record in records)
    first, second = [record for record in records if record["session_id"] is not None]
    assert (first["turn"], second["turn"]) == (0, 1)
    assert first["end_ns"] > 60_000_000  # past the second turn's time: it was held back
    assert second["scheduled_ns"] >= first["end_ns"] and second["sent_ns"] >= first["end_ns"]
    # what the mock read: the session's second turn carries the first
    bodies = [json.loads(seen["body"]) for seen in mock.requests(after=before)]
    assert sorted(len(body["messages"]) for body in bodies) == [1, 1, 1, 1, 3]
    assert [body["max_tokens"] for body in bodies] == [3] * 5
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["label"] == "trace replay x2" and saved["data"]["trace_sessions"] == 4
    assert saved["data"]["exact_input_fraction"] == 1.0


@pytest.mark.parametrize(("line", "says"), [
    ("not json", "trace.jsonl:2 is not JSON"),
    ([1, 2], "trace.jsonl:2 is not a JSON object"),
    ({"input_len": 5, "output_len": 3}, 'trace.jsonl:2: "timestamp" must be seconds'),
    ({"timestamp": -1, "input_len": 5, "output_len": 3}, '"timestamp" must be seconds'),
    ('{"timestamp": NaN, "input_len": 5, "output_len": 3}', "trace.jsonl:2 holds NaN"),
    ({"timestamp": 1, "input_len": True, "output_len": 3}, '"input_len" must be a whole'),
    ({"timestamp": 1, "input_len": 5, "output_len": 0}, '"output_len" must be a whole'),
    ({"timestamp": 1, "input_len": 5, "output_len": 3, "session_id": ["a"]},
     '"session_id" must be'),
    ({"timestamp": 1, "input_len": 5, "output_len": 3, "session_id": "x" * 300},
     '"session_id" must be'),
    ('{"timestamp": 1, "input_len": 5, "output_len": 3, "pad": "' + "x" * 70_000 + '"}',
     "trace.jsonl:2 is longer than 65536 bytes"),
])
def test_a_bad_trace_line_is_one_error_naming_it(tmp_path: Path, line: Any, says: str) -> None:
    path = _trace(tmp_path, [TRACE[0], line])
    with pytest.raises(DatasetError, match=says.replace("(", r"\(").replace("[", r"\[")):
        load_trace(path)


def test_a_trace_past_its_bounds_is_refused_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text('{"timestamp": 0, "input_len": 1, "output_len": 1}\n' * (MAX_LINES + 1))
    with socket.socket() as sock:  # bound, never listening: the server's routes are refused
        sock.bind(("127.0.0.1", 0))
        result = CliRunner().invoke(cli, ["bench", "run", f"http://127.0.0.1:"
                                          f"{sock.getsockname()[1]}", "--model", "m", "--trace",
                                          str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert f"has more than {MAX_LINES} lines" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="holds no requests"):
        load_trace(empty)


@pytest.mark.parametrize(("options", "says"), [
    ({"shared_prefix": "4"}, "--shared-prefix '4': write N:LEN"),
    ({"shared_prefix": "0:10"}, "N is 1 to"),
    ({"trace_speed": "2"}, "--trace-speed scales a --trace"),
    ({"trace": "TRACE", "concurrency": "4"}, "--trace sets the load itself"),
    ({"trace": "TRACE", "trace_speed": "0"}, "--trace-speed '0'"),
    ({"trace": "TRACE", "trace_speed": "1,1"}, "repeats a value"),
    ({"trace": "TRACE", "turns": 2}, "leave out --dataset, --shared-prefix and --turns"),
    ({"scrape_interval": 0.01}, "--scrape-interval 0.01"),
])
def test_workload_options_that_make_no_sense_are_refused(tmp_path: Path,
                                                          options: dict[str, Any],
                                                          says: str) -> None:
    if options.get("trace") == "TRACE":
        options["trace"] = _trace(tmp_path, TRACE)
    with pytest.raises(UsageError, match=says.replace("(", r"\(")):
        parse_options("http://127.0.0.1:8000", **options)
