"""`mls tune`: an app's concurrency knobs set from its measured SLO capacity, each with its reason.

The capacity is sweep.json's `capacity`: written by a capacity search (`mls bench run --search`),
or, for a plain sweep, derived from its levels by the same rule (bench/capacity.py). It is per
load level of the whole endpoint; divided by the containers that served the benchmark, it is per
container. The rules:

- target (`target_inputs` / `target_concurrency`): the capacity less the headroom (90 %: Modal
  adds a container before one passes the load that still held the SLO);
- max (`max_inputs` / `max_concurrency`, a hard cap: above it Modal queues or answers 429): the
  next level tried above the capacity if no request failed there, else the capacity;
- the engine's `--max-num-seqs`: at least the max (the engine batches every request a container
  gets), and at most four times it (MLS027: batch room no request ever reaches);
- `MAX_CONTAINERS` for a stated peak: ceil(peak / per-container capacity), in requests/s (the
  rate each container sustained at the capacity) or in requests in flight; `MIN_CONTAINERS`:
  the warm containers asked for.

In an open loop (levels of requests/s) the requests in flight per container are the level's
measured concurrency (Little's law). The file is edited like `mls new` edits a recipe: only the
constants behind the knobs change, and the result is checked by `mls check`'s rules.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.capacity import (
    capacity_of_levels,
    no_slo_given,
    read_capacity,
    read_levels,
)
from modal_llm_serving.bench.slo import Slo, parse_slo, require_percentiles
from modal_llm_serving.errors import SloNotMet, UsageError
from modal_llm_serving.files import cannot_write, require_regular_file, write_atomic
from modal_llm_serving.recipes.knobs import Knob, find_knobs
from modal_llm_serving.recipes.new import render_source

__all__ = ["Change", "Load", "Tuning", "tune_app"]

BATCH_ROOM = 4  # MLS027: an engine batch above 4x what a container gets is never used


@dataclasses.dataclass(frozen=True)
class Load:
    """What the user states: the peak to size containers for, warm containers, headroom."""

    headroom: float = 0.9  # target = capacity x headroom
    peak_rps: float | None = None
    peak_concurrency: int | None = None
    idle_min: int | None = None
    replicas: int = 1  # containers that served the benchmark


@dataclasses.dataclass(frozen=True)
class Change:
    """One knob's new value and the measured reason for it."""

    constant: str
    old: int | None
    new: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What `mls tune` worked out: the changes, the new text, and what `mls check` says of it."""

    path: Path
    capacity: dict[str, Any]  # sweep.json's `capacity` (shape: bench/slo.py)
    changes: tuple[Change, ...]
    notes: tuple[str, ...]
    old_text: str
    text: str
    findings: tuple[Any, ...]  # modal_llm_serving.check.Finding, of the tuned text
    added: tuple[Any, ...]  # those the original file did not have
    written: bool

    def diff(self) -> list[str]:
        return [line.rstrip("\n") for line in difflib.unified_diff(
            self.old_text.splitlines(keepends=True), self.text.splitlines(keepends=True),
            fromfile=str(self.path), tofile=f"{self.path} (tuned)")]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "capacity": self.capacity,
                "changes": [dataclasses.asdict(change) for change in self.changes],
                "notes": list(self.notes), "diff": self.diff(),
                "findings": [f.to_dict() for f in self.findings],
                "findings_added": [f.to_dict() for f in self.added], "written": self.written}


class _Levels:
    """The capacity's levels as tune reads them: each level's verdict (the capacity's row) and
    its saved summary (what it measured: requests in flight, requests/s, failures)."""

    def __init__(self, capacity: dict[str, Any], summaries: list[dict[str, Any]]) -> None:
        self.kind = capacity["search"]
        self.rows = sorted((row for row in capacity["levels"] if row["passed"] is not None),
                           key=lambda row: row["value"])
        self.summaries = {summary["level"]["slug"]: summary for summary in summaries
                          if isinstance(summary.get("level"), Mapping)}
        self.best = next((row for row in self.rows if row["slug"] == capacity["capacity_slug"]),
                         None)
        self.next = None if self.best is None else next(
            (row for row in self.rows if row["value"] > self.best["value"]), None)

    def measured(self, row: dict[str, Any], key: str) -> float:
        value = self.summaries.get(row["slug"], {}).get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise UsageError(f"level {row['slug']}: its summary.json has no {key!r}; give the "
                             "results folder `mls bench run` wrote")
        return float(value)

    def load(self, row: dict[str, Any]) -> str:
        unit = "streams" if self.kind == "concurrency" else "req/s"
        return f"{row['value']:g} {unit}"


def _words(slo: str) -> str:
    """How messages name an SLO: "p95 TTFT"."""
    objective = parse_slo(slo)
    return f"p{objective.percentile} {objective.metric.upper()}"


def _misses(row: dict[str, Any]) -> str:
    """Why a level did not hold: each SLO it missed, with its numbers."""
    misses = []
    for verdict in row["slos"]:
        if verdict["passed"]:
            continue
        limit, value = parse_slo(verdict["slo"]).limit_ms, verdict["value_ms"]
        if value is None:
            misses.append(f"no {_words(verdict['slo'])} measured (no successful request)")
        elif value > limit:
            misses.append(f"{_words(verdict['slo'])} {value:.0f} ms > {limit:g} ms")
        else:
            misses.append(f"{_words(verdict['slo'])} {value:.0f} ms, but {row['failed_share']:.0%}"
                          " of requests failed")
    return "; ".join(misses)


@dataclasses.dataclass(frozen=True)
class _PerContainer:
    """The capacity per container: requests in flight and requests/s at the SLO, and the most
    requests in flight a container may take (the max rule)."""

    in_flight: float
    rate: float
    most: int
    most_reason: str


def _per_container(levels: _Levels, replicas: int) -> _PerContainer:
    best, following = levels.best, levels.next
    if not levels.rows:
        raise UsageError("the results hold no finished level; run `mls bench run` first")
    if best is None:
        lowest = levels.rows[0]
        raise SloNotMet(f"no level met the SLO: at the lowest, {lowest['slug']} "
                        f"({levels.load(lowest)}), {_misses(lowest)}; measure lower loads, or "
                        "relax the SLO")

    def in_flight(row: dict[str, Any]) -> float:
        return (row["value"] if levels.kind == "concurrency" else levels.measured(
            row, "achieved_concurrency")) / replicas

    at_best, rate = in_flight(best), levels.measured(best, "request_throughput")
    if at_best <= 0 or rate <= 0:
        raise UsageError(f"{best['slug']} held the SLO but measured no load (nothing in flight "
                         "or completed); run the benchmark again")
    if following is None:
        most = max(1, math.floor(at_best))
        reason = f"the capacity; no level above {best['slug']} was tried"
    elif failed := int(levels.measured(following, "failed")):
        most = max(1, math.floor(at_best))
        total = failed + int(levels.measured(following, "completed"))
        reason = (f"the capacity: at {following['slug']}, the next level tried, {failed} of "
                  f"{total} requests failed")
    else:
        most = max(1, math.ceil(in_flight(following)))
        held = "held the SLO" if following["passed"] else _misses(following)
        reason = (f"{following['slug']}, the next level tried, failed no request ({held}): a "
                  "container may take that much while more start")
    return _PerContainer(in_flight=at_best, rate=rate / replicas, most=most,
                         most_reason=reason)


def _measured(levels: _Levels) -> str:
    """The numbers behind the capacity, per SLO: "p95 TTFT 20 ms at c4, 250 ms at c6, SLO
    100 ms"."""
    assert levels.best is not None
    parts = []
    for number, verdict in enumerate(levels.best["slos"]):
        seen = [f"{_ms(verdict['value_ms'])} at {levels.best['slug']}"]
        if levels.next is not None:
            seen.append(f"{_ms(levels.next['slos'][number]['value_ms'])} at {levels.next['slug']}")
        parts.append(f"{_words(verdict['slo'])} {', '.join(seen)}, SLO "
                     f"{parse_slo(verdict['slo']).limit_ms:g} ms")
    return "; ".join(parts)


def _ms(value: float | None) -> str:
    return "no successful request" if value is None else f"{value:.0f} ms"


def _notes(capacity: dict[str, Any], levels: _Levels) -> list[str]:
    """What the capacity's numbers leave open: a knee not found, noise, a search cut short."""
    notes = []
    high = capacity["bracket"]["lowest_fail"]
    if high is None and levels.best is not None:
        notes.append(f"capacity is at least {levels.load(levels.best)} ({levels.best['slug']}, "
                     "the highest level tried); run a higher level to find where the SLO breaks")
    if high is not None and (again := [row["slug"] for row in levels.rows
                                       if row["passed"] and row["value"] > high]):
        notes.append(f"{', '.join(again)} met the SLO again above a level that did not: the "
                     "measurement is noisy; repeat it with more requests")
    if not capacity["complete"]:
        notes.append("the search did not finish: this is the capacity so far")
    return notes


def _decide(knobs: list[Knob], capacity: dict[str, Any], levels: _Levels, load: Load) -> tuple[
        list[Change], list[str]]:
    """Each knob's value by the rules above, with its reason; notes on what was left alone."""
    per = _per_container(levels, load.replicas)
    by_role: dict[str, Knob] = {knob.role: knob for knob in knobs}
    unit = "in flight" if levels.kind == "rate" else "streams"
    where = f" (measured on {load.replicas} containers)" if load.replicas > 1 else ""
    wanted: dict[str, tuple[int, str]] = {}
    target = max(1, math.floor(per.in_flight * load.headroom))
    wanted["target"] = (target, f"{load.headroom:.0%} of the capacity, {per.in_flight:.4g} "
                                f"{unit} per container{where}: {_measured(levels)}")
    most = max(per.most, target)
    if "max" in by_role:
        wanted["max"] = (most, per.most_reason)
    seqs = by_role.get("max_num_seqs")
    if seqs is not None and seqs.value is not None:
        if seqs.value < most:
            wanted["max_num_seqs"] = (most, f"at least the {most} requests a container may "
                                             "take: the engine batches every one")
        elif seqs.value > BATCH_ROOM * most:
            wanted["max_num_seqs"] = (most, f"a container takes at most {most} requests; "
                                             f"batch room above {BATCH_ROOM}x that is never "
                                             "used (MLS027)")
        else:
            wanted["max_num_seqs"] = (seqs.value, f"room for the {most} requests a container "
                                                  f"may take, within {BATCH_ROOM}x of them")
    wanted |= _containers(by_role, per, load)
    if load.idle_min is not None:
        wanted["min_containers"] = (load.idle_min, "warm containers asked for (--idle-min)")
    changes: dict[str, Change] = {}
    notes = _notes(capacity, levels)
    for role, (value, reason) in wanted.items():
        knob = by_role.get(role)
        if knob is None:
            continue
        if knob.constant is None:
            if value == knob.value:
                continue
            notes.append(f"{knob.written} (line {knob.line}) would be {value}, but it is not a "
                         "module-level UPPER_CASE constant mls tune can set; set it by hand")
            continue
        if (other := changes.get(knob.constant)) is not None and other.new != value:
            raise UsageError(f"{knob.constant} sets two knobs that want different values "
                             f"({other.new} and {value}); give each its own constant")
        changes[knob.constant] = Change(knob.constant, knob.value, value, reason)
    if "max" not in by_role:
        notes.append(f"no hard per-container cap (max_inputs / max_concurrency) in this app; "
                     f"a container may take more than {most}")
    if seqs is not None and "max_num_seqs" in wanted and (seqs.value or 0) < most:
        notes.append("the engine batches more than it did while measured: benchmark the tuned "
                     "app again")
    return list(changes.values()), notes


def _containers(by_role: dict[str, Knob], per: _PerContainer,
                load: Load) -> dict[str, tuple[int, str]]:
    """MAX_CONTAINERS for the stated peak, and never below the warm containers (--idle-min,
    else the app's MIN_CONTAINERS: Modal refuses a minimum above the maximum)."""
    low_knob = by_role.get("min_containers")
    low = load.idle_min if load.idle_min is not None else (low_knob.value if low_knob else None)
    low_words = "--idle-min" if load.idle_min is not None else "MIN_CONTAINERS"
    if load.peak_rps is not None:
        need = math.ceil(load.peak_rps / per.rate)
        reason = (f"peak {load.peak_rps:g} req/s / {per.rate:.3g} req/s per container at the "
                  "SLO")
    elif load.peak_concurrency is not None:
        need = math.ceil(load.peak_concurrency / per.in_flight)
        reason = (f"peak {load.peak_concurrency} in flight / {per.in_flight:.4g} per container "
                  "at the SLO")
    else:
        high = by_role.get("max_containers")
        if low is None or high is None or high.value is None or high.value >= low:
            return {}
        need, reason = 0, "no peak given"
    if low is not None and low > need:
        need, reason = low, f"{reason}; raised to the {low} warm containers of {low_words}"
    return {"max_containers": (max(1, need), reason)}


def _imported(path: Path, text: str) -> list[Any]:
    """The import check's findings of `text` as the file at `path`, imported from a copy in a
    temporary folder (nothing is written beside the app)."""
    from modal_llm_serving.check.imports import import_findings

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_text(text, encoding="utf-8")
        found = import_findings(copy, ast.parse(text), timeout=60.0, python=sys.executable)
    return [dataclasses.replace(f, path=str(path)) for f in found]


def _check(path: Path, old_text: str, text: str, *,
           import_check: bool) -> tuple[list[Any], list[Any]]:
    """`mls check`'s findings of the tuned text, and those of them the original did not have
    (same rule, same line: the edit moves no line). The original is imported only when the
    tuned text's import finds something."""
    from modal_llm_serving.check import check_source, import_skipped_reason

    findings = check_source(text, path=str(path))
    before = {(f.rule.id, f.line) for f in check_source(old_text, path=str(path))}
    if (import_check and import_skipped_reason(path) is None
            and (imported := _imported(path, text))):
        findings += imported
        before |= {(f.rule.id, f.line) for f in _imported(path, old_text)}
    added = [f for f in findings if (f.rule.id, f.line) not in before]
    return findings, added


def capacity_of(results: Path, slo: Slo | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The capacity in `results` and its levels' summaries: a search's own (its SLOs unless
    others are given), else derived from the sweep's levels at `slo`."""
    summaries = read_levels(results)
    saved = read_capacity(results)
    if saved is not None:
        given = sorted(str(o) for o in slo.objectives()) if slo else sorted(saved["slos"])
        if given != sorted(saved["slos"]):
            raise UsageError(f"{results} is a capacity search at {', '.join(saved['slos'])}; "
                             "leave out --slo to tune from it, or search again at your SLOs")
        return saved, summaries
    if slo is None:
        raise no_slo_given(summaries)
    return capacity_of_levels(summaries, require_percentiles(slo, "mls tune")), summaries


def tune_app(path: Path, results: Path, slo: Slo | None, load: Load, *,
             write: bool = False, import_check: bool = True) -> Tuning:
    """The app at `path` with its knobs set from the SLO capacity measured in `results`;
    written (atomically) only when `write` and `mls check` finds nothing the original did not
    have. The app is read first: a file that cannot be tuned is said before any result."""
    from modal_llm_serving.check.source import Source, read_python_source

    if not 0 < load.headroom <= 1:
        raise UsageError("--headroom is a percentage of the capacity, 1 to 100")
    require_regular_file(path, what="app file")  # a FIFO would block the read
    try:
        old_text = read_python_source(path)
        src = Source(ast.parse(old_text), str(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise UsageError(f"{path}: cannot read it as Python ({exc}); give the app file") from None
    knobs = find_knobs(src)
    capacity, summaries = capacity_of(results, slo)
    changes, notes = _decide(knobs, capacity, _Levels(capacity, summaries), load)
    rendered = render_source(old_text, {change.constant: change.new for change in changes})
    findings, added = _check(path, old_text, rendered.text, import_check=import_check)
    written = False
    if write and not added and rendered.changed:
        try:
            write_atomic(path, rendered.text)
        except OSError as exc:
            raise cannot_write(path, exc) from None
        written = True
    return Tuning(path=path, capacity=capacity, changes=tuple(changes), notes=tuple(notes),
                  old_text=old_text, text=rendered.text, findings=tuple(findings),
                  added=tuple(added), written=written)
