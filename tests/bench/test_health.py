"""The harness judges itself: warnings when the client, not the server, limits the numbers.

Real runs against the mock: one whose event loop is starved for real (a thread holding the GIL
in long C calls while the load runs) must warn, one left alone must not. Then the thresholds
themselves, one row each, on the judge's inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench import health
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.metrics import Accumulator
from modal_llm_serving.bench.options import parse_options
from tests.bench.test_bench import _record

# judge() leaves runs shorter than MIN_JUDGED_WALL_S alone: these runs last just past it
DURATION_S = health.MIN_JUDGED_WALL_S + 0.3


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess(ttft_ms=5, itl_ms=1) as server:
        yield server


def _warnings(url: str, out: Path, *, load: dict[str, str], **hooks: Any) -> list[str]:
    """The warnings of a run of `load` for DURATION_S."""
    options = parse_options(url, duration=DURATION_S, input_len="4", output_len="4", **load)
    summary = run_benchmark(options, out_dir=out, **hooks)[0].to_dict()
    assert summary["completed"] > 20
    warnings: list[str] = summary["harness"]["warnings"]
    return warnings


def test_a_starved_event_loop_is_reported(mock: MockProcess, tmp_path: Path) -> None:
    stop = threading.Event()

    def hold_the_gil() -> None:
        while not stop.is_set():
            sum(range(3_000_000))  # one C call: the GIL stays held for tens of ms

    hog = threading.Thread(target=hold_the_gil, daemon=True)

    def starve(_level: Any, _progress: Any) -> None:
        # from the first progress report (0.5 s into the load): the preflight and the prompts
        # run unhindered, the load itself does not
        if not hog.is_alive() and not stop.is_set():
            hog.start()

    try:
        # open loop: its dispatch lag is judged too
        warnings = _warnings(mock.url, tmp_path, load={"rate": "40"}, progress=starve)
    finally:
        stop.set()
    assert hog.ident is not None  # it ran
    text = "\n".join(warnings)
    assert "CLIENT BOTTLENECK: event-loop lag p99" in text, warnings
    assert "CLIENT BOTTLENECK: dispatch lag p99" in text, warnings


# A control: an idle process beside the run, waking every 10 ms as the harness's monitor does
# until its stdin closes, prints how late its wakes were (p99, ms): what the machine did to a
# process with nothing to do, over the whole run.
PROBE = """
import select, sys, time
lags = []
while True:
    before = time.perf_counter()
    if select.select([sys.stdin], [], [], 0.01)[0]:
        break  # closed: the run is over
    lags.append((time.perf_counter() - before - 0.01) * 1000)
lags.sort()
print(lags[int(0.99 * (len(lags) - 1))])
"""


@pytest.mark.alone
def test_a_client_with_the_machine_to_itself_raises_none(mock: MockProcess,
                                                         tmp_path: Path) -> None:
    control = subprocess.Popen([sys.executable, "-c", PROBE], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        # closed loop, 2 streams: little for one core to do (an open loop's dispatch lag is
        # judged on the thresholds below). `mls bench run` in a process of its own, as a user
        # runs it: inside the test process, a full garbage collection of the suite's heap
        # (vLLM, hypothesis: over 1 GB) stalled the loop 12 ms.
        run = subprocess.run(
            [sys.executable, "-m", "modal_llm_serving.cli", "bench", "run", mock.url, "-c", "2",
             "--duration", str(DURATION_S), "--input-len", "4", "--output-len", "4",
             "--no-report", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    finally:
        machine_lag_ms = float(control.communicate(input="", timeout=60)[0])
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] > 20
    warnings = summary["harness"]["warnings"]
    # 2 streams use a few % of a core, however busy the machine (CPU time counts only when run)
    assert not [warning for warning in warnings if "of a CPU core" in warning], warnings
    # the loop lag does depend on the machine: on this shared 2-core box the harness's loop
    # woke 5-8 ms later than the idle control at p99, so "quiet" is only asked of a machine
    # whose control stayed within a third of the limit
    if machine_lag_ms > health.LOOP_LAG_P99_LIMIT_MS / 3:
        pytest.skip(f"an idle process beside the run woke {machine_lag_ms:.1f} ms late (p99): "
                    "the machine is too busy to ask any client for stamps on time (the CPU "
                    "check above still ran)")
    assert warnings == []


def _measured(dispatch_lag_ms: float) -> Any:
    """Real records through the real accumulator: 3 requests sent this late."""
    accumulator = Accumulator()
    for index in range(3):
        accumulator.add(_record(index, sent=100 * index + dispatch_lag_ms, first=100 * index + 50,
                                gaps=[5], n_out=2, scheduled=100 * index))
    return accumulator.summary()


QUIET = {"client_cpu_fraction_of_one_core": 0.5, "loop_lag_p99_ms": 5.0, "wall_seconds": 3.0,
         "cores": 2}


def _shards(*parts: dict[str, float]) -> dict[str, Any]:
    return {**QUIET, "shards": [{**QUIET, **part} for part in parts], "shard_kind": "worker"}


@pytest.mark.parametrize(("harness", "dispatch_ms", "expected"), [
    (QUIET, 1.0, []),
    ({**QUIET, "client_cpu_fraction_of_one_core": 0.85}, 1.0, []),  # at the limit: fine
    ({**QUIET, "client_cpu_fraction_of_one_core": 0.86}, 1.0,
     ["CLIENT BOTTLENECK: the harness used 86% of a CPU core"]),
    ({**QUIET, "loop_lag_p99_ms": 10.0}, 1.0, []),
    ({**QUIET, "loop_lag_p99_ms": 10.5}, 1.0, ["CLIENT BOTTLENECK: event-loop lag p99 10.5 ms"]),
    (QUIET, 5.0, []),
    (QUIET, 5.5, ["CLIENT BOTTLENECK: dispatch lag p99 5.5 ms"]),
    ({**QUIET, "start_late_ms": 150.0}, 1.0, ["LATE START: started 150 ms after"]),
    # too short to judge, however bad
    ({"client_cpu_fraction_of_one_core": 1.0, "loop_lag_p99_ms": 99.0, "wall_seconds": 1.9},
     50.0, []),
    (_shards({}, {"loop_lag_p99_ms": 20.0}), 1.0,
     ["CLIENT BOTTLENECK: worker 2 of 2: event-loop lag p99 20.0 ms"]),
    (_shards({}, {}, {}), 1.0, ["CLIENT BOTTLENECK: 3 workers share 2 CPU cores"]),
])
def test_each_threshold(harness: dict[str, Any], dispatch_ms: float,
                        expected: list[str]) -> None:
    warnings = health.judge(harness, _measured(dispatch_ms))
    assert len(warnings) == len(expected), warnings
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start), warning
