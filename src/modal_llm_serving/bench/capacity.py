"""The SLO capacity of load levels: which held every SLO (slo.judge), the bracket around the
knee, and the capacity; sweep.json's `capacity` (its shape: slo.py's docstring), read and told.

One rule, whoever asks: a capacity search (search.py) writes the object as its levels finish;
a plain sweep has none, and `capacity_of_levels` derives the same object from its saved levels,
so `mls tune` reads one shape either way. The rule:

- a level holds when `slo.judge` says it held every SLO (each percentile within its limit,
  failed requests no more than the percentile leaves);
- the bracket is the highest level that held below the lowest that failed, and that lowest
  (a level that held above a failed one is noise and does not count);
- the capacity is the highest level of the bracket's passing side whose goodput is within
  `GOODPUT_SLACK` of the best goodput that held (more load that brings no more good requests/s
  is not capacity). A sweep run without these SLOs has no goodput for them: then every level
  that held counts alike, and the capacity is the bracket's passing end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.slo import Slo, judge
from modal_llm_serving.errors import UsageError
from modal_llm_serving.untrusted import read_json_file

__all__ = ["GOODPUT_SLACK", "STOPS", "bracket", "capacity_lines", "capacity_of_levels",
           "capacity_result", "no_slo_given", "outcome_lines", "read_capacity", "read_levels"]

GOODPUT_SLACK = 0.05  # goodput within 5 % of the best counts as the best (noise)
STOPS = {
    "narrow": "the bracket is as narrow as the search goes",
    "max level": "--max-level held every SLO: the knee is above it",
    "lowest level": "the lowest level possible failed: the knee is below it",
    "level budget": "--search-levels levels ran",
    "time budget": "--search-time ran out",
    "interrupted": "interrupted: the capacity so far",
    "running": "still running (a search killed outright ends here)",
    "sweep": "a sweep of the levels given, judged after it ran (no search)",
}


def bracket(verdicts: dict[float, bool]) -> tuple[float | None, float | None]:
    """(highest level that held below the lowest that failed, lowest that failed); None where
    no level is on that side. A level that held above a failed one (noise) is not counted."""
    lowest_fail = min((value for value, passed in verdicts.items() if not passed), default=None)
    highest_pass = max((value for value, passed in verdicts.items() if passed and (
        lowest_fail is None or value < lowest_fail)), default=None)
    return highest_pass, lowest_fail



def capacity_result(kind: str, slo: Slo, tried: Sequence[tuple[str, float, dict[str, Any] | None]],
                    *, stopped: str, complete: bool,
                    target_width: float | None = None) -> dict[str, Any]:
    """sweep.json's `capacity` (shape in slo.py's docstring) from the levels (slug, load) in the
    order they ran, each with its verdict (`slo.judge`), or None for one interrupted before its
    end. `target_width`: how narrow a search meant to go (None: not a search)."""
    levels = [{"slug": slug, "value": value,
               "passed": None if verdict is None else verdict["passed"],
               **({} if verdict is None else {key: verdict[key] for key in (
                   "goodput", "failed_share", "slos")})}
              for slug, value, verdict in tried]
    verdicts = {row["value"]: row["passed"] for row in levels if row["passed"] is not None}
    low, high = bracket(verdicts)
    held = [row for row in levels if row["passed"] and (high is None or row["value"] < high)]
    best = max((row["goodput"] or 0.0 for row in held), default=0.0)
    chosen = max((row for row in held if (row["goodput"] or 0.0) >= best * (1 - GOODPUT_SLACK)),
                 key=lambda row: row["value"], default=None)
    return {
        "search": kind, "slos": [str(o) for o in slo.objectives()], "levels": levels,
        "capacity": None if chosen is None else chosen["value"],
        "capacity_slug": None if chosen is None else chosen["slug"],
        "capacity_goodput": None if chosen is None else chosen["goodput"],
        "bracket": {"highest_pass": low, "lowest_fail": high},
        "bracketed": low is not None and high is not None,
        "relative_width": None if low is None or high is None else (high - low) / low,
        "target_width": target_width, "stopped": stopped, "complete": complete,
    }



def capacity_of_levels(summaries: Sequence[Mapping[str, Any]], slo: Slo) -> dict[str, Any]:
    """sweep.json's `capacity` of a plain sweep (its levels' saved summaries), by the rule a
    search applies, lowest load first; `stopped` is "sweep"."""
    if not summaries:
        raise UsageError("the results hold no finished level; run `mls bench run` first")
    tried = sorted((_judged(summary, slo) for summary in summaries), key=lambda row: row[2])
    kinds = {kind for kind, *_rest in tried}
    if len(kinds) > 1 or kinds <= {"trace"}:
        raise UsageError("the results are not one sweep of closed-loop (concurrency) or "
                         "open-loop (rate) levels; give one")
    return capacity_result(kinds.pop(), slo, [row[1:] for row in tried], stopped="sweep",
                           complete=True)


def _judged(summary: Mapping[str, Any], slo: Slo) -> tuple[str, str, float, dict[str, Any]]:
    """(kind, slug, load, verdict) of one saved level; the file is input, so each number
    `judge` reads is checked first."""
    level, where = summary.get("level"), f"level {summary.get('label', '?')}"
    if not (isinstance(level, Mapping) and isinstance(level.get("slug"), str)
            and _is_number(level.get("value"))):
        raise UsageError(f"{where}: the summary does not say its load level (rebuilt from an "
                         "interrupted run?); run that level again")
    keys = [f"p{o.percentile}_{o.metric}_ms" for o in slo.objectives() if o.percentile]
    for key in ("completed", "failed", *keys):
        value = summary.get(key)
        if not (_is_number(value) or (value is None and key in keys)):
            raise UsageError(f"{where}: {key!r} is missing or not a number; give a results "
                             "folder written by `mls bench run`")
    return str(level.get("kind")), level["slug"], float(level["value"]), judge(slo, dict(summary))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(
        value)


def read_levels(folder: Path) -> list[dict[str, Any]]:
    """Every finished level's summary of a results folder (a sweep, or a single run)."""
    from modal_llm_serving.bench.results import read_summary, sweep_levels

    if not folder.is_dir():
        raise UsageError(f"--from {folder}: not a folder; give a results folder of `mls bench "
                         "run`")
    slugs = sweep_levels(folder)
    if slugs is None:
        return [read_summary(folder)]
    return [read_summary(folder / slug) for slug in slugs]


def no_slo_given(summaries: Sequence[Mapping[str, Any]]) -> UsageError:
    """The error for a capacity asked without an SLO. A run's goodput thresholds (`mls bench run
    --slo ttft:500`) bound each request and name no percentile: they are offered with one."""
    for summary in summaries:
        goodput = summary.get("goodput_config")
        if isinstance(goodput, Mapping) and goodput:
            metric, limit = next(iter(goodput.items()))
            return UsageError(f"the results' SLOs are goodput thresholds with no percentile "
                              f"({', '.join(f'{k} {v:g} ms' for k, v in goodput.items())}); give "
                              f"each with its percentile, e.g. --slo {metric}:p95:{limit:g}ms")
    return UsageError("give the SLO the capacity must hold, e.g. --slo ttft:p95:500ms")


def capacity_lines(capacity: dict[str, Any]) -> list[str]:
    """The search for a terminal: each level's verdict, then the outcome."""
    what = "sweep" if capacity["stopped"] == "sweep" else "search"
    lines = [f"capacity {what} ({capacity['search']}) at {', '.join(capacity['slos'])}:"]
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

