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

The capacity is worked out from the verdicts by capacity.py (`capacity_result`, the same rule
`mls tune` applies to a plain sweep). It, its bracket and every level's verdict go into
sweep.json as `capacity` (slo.py's docstring shows the shape); after each level and on Ctrl-C,
marked incomplete, so an interrupted search keeps the capacity known so far.
"""


from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.capacity import bracket, capacity_lines, capacity_result
from modal_llm_serving.bench.options import (
    MAX_RATE,
    MAX_STREAMS,
    MIN_RATE,
    BenchOptions,
    Level,
    Search,
)
from modal_llm_serving.bench.results import write_sweep
from modal_llm_serving.bench.slo import judge
from modal_llm_serving.bench.summary import LevelSummary

__all__ = ["GROWTH", "TARGET_WIDTH", "next_level", "run_search"]

GROWTH = 2.0  # each level of the first phase doubles the load
TARGET_WIDTH = 0.10  # stop when the failing end is at most 10 % above the passing end


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
        capacity = capacity_result(
            search.kind, slo, [(level.slug, level.concurrency or level.value, verdict)
                               for level, verdict in tried],
            stopped=stopped, complete=complete, target_width=TARGET_WIDTH)
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
