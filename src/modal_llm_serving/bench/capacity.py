"""`mls bench run --search`: the highest load at which every SLO holds, by a bounded search.

The search runs one level at a time, each a normal level folder of the sweep, and judges each
(slo.judge) from its summary. Which level comes next depends only on the verdicts so far, and no
level runs twice:

1. from the start level (`--concurrency N` / `--rate R`, else 1), double the load until a level
   fails or `--max-level` holds (if the start fails, halve it until one holds);
2. then bisect the bracket [highest level that held, lowest that failed] at its midpoint
   (whole streams; rates to 3 significant digits);
3. stop when the bracket is narrow: its failing end at most `TARGET_WIDTH` (10 %) above its
   passing end (for streams, or 1 stream apart), or when the budget (`--search-levels`,
   `--search-time`) is spent.

10 % is a trade, set by TARGET_WIDTH: each further halving costs a whole level, and a bracket
much narrower than a level's run-to-run spread would claim more than one run can tell apart.

The capacity is the highest level in the bracket's passing side whose goodput is within
`GOODPUT_SLACK` of the best goodput that held (more load that brings no more good requests/s is
not capacity). The result, its bracket and every level's verdict go into sweep.json as
`capacity` (slo.py's docstring shows the shape); after each level and on Ctrl-C, marked
incomplete, so an interrupted search keeps the capacity known so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.options import (
    MAX_RATE,
    MAX_STREAMS,
    MIN_RATE,
    BenchOptions,
    Level,
    Search,
)
from modal_llm_serving.bench.results import write_sweep
from modal_llm_serving.bench.slo import Slo, judge
from modal_llm_serving.bench.summary import LevelSummary
from modal_llm_serving.untrusted import read_json_file

__all__ = ["GOODPUT_SLACK", "GROWTH", "STOPS", "TARGET_WIDTH", "capacity_lines",
           "capacity_result", "next_level", "outcome_lines", "read_capacity", "run_search"]

GROWTH = 2.0  # each level of the first phase doubles the load
TARGET_WIDTH = 0.10  # stop when the failing end is at most 10 % above the passing end
GOODPUT_SLACK = 0.05  # goodput within 5 % of the best counts as the best (noise)
STOPS = {
    "narrow": "the bracket is as narrow as the search goes",
    "max level": "--max-level held every SLO: the knee is above it",
    "lowest level": "the lowest level possible failed: the knee is below it",
    "level budget": "--search-levels levels ran",
    "time budget": "--search-time ran out",
    "interrupted": "interrupted: the capacity so far",
    "running": "still running (a search killed outright ends here)",
}


def bracket(verdicts: dict[float, bool]) -> tuple[float | None, float | None]:
    """(highest level that held below the lowest that failed, lowest that failed); None where
    no level is on that side. A level that held above a failed one (noise) is not counted."""
    lowest_fail = min((value for value, passed in verdicts.items() if not passed), default=None)
    highest_pass = max((value for value, passed in verdicts.items() if passed and (
        lowest_fail is None or value < lowest_fail)), default=None)
    return highest_pass, lowest_fail


def next_level(search: Search, start: float,
               verdicts: dict[float, bool]) -> tuple[float | None, str]:
    """The next load to run from the verdicts so far, or None and why the search ends."""
    if not verdicts:
        return start, ""
    streams = search.kind == "concurrency"
    low, high = bracket(verdicts)
    if high is None:  # every level held: grow
        assert low is not None
        top = min(search.max_level or math.inf, MAX_STREAMS if streams else MAX_RATE)
        grown = min(math.floor(low * GROWTH) if streams else low * GROWTH, top)
        return (None, "max level") if grown <= low else (grown, "")
    if low is None:  # every level failed: shrink
        shrunk = int(high // GROWTH) if streams else _rounded(high / GROWTH)
        return (None, "lowest level") if shrunk < (1 if streams else MIN_RATE) else (shrunk, "")
    if high - low <= max(1 if streams else 0, TARGET_WIDTH * low):
        return None, "narrow"
    middle = (low + high) // 2 if streams else _rounded((low + high) / 2)
    if not low < middle < high or middle in verdicts:
        return None, "narrow"
    return middle, ""


def _rounded(rate: float) -> float:
    """3 significant digits: level folders read r37.5, not r37.4999."""
    return float(f"{rate:.3g}")


def capacity_result(search: Search, slo: Slo, tried: list[tuple[Level, dict[str, Any] | None]],
                    *, stopped: str, complete: bool) -> dict[str, Any]:
    """sweep.json's `capacity` (shape in slo.py's docstring) from the levels in the order they
    ran, each with its verdict (`slo.judge`), or None for one interrupted before its end."""
    levels = [{"slug": level.slug, "value": level.concurrency or level.value,
               "passed": None if verdict is None else verdict["passed"],
               **({} if verdict is None else {key: verdict[key] for key in (
                   "goodput", "failed_share", "slos")})}
              for level, verdict in tried]
    verdicts = {row["value"]: row["passed"] for row in levels if row["passed"] is not None}
    low, high = bracket(verdicts)
    held = [row for row in levels if row["passed"] and (high is None or row["value"] < high)]
    best = max((row["goodput"] or 0.0 for row in held), default=0.0)
    chosen = max((row for row in held if (row["goodput"] or 0.0) >= best * (1 - GOODPUT_SLACK)),
                 key=lambda row: row["value"], default=None)
    return {
        "search": search.kind, "slos": [str(o) for o in slo.objectives()], "levels": levels,
        "capacity": None if chosen is None else chosen["value"],
        "capacity_slug": None if chosen is None else chosen["slug"],
        "capacity_goodput": None if chosen is None else chosen["goodput"],
        "bracket": {"highest_pass": low, "lowest_fail": high},
        "bracketed": low is not None and high is not None,
        "relative_width": None if low is None or high is None else (high - low) / low,
        "target_width": TARGET_WIDTH, "stopped": stopped, "complete": complete,
    }


def run_search(options: BenchOptions, *, out_dir: Path,
               run_one: Callable[[Level, Path], LevelSummary],
               on_info: Callable[[str], None],
               clock: Callable[[], float] = time.monotonic) -> list[LevelSummary]:
    """Run the search of `options.search` from `options.levels[0]`, each level by `run_one`
    into its folder under `out_dir`; sweep.json (levels and capacity) is rewritten after every
    level and on Ctrl-C. Returns the summaries in the order the levels ran."""
    search, slo = options.search, options.slo
    assert search is not None and slo is not None  # parse_options checked both
    started = clock()
    tried: list[tuple[Level, dict[str, Any] | None]] = []
    summaries: list[LevelSummary] = []

    def save(*, stopped: str, complete: bool) -> dict[str, Any]:
        capacity = capacity_result(search, slo, tried, stopped=stopped, complete=complete)
        order = sorted(range(len(tried)), key=lambda i: tried[i][0].value)  # by load, for plots
        write_sweep(out_dir, [tried[i][0].slug for i in order],
                    [summaries[i] for i in order if i < len(summaries)], capacity=capacity)
        return capacity

    while True:
        verdicts = {level.value: v["passed"] for level, v in tried if v is not None}
        value, stopped = next_level(search, options.levels[0].value, verdicts)
        if value is not None and len(tried) >= search.max_levels:
            value, stopped = None, "level budget"
        if value is not None and search.max_seconds is not None and \
                clock() - started >= search.max_seconds:
            value, stopped = None, "time budget"
        if value is None:
            break
        level = Level(search.kind, value)
        tried.append((level, None))
        save(stopped="running", complete=False)  # from the start: an interrupted level is listed
        try:
            summary = run_one(level, out_dir / level.slug)
        except KeyboardInterrupt:  # the level's finished records are saved by run_one
            for line in capacity_lines(save(stopped="interrupted", complete=False)):
                on_info(line)
            raise
        summaries.append(summary)
        tried[-1] = (level, judge(slo, summary.to_dict()))
    for line in capacity_lines(save(stopped=stopped, complete=True)):
        on_info(line)
    return summaries


def capacity_lines(capacity: dict[str, Any]) -> list[str]:
    """The search for a terminal: each level's verdict, then the outcome."""
    lines = [f"capacity search ({capacity['search']}) at {', '.join(capacity['slos'])}:"]
    for row in capacity["levels"]:
        if row["passed"] is None:
            lines.append(f"  {row['slug']:<10} interrupted")
            continue
        values = ", ".join(f"{v['slo'].split(':')[0]} {_number(v['value_ms'])} ms"
                           for v in row["slos"])
        lines.append(f"  {row['slug']:<10} {'held  ' if row['passed'] else 'FAILED'}  {values}"
                     f", failed {row['failed_share']:.0%}, goodput "
                     f"{_number(row['goodput'])} req/s")
    return lines + outcome_lines(capacity)


def outcome_lines(capacity: dict[str, Any]) -> list[str]:
    """The capacity, how sure it is (the bracket, whether the knee is in it) and why the search
    stopped."""
    unit = "streams" if capacity["search"] == "concurrency" else "requests/s"
    low, high = capacity["bracket"]["highest_pass"], capacity["bracket"]["lowest_fail"]
    name = "capacity" if capacity["complete"] else "capacity so far"
    if low is None and high is None:
        return [f"{name}: none (no level finished)"]
    if capacity["capacity"] is None:
        lines = [f"{name}: no level held every SLO (lowest tried: {_number(high)} {unit})"]
    else:
        lines = [f"{name}: {_number(capacity['capacity'])} {unit} (goodput "
                 f"{_number(capacity['capacity_goodput'])} req/s)"]
    if capacity["bracketed"]:
        lines.append(f"  knee bracketed: held at {_number(low)}, failed at {_number(high)} "
                     f"({capacity['relative_width']:.0%} apart)")
    else:
        lines.append("  knee NOT bracketed: "
                     + ("no level failed" if high is None else "no level held"))
    lines.append(f"  stopped: {STOPS.get(capacity['stopped'], capacity['stopped'])}")
    return lines


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def read_capacity(folder: Path) -> dict[str, Any] | None:
    """A saved search's `capacity` from folder/sweep.json, or None when the folder is not a
    search or the object is not the shape written (the file is input: anyone may edit it)."""
    try:
        sweep = read_json_file(folder / "sweep.json")
    except (OSError, ValueError):
        return None
    capacity = sweep.get("capacity") if isinstance(sweep, dict) else None
    return capacity if _well_formed(capacity) else None


def _well_formed(capacity: Any) -> bool:
    """The keys and types `capacity_lines` and the report read."""
    def number(value: Any, *, none: bool = True) -> bool:
        return (value is None and none) or (
            isinstance(value, int | float) and not isinstance(value, bool))

    def level(row: Any) -> bool:
        if not (isinstance(row, dict) and isinstance(row.get("slug"), str)
                and number(row.get("value"), none=False) and row.get("passed") in (
                    True, False, None)):
            return False
        return row["passed"] is None or (
            number(row.get("goodput")) and number(row.get("failed_share"), none=False)
            and isinstance(row.get("slos"), list) and all(
                isinstance(v, dict) and isinstance(v.get("slo"), str)
                and number(v.get("value_ms")) and isinstance(v.get("passed"), bool)
                for v in row["slos"]))

    if not isinstance(capacity, dict):
        return False
    ends = capacity.get("bracket")
    return (capacity.get("search") in ("concurrency", "rate")
            and isinstance(capacity.get("slos"), list)
            and all(isinstance(slo, str) for slo in capacity["slos"])
            and isinstance(capacity.get("levels"), list) and all(map(level, capacity["levels"]))
            and all(number(capacity.get(key)) for key in (
                "capacity", "capacity_goodput", "relative_width"))
            and isinstance(ends, dict) and number(ends.get("highest_pass"))
            and number(ends.get("lowest_fail"))
            and isinstance(capacity.get("bracketed"), bool)
            and (not capacity["bracketed"] or number(capacity["relative_width"], none=False))
            and isinstance(capacity.get("stopped"), str)
            and isinstance(capacity.get("complete"), bool))
