"""`mls tune`: an app's concurrency knobs set from its measured SLO capacity, each with its reason.

The capacity (`bench.capacity`) is per load level of the whole endpoint; divided by the
containers that served the benchmark, it is per container. The rules:

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
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.capacity import (
    Capacity,
    LevelPoint,
    SloTarget,
    capacity_at_slo,
    no_slo_given,
    read_levels,
)
from modal_llm_serving.errors import UsageError
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
    capacity: Capacity
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
        return {"path": str(self.path), "capacity": self.capacity.to_dict(),
                "changes": [dataclasses.asdict(change) for change in self.changes],
                "notes": list(self.notes), "diff": self.diff(),
                "findings": [f.to_dict() for f in self.findings],
                "findings_added": [f.to_dict() for f in self.added], "written": self.written}


@dataclasses.dataclass(frozen=True)
class _PerContainer:
    """The capacity per container: requests in flight and requests/s at the SLO, and the most
    requests in flight a container may take (the max rule)."""

    in_flight: float
    rate: float
    most: int
    most_reason: str


def _per_container(capacity: Capacity, replicas: int) -> _PerContainer:
    best, following = capacity.best, capacity.next

    def in_flight(point: LevelPoint) -> float:
        return (point.value if capacity.kind == "concurrency" else point.achieved_concurrency
                ) / replicas

    at_best = in_flight(best)
    if at_best <= 0 or best.request_throughput <= 0:
        raise UsageError(f"{best.slug} held the SLO but measured no load (nothing in flight "
                         "or completed); run the benchmark again")
    if following is None:
        most = max(1, math.floor(at_best))
        reason = f"the capacity; no level above {best.slug} was tried"
    elif following.failed:
        most = max(1, math.floor(at_best))
        reason = (f"the capacity: at {following.slug}, the next level tried, "
                  f"{following.failed} of {following.completed + following.failed} "
                  "requests failed")
    else:
        most = max(1, math.ceil(in_flight(following)))
        misses = "; ".join(following.misses)
        reason = (f"{following.slug}, the next level tried, failed no request "
                  f"({misses}): a container may take that much while more start")
    return _PerContainer(in_flight=at_best, rate=best.request_throughput / replicas, most=most,
                         most_reason=reason)


def _measured(capacity: Capacity) -> str:
    return "; ".join(capacity.evidence(slo) for slo in capacity.slos)


def _decide(knobs: list[Knob], capacity: Capacity, load: Load) -> tuple[
        list[Change], list[str]]:
    """Each knob's value by the rules above, with its reason; notes on what was left alone."""
    per = _per_container(capacity, load.replicas)
    by_role: dict[str, Knob] = {knob.role: knob for knob in knobs}
    unit = "in flight" if capacity.kind == "rate" else "streams"
    where = f" (measured on {load.replicas} containers)" if load.replicas > 1 else ""
    wanted: dict[str, tuple[int, str]] = {}
    target = max(1, math.floor(per.in_flight * load.headroom))
    wanted["target"] = (target, f"{load.headroom:.0%} of the capacity, {per.in_flight:.4g} "
                                f"{unit} per container{where}: {_measured(capacity)}")
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
    notes: list[str] = list(capacity.notes)
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


def tune_app(path: Path, results: Path, slos: list[SloTarget], load: Load, *,
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
    summaries = read_levels(results)
    if not slos:
        raise no_slo_given(summaries)
    capacity = capacity_at_slo(summaries, slos)
    changes, notes = _decide(knobs, capacity, load)
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
