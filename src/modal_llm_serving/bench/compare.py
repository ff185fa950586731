"""`mls bench compare`: saved runs side by side, level by level, each difference against its noise.

Each side is a run folder (one level, or a sweep), or several folders of one setting run again
(`A1,A2`: repeats). The first side is the baseline A; every other side is compared with it, at
the levels (concurrency or rate) both have. What a difference must clear to count:

- the 95% bootstrap interval of B − A, from the per-request records: each side's requests in
  the measurement window are resampled with replacement (RESAMPLES times, seeded, so the same
  folders give the same answer) and the statistic recomputed; ITL is resampled by request, as
  one request's gaps move together. This is the noise of sampling requests within a run;
- where a side was repeated, the run-to-run spread: the widest range (max − min) of the
  statistic over either side's repeats, which the records of one run cannot show;
- and `min_diff_pct` of A (default 5%): run-to-run drift the records cannot show (another
  container, another network path) is taken as up to that much; measure it with repeats and
  lower it.

A difference that clears all three is "A faster" or "B faster" (lower latency, error rate or
cost, higher throughput or goodput is better); anything else is "within noise". Throughput,
goodput and cost are one number per run: without repeats their verdict is "no noise estimate".
numpy (matplotlib's own dependency) does the resampling.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.cost import read_cost
from modal_llm_serving.bench.records import NS_PER_MS, RequestRecord
from modal_llm_serving.bench.results import read_records, read_summary, sweep_levels
from modal_llm_serving.errors import UsageError

__all__ = ["RESAMPLES", "Level", "Side", "compare_sides", "read_side"]

RESAMPLES = 1000
LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
STATS = ("mean", "p50", "p90", "p99")
# one number per run: (summary key, name, unit); higher is better
RATES = (("output_throughput", "output throughput", "tok/s"),
         ("total_token_throughput", "total throughput", "tok/s"),
         ("request_throughput", "request throughput", "req/s"),
         ("request_goodput", "goodput", "req/s"))
COSTS = (("usd_per_mtok_output", "$/M output tokens"), ("usd_per_mtok_total", "$/M total tokens"))
# what differs between two runs' workloads, as saved in their summaries
SHAPE = (("model", ("model_id",)), ("endpoint", ("endpoint_type",)),
         ("dataset", ("data", "dataset")), ("input_len", ("data", "input_len")),
         ("output_len", ("data", "output_len")), ("turns", ("config", "turns")))


@dataclasses.dataclass
class Level:
    """One level of one run: its summary and its records' samples in the measurement window."""

    key: str  # c8, r2.5, r-inf; "run" for a run that does not say
    label: str
    summary: dict[str, Any]
    samples: dict[str, list[float]]  # ttft, tpot, e2el (ms), ok (1/0)
    itl: list[list[float]]  # each successful request's gaps (ms)


@dataclasses.dataclass
class Side:
    """One side of a comparison: a letter, its folders (repeats of one setting), their levels."""

    name: str
    folders: list[Path]
    runs: list[dict[str, Level]]  # per folder: level key -> level


def read_side(name: str, folders: list[Path]) -> Side:
    """Read each folder of a side; UsageError (one line) for one that is not a run."""
    return Side(name, folders, [_read_run(folder) for folder in folders])


def _read_run(folder: Path) -> dict[str, Level]:
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give results folders of `mls bench run`")
    slugs = sweep_levels(folder)
    if slugs == []:
        raise UsageError(f"{folder} is a sweep whose levels hold no results yet; nothing to "
                         "compare")
    if slugs is None and not ((folder / "summary.json").is_file()
                              or (folder / "requests.jsonl").is_file()):
        raise UsageError(f"{folder} is not a benchmark run (no summary.json, requests.jsonl or "
                         "sweep.json); give a folder written by `mls bench run`")
    levels = [_read_level(folder / slug, slug) for slug in slugs] if slugs else [
        _read_level(folder, "")]
    return {level.key: level for level in levels}


def _read_level(folder: Path, slug: str) -> Level:
    summary = read_summary(folder)
    level = summary.get("level")
    key = level.get("slug") if isinstance(level, dict) else None
    if not isinstance(key, str) or not key or len(key) > 40:
        key = slug or "run"
    samples: dict[str, list[float]] = {"ttft": [], "tpot": [], "e2el": [], "ok": []}
    itl: list[list[float]] = []
    start, end = _window(summary)
    for data in read_records(folder / "requests.jsonl"):
        try:
            record = RequestRecord.from_dict(data)
        except ValueError:
            continue  # the summary counted such lines as skipped
        if not start <= record.sent_ns / NS_PER_MS or not record.end_ns / NS_PER_MS <= end:
            continue  # outside the window the summary measured
        samples["ok"].append(1.0 if record.ok else 0.0)
        if not record.ok:
            continue
        for metric, value in (("ttft", record.ttft_ms), ("tpot", record.tpot_ms),
                              ("e2el", record.e2el_ms)):
            if value is not None:
                samples[metric].append(value)
        itl.append([gap / NS_PER_MS for gap in record.itl_ns])
    return Level(key, str(summary.get("label") or key), summary, samples, itl)


def _window(summary: dict[str, Any]) -> tuple[float, float]:
    window = summary.get("window_ms")
    if (isinstance(window, list) and len(window) == 2
            and all(_number(value) for value in window)):
        return float(window[0]), float(window[1])
    return -math.inf, math.inf


def _number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


# --- the comparison -----------------------------------------------------------------------------


def compare_sides(sides: list[Side], *, min_diff_pct: float = 5.0,
                  resamples: int = RESAMPLES) -> dict[str, Any]:
    """Every other side against the first, level by level: the comparison as one JSON value."""
    base = sides[0]
    out: dict[str, Any] = {
        "baseline": base.name,
        "runs": {side.name: [str(folder) for folder in side.folders] for side in sides},
        "method": {"confidence": 0.95, "resamples": resamples, "min_diff_pct": min_diff_pct,
                   "interval": "bootstrap of B − A from per-request records (ITL by request)",
                   "repeats": "run-to-run spread: widest max − min over either side's repeats"},
        "notes": _repeat_notes(sides),
        "comparisons": [],
    }
    for side in sides[1:]:
        keys = [key for key in _keys(base) if key in _keys(side)]
        out["notes"] += _level_notes(base, side, keys) + _shape_notes(base, side, keys)
        levels = [_compare_level(base, side, key, min_diff_pct=min_diff_pct,
                                 resamples=resamples) for key in keys]
        out["comparisons"].append({"side": side.name, "levels": levels})
    return out


def _keys(side: Side) -> list[str]:
    """The side's level keys, in the order its runs list them."""
    keys: list[str] = []
    for run in side.runs:
        keys += [key for key in run if key not in keys]
    return keys


def _levels(side: Side, key: str) -> list[Level]:
    return [run[key] for run in side.runs if key in run]


def _compare_level(a_side: Side, b_side: Side, key: str, *, min_diff_pct: float,
                   resamples: int) -> dict[str, Any]:
    a_levels, b_levels = _levels(a_side, key), _levels(b_side, key)
    names = (a_side.name, b_side.name)
    rows = []
    intervals = _latency_intervals(a_levels, b_levels, resamples=resamples)
    for metric, title in LATENCIES:
        for stat in STATS:
            values = [[_get(level.summary, f"{stat}_{metric}_ms") for level in levels]
                      for levels in (a_levels, b_levels)]
            rows.append(_row(f"{title} {stat}", "ms", values, intervals.get((metric, stat)),
                             names, min_diff_pct=min_diff_pct, lower_better=True, word="faster"))
    for summary_key, title, unit in RATES:
        values = [[_get(level.summary, summary_key) for level in levels]
                  for levels in (a_levels, b_levels)]
        if any(value is not None for side in values for value in side):  # goodput: with SLOs
            rows.append(_row(title, unit, values, None, names, min_diff_pct=min_diff_pct,
                             lower_better=False, word="faster"))
    rates = [[_error_rate(level.summary) for level in levels] for levels in (a_levels, b_levels)]
    rows.append(_row("error rate", "%", rates, intervals.get(("error", "rate")), names,
                     min_diff_pct=min_diff_pct, lower_better=True, word="better"))
    for cost_key, title in COSTS:
        values = [[_cost(level.summary, cost_key) for level in levels]
                  for levels in (a_levels, b_levels)]
        if any(value is not None for side in values for value in side):
            rows.append(_row(title, "USD", values, None, names, min_diff_pct=min_diff_pct,
                             lower_better=True, word="cheaper"))
    return {"level": key, "label": a_levels[0].label, "repeats": [len(a_levels), len(b_levels)],
            "rows": rows}


def _get(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, int | float) and _number(value) else None


def _error_rate(summary: dict[str, Any]) -> float | None:
    total = summary["completed"] + summary["failed"]
    return summary["failed"] / total * 100 if total else None


def _cost(summary: dict[str, Any], key: str) -> float | None:
    cost = read_cost(summary)
    return None if cost is None else _get(cost, key)


def _row(name: str, unit: str, values: list[list[float | None]],
         interval: tuple[float, float] | None, names: tuple[str, str], *, min_diff_pct: float,
         lower_better: bool, word: str) -> dict[str, Any]:
    """One metric: A and B (the mean of their repeats), B − A, its interval and the verdict."""
    known = [[value for value in side if value is not None] for side in values]
    a, b = (sum(side) / len(side) if side else None for side in known)
    spreads = [max(side) - min(side) for side in known if len(side) > 1]
    spread = max(spreads) if spreads else None
    row: dict[str, Any] = {"metric": name, "unit": unit, "a": a, "b": b, "diff": None,
                           "diff_pct": None, "ci95": list(interval) if interval else None,
                           "repeat_spread": spread}
    if a is None or b is None:
        return {**row, "verdict": "not in both"}
    diff = b - a
    row.update(diff=diff, diff_pct=diff / a * 100 if a else None)
    if interval is None and spread is None:
        return {**row, "verdict": "no noise estimate"}
    within = ((interval is not None and interval[0] <= 0 <= interval[1])
              or (spread is not None and abs(diff) <= spread)
              or (a != 0 and abs(diff) / abs(a) * 100 < min_diff_pct) or diff == 0)
    if within:
        return {**row, "verdict": "within noise"}
    b_wins = diff < 0 if lower_better else diff > 0
    return {**row, "verdict": f"{names[1] if b_wins else names[0]} {word}"}


# --- the bootstrap ------------------------------------------------------------------------------


def _latency_intervals(a_levels: list[Level], b_levels: list[Level], *,
                       resamples: int) -> dict[tuple[str, str], tuple[float, float]]:
    """95% intervals of B − A for each latency statistic and the error rate (in percent),
    each side's repeats pooled; none for a statistic a side has no samples of."""
    import numpy as np

    out: dict[tuple[str, str], tuple[float, float]] = {}
    for metric in ("ttft", "tpot", "e2el", "ok", "itl"):
        draws = []
        for index, levels in enumerate((a_levels, b_levels)):
            rng = np.random.default_rng(index)  # seeded: the same folders, the same answer
            if metric == "itl":
                groups = [gaps for level in levels for gaps in level.itl]
                draws.append(_resample_groups(groups, rng, resamples))
            else:
                values = np.array([v for level in levels for v in level.samples[metric]])
                draws.append(_resample(values, rng, resamples))
        if draws[0] is None or draws[1] is None:
            continue
        difference = draws[1] - draws[0]  # rows: mean, p50, p90, p99
        if metric == "ok":  # error rate (%) = 100 × (1 − success share): B − A flips sign
            low, high = np.percentile(-difference[0] * 100, [2.5, 97.5])
            out[("error", "rate")] = (float(low), float(high))
            continue
        for row, stat in enumerate(STATS):
            low, high = np.percentile(difference[row], [2.5, 97.5])
            out[(metric, stat)] = (float(low), float(high))
    return out


def _statistics(samples: Any) -> Any:
    """Mean, p50, p90, p99 of each row of `samples` (one resample a row): 4 x rows."""
    import numpy as np

    return np.vstack([samples.mean(axis=1), np.percentile(samples, [50, 90, 99], axis=1)])


def _resample(values: Any, rng: Any, resamples: int) -> Any:
    """The statistics of `resamples` resamples of `values` (with replacement), 4 x resamples."""
    import numpy as np

    n = len(values)
    if n == 0:
        return None
    block = max(1, 2_000_000 // n)  # bounded memory: at most ~16 MB of draws at a time
    parts = []
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        parts.append(_statistics(values[rng.integers(0, n, size=(rows, n))]))
    return np.hstack(parts)


def _resample_groups(groups: list[list[float]], rng: Any, resamples: int) -> Any:
    """As `_resample`, drawing whole requests (each with all its gaps)."""
    import numpy as np

    groups = [group for group in groups if group]
    if not groups:
        return None
    flat = np.concatenate([np.asarray(group, dtype=float) for group in groups])
    lengths = np.array([len(group) for group in groups])
    columns = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, len(groups), size=len(groups)),
                             minlength=len(groups))
        values = np.repeat(flat, np.repeat(counts, lengths))
        columns.append(_statistics(values[np.newaxis, :])[:, 0])
    return np.array(columns).T


# --- what does not match ------------------------------------------------------------------------


def _repeat_notes(sides: list[Side]) -> list[str]:
    notes = []
    for side in sides:
        keys = [set(run) for run in side.runs]
        if len(keys) > 1 and any(k != keys[0] for k in keys):
            notes.append(f"{side.name}: its repeats ran different levels; each level pools "
                         "the repeats that ran it")
    return notes


def _level_notes(a: Side, b: Side, shared: list[str]) -> list[str]:
    only_a = [key for key in _keys(a) if key not in shared]
    only_b = [key for key in _keys(b) if key not in shared]
    if not shared:
        return [f"{a.name} and {b.name} share no level ({a.name}: {', '.join(_keys(a))}; "
                f"{b.name}: {', '.join(_keys(b))}); nothing to compare"]
    if not only_a and not only_b:
        return []
    parts = [f"only in {name}: {', '.join(keys)}" for name, keys in
             ((a.name, only_a), (b.name, only_b)) if keys]
    return [f"{a.name} vs {b.name}: compared at {', '.join(shared)}; " + "; ".join(parts)]


def _shape_notes(a: Side, b: Side, shared: list[str]) -> list[str]:
    if not shared:
        return []
    first_a, first_b = _levels(a, shared[0])[0].summary, _levels(b, shared[0])[0].summary
    differ = []
    for name, path in SHAPE:
        values = [_dig(summary, path) for summary in (first_a, first_b)]
        if values[0] != values[1]:
            differ.append(f"{name} {values[0]!r} vs {values[1]!r}")
    if not differ:
        return []
    return [f"{a.name} vs {b.name}: workloads differ ({'; '.join(differ)}); the numbers "
            "compare where the levels match, the workloads do not"]


def _dig(summary: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str | int | float) and not isinstance(value, bool) else None
