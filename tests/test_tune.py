"""`mls tune`: an app's concurrency knobs from a real sweep's SLO capacity, checked three ways.

The sweeps are real `mls bench run` results against the calibration mock given a capacity knee
(`--knee N`: N slots, the rest queue first come first served, as an engine's --max-num-seqs
does): the truth the capacity must find is N. Each tuned file then passes `mls check`, the
Modal SDK is given its new settings (`verify_modal_settings`), and its engine command passes
the engine's own parser (`verify_engine_command`).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.capacity import capacity_of_levels, read_levels
from modal_llm_serving.bench.slo import parse_slos
from modal_llm_serving.cli import cli
from modal_llm_serving.recipes.files import load_recipe, recipe_path
from tests.machine import machine_to_itself

from .verify import Spied, spy_modal, verify_engine_command, verify_modal_settings

__all__ = ["spy_modal"]  # a fixture, used by name

# The knee: 4 slots; TTFT 20 ms, then 3 more tokens 50 ms apart: a stream holds its slot
# S = 170 ms. Up to 4 streams TTFT is 20 ms; at 6, two queue for a slot, their TTFT ~S + 20 ms.
# The SLO's 100 ms sits between, 80 ms from each.
KNEE, TTFT_MS, ITL_MS = 4, 20, 50
SLO = "ttft:p95:100ms"
SERVERS = ("vllm_online", "vllm_cold_start", "sglang_low_latency", "vllm_server")
BENCH = ["--input-len", "8", "--output-len", "4", "--no-report"]


def _bench(url: str, out: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["bench", "run", url, *BENCH, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Closed loop at 2, 4 and 6 streams; every request served (goodput thresholds saved)."""
    with machine_to_itself(), MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        folder = _bench(mock.url, tmp_path_factory.mktemp("sweep"), "-c", "2,4,6", "-n", "24",
                        "--slo", "ttft:100")
        assert mock.stats()["errors"] == []
    return folder


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2, 4 and 8 streams with a 0.5 s request timeout; a stream holds its slot S = 20 + 3 x 100
    = 320 ms, so at 8 the 4 that queue need 2 S = 640 ms and fail."""
    with machine_to_itself(), MockProcess(ttft_ms=TTFT_MS, itl_ms=100, knee=KNEE) as mock:
        return _bench(mock.url, tmp_path_factory.mktemp("failing"), "-c", "2,4,8", "-n", "16",
                      "--timeout", "0.5")


def _tune(app: Path, results: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["tune", str(app), "--from", str(results), *args])


def _copy(name: str, folder: Path) -> Path:
    copy = folder / f"{name}.py"
    shutil.copyfile(recipe_path(name), copy)
    return copy


def _constants(path: Path) -> dict[str, Any]:
    """The file's module-level constants that are plain literals, as Python reads them."""
    found = {}
    for stmt in ast.parse(path.read_text()).body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                found[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    return found


def _only_constants_changed(before: str, after: str, names: set[str]) -> None:
    """Every line is byte for byte the same but those assigning the named constants."""
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        if a != b:
            assert a.split(" = ")[0] == b.split(" = ")[0] and a.split(" = ")[0] in names, (a, b)


def _verified(path: Path, spy: Callable[[Path], Spied]) -> Any:
    """The tuned file: `mls check` clean, its settings as Modal gets them, its engine command as
    the engine's own parser reads it; returns the module."""
    check = CliRunner().invoke(cli, ["check", str(path)])
    assert check.exit_code == 0 and "no findings" in check.output, check.output
    spied = spy(path)
    verify_modal_settings(spied)
    verify_engine_command(load_recipe(path, module_name=f"tuned_{path.stem}"))
    return spied.recipe


def test_the_capacity_of_a_sweep_is_the_mocks_knee(sweep: Path) -> None:
    slo = parse_slos([SLO])
    assert slo is not None
    capacity = capacity_of_levels(read_levels(sweep), slo)
    assert (capacity["capacity"], capacity["bracket"]) == (
        KNEE, {"highest_pass": KNEE, "lowest_fail": 6})
    assert [row["passed"] for row in capacity["levels"]] == [True, True, False]
    assert capacity["stopped"] == "sweep" and capacity["slos"] == [SLO]


def test_a_search_is_tuned_from_its_own_capacity(tmp_path: Path) -> None:
    """A capacity search's sweep.json is what tune reads: its SLOs, its capacity; other SLOs
    than the search's are refused rather than judged on levels chosen for another knee."""
    with machine_to_itself(), MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=KNEE) as mock:
        search = _bench(mock.url, tmp_path / "search", "--search", "concurrency", "-c", "2",
                        "-n", "12", "--slo", SLO)
    saved = json.loads((search / "sweep.json").read_text())["capacity"]
    assert saved["capacity"] == KNEE and saved["bracket"]["lowest_fail"] == KNEE + 1
    app = _copy("vllm_online", tmp_path)
    result = _tune(app, search, "--write", "--no-import", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["capacity"] == saved
    # the max is the bracket's failing end, 5: it missed the SLO but failed no request
    assert (_constants(app)["TARGET_INPUTS"], _constants(app)["MAX_INPUTS"]) == (3, KNEE + 1)
    other = _tune(app, search, "--slo", "ttft:p95:50ms", "--no-import")
    assert other.exit_code == 2 and "capacity search at ttft:p95:100ms" in other.output


@pytest.mark.parametrize("name", SERVERS)
def test_every_server_recipe_is_tuned_checked_and_parsed(
        name: str, sweep: Path, tmp_path: Path, spy_modal: Callable[[Path], Spied]) -> None:
    app = _copy(name, tmp_path)
    before = app.read_text()
    result = _tune(app, sweep, "--slo", SLO, "--peak-concurrency", "30", "--write",
                   "--no-import")
    assert result.exit_code == 0, result.output
    r = _verified(app, spy_modal)
    target = getattr(r, "TARGET_INPUTS", None) or r.TARGET_CONCURRENCY
    most = getattr(r, "MAX_INPUTS", None) or getattr(r, "MAX_CONCURRENCY", None)
    assert target == math.floor(KNEE * 0.9)
    assert most in (6, None)  # the next level, 6, served every request; http_server has no max
    assert 6 <= r.MAX_NUM_SEQS <= 4 * 6
    assert math.ceil(30 / KNEE) == r.MAX_CONTAINERS
    _only_constants_changed(before, app.read_text(), {
        "TARGET_INPUTS", "TARGET_CONCURRENCY", "MAX_INPUTS", "MAX_CONCURRENCY", "MAX_NUM_SEQS",
        "MAX_CONTAINERS"})
    assert "p95 TTFT" in result.output and "at c4" in result.output  # the measured reason
    assert f"wrote {app}" in result.output


def test_an_app_written_by_mls_new_is_tuned(sweep: Path, tmp_path: Path,
                                             spy_modal: Callable[[Path], Spied]) -> None:
    app = tmp_path / "my_app.py"
    new = CliRunner().invoke(cli, ["new", "--model", "Qwen/Qwen3-8B-FP8", "--revision",
                                   "220b46e3b2180893580a4454f21f22d3ebb187d3", "--concurrency",
                                   "24", "-o", str(app)])
    assert new.exit_code == 0, new.output
    result = _tune(app, sweep, "--slo", SLO, "--peak-rps", "500", "--idle-min", "1", "--write")
    assert result.exit_code == 0, result.output
    r = _verified(app, spy_modal)
    assert (r.TARGET_INPUTS, r.MAX_INPUTS, r.MIN_CONTAINERS) == (3, 6, 1)
    c4 = next(level for level in read_levels(sweep) if level["level"]["slug"] == "c4")
    assert max(1, math.ceil(500 / c4["request_throughput"])) == r.MAX_CONTAINERS


def test_the_diff_alone_writes_nothing(sweep: Path, tmp_path: Path) -> None:
    app = _copy("vllm_online", tmp_path)
    before = app.read_bytes()
    result = _tune(app, sweep, "--slo", SLO, "--no-import")
    assert result.exit_code == 0, result.output
    assert "-MAX_INPUTS = 32" in result.output and "+MAX_INPUTS = 6" in result.output
    assert "pass --write" in result.output
    as_json = json.loads(_tune(app, sweep, "--slo", SLO, "--no-import", "--json").output)
    assert {c["constant"]: c["new"] for c in as_json["changes"]}["MAX_INPUTS"] == 6
    assert as_json["capacity"]["capacity_slug"] == "c4" and as_json["written"] is False
    assert app.read_bytes() == before


def test_max_is_the_capacity_when_the_next_level_failed(failing_sweep: Path,
                                                        tmp_path: Path) -> None:
    app = _copy("vllm_online", tmp_path)
    result = _tune(app, failing_sweep, "--slo", SLO, "--write", "--no-import")
    assert result.exit_code == 0, result.output
    assert _constants(app)["MAX_INPUTS"] == 4
    assert "requests failed" in result.output


def test_no_level_meeting_the_slo_is_refused_in_one_line(failing_sweep: Path,
                                                        tmp_path: Path) -> None:
    app = _copy("vllm_online", tmp_path)
    before = app.read_bytes()
    result = _tune(app, failing_sweep, "--slo", "ttft:p95:5ms", "--write", "--no-import")
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert "no level met the SLO: at the lowest, c2" in line and "> 5 ms" in line
    assert app.read_bytes() == before


def test_a_knee_not_found_is_said_and_the_highest_level_is_the_cap(sweep: Path,
                                                                  tmp_path: Path) -> None:
    app = _copy("vllm_online", tmp_path)
    result = _tune(app, sweep, "--slo", "ttft:p95:10s", "--write", "--no-import",
                   "--replicas", "2")
    assert result.exit_code == 0, result.output
    assert "capacity is at least 6 streams" in result.output
    knobs = _constants(app)  # 6 streams over the 2 containers measured: 3 each
    assert (knobs["MAX_INPUTS"], knobs["TARGET_INPUTS"]) == (3, 2)


def test_a_result_that_breaks_a_rule_is_not_written(sweep: Path, tmp_path: Path) -> None:
    """The engine batch written as a literal cannot be tuned: the lowered cap would be far
    below it (MLS027), so the file stays as it was and the command exits 1."""
    app = _copy("vllm_online", tmp_path)
    app.write_text(app.read_text().replace('"--max-num-seqs", str(MAX_NUM_SEQS)',
                                           '"--max-num-seqs", "64"'))
    before = app.read_bytes()
    result = _tune(app, sweep, "--slo", SLO, "--write", "--no-import")
    assert result.exit_code == 1, result.output
    assert "MLS027" in result.output and "not written" in result.output
    assert "--max-num-seqs (line" in result.output  # said why it was left alone
    assert app.read_bytes() == before


def test_a_batch_job_and_goodput_thresholds_are_refused(sweep: Path, tmp_path: Path) -> None:
    batch = _tune(_copy("qwen3_throughput", tmp_path), sweep, "--slo", SLO)
    assert batch.exit_code == 2 and "not an HTTP server" in batch.output
    no_slo = _tune(_copy("vllm_online", tmp_path), sweep)  # the run saved `--slo ttft:100`
    assert no_slo.exit_code == 2 and "--slo ttft:p95:100ms" in no_slo.output


def test_open_loop_capacity_counts_requests_in_flight(tmp_path: Path) -> None:
    """Constant arrivals with 8 slots each held S = 20 + 3 x 10 = 50 ms (160 req/s): 50 and 100
    req/s keep 2.5 and 5 streams in flight, none queued; 1000 req/s queues them, the 31st of
    32 waiting ~120 ms for a slot. Per container: in flight and req/s at 100 req/s."""
    with machine_to_itself(), MockProcess(ttft_ms=20, itl_ms=10, knee=8) as mock:
        sweep = _bench(mock.url, tmp_path / "open", "-r", "50,100,1000", "--arrival",
                       "constant", "-n", "32")
    app = _copy("vllm_online", tmp_path)
    result = _tune(app, sweep, "--slo", SLO, "--peak-rps", "450", "--write", "--no-import")
    assert result.exit_code == 0, result.output
    levels = {level["level"]["slug"]: level for level in read_levels(sweep)}
    r100, r1000 = levels["r100"], levels["r1000"]
    knobs = _constants(app)
    assert knobs["TARGET_INPUTS"] == max(1, math.floor(r100["achieved_concurrency"] * 0.9))
    assert knobs["MAX_INPUTS"] == math.ceil(r1000["achieved_concurrency"])
    assert knobs["MAX_CONTAINERS"] == math.ceil(450 / r100["request_throughput"])


@pytest.mark.parametrize(("slo", "words"), [
    ("itl:p95:50ms", "METRIC ttft, tpot, e2el"),  # no goodput per request: not an SLO here
    ("ttft:500", "has no percentile"),  # vLLM's goodput form: nothing to judge a level at
])
def test_an_slo_tune_cannot_judge_is_one_line(sweep: Path, tmp_path: Path, slo: str,
                                             words: str) -> None:
    result = _tune(_copy("vllm_online", tmp_path), sweep, "--slo", slo)
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
