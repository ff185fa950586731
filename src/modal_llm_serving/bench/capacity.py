"""The SLO capacity of a saved sweep: the highest load level at which every SLO held.

An SLO is `METRIC:PERCENTILE:LIMIT` (`ttft:p95:500ms`, `tpot:p50:50ms`, `e2el:p99:10s`), judged
on the percentiles each level's summary already holds. A level holds the SLOs when each one's
percentile is within its limit and no request failed (a failed request misses every SLO).
The capacity is the last level of the unbroken run of levels that hold, counted from the lowest
(a higher level that holds again after one that did not is noise, and is said to be).

>>> slo = parse_slo("ttft:p95:500ms")
>>> levels = [{"level": {"kind": "concurrency", "value": v, "slug": f"c{v}"}, "completed": 9,
...            "failed": 0, "p95_ttft_ms": ms, "achieved_concurrency": v,
...            "request_throughput": v} for v, ms in ((8, 120.0), (16, 480.0), (32, 910.0))]
>>> capacity_at_slo(levels, [slo]).best.slug
'c16'
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import SloNotMet, UsageError

__all__ = ["Capacity", "LevelPoint", "SloTarget", "capacity_at_slo", "no_slo_given",
           "parse_slo", "read_levels"]

METRICS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL"}
PERCENTILES = ("p50", "p90", "p95", "p99")  # the ones every level's summary holds
_SLO = re.compile(r"^(\w+):(\w+):([0-9.eE+-]+)\s*(ms|s)$")


@dataclasses.dataclass(frozen=True)
class SloTarget:
    """One SLO: a metric's percentile must stay at or under a limit (ms)."""

    metric: str  # ttft | tpot | itl | e2el
    percentile: str  # p50 | p90 | p95 | p99
    limit_ms: float

    @property
    def key(self) -> str:
        """The summary key holding this percentile (vLLM's name): p95_ttft_ms."""
        return f"{self.percentile}_{self.metric}_ms"

    def words(self) -> str:
        """How messages name it: "p95 TTFT"."""
        return f"{self.percentile} {METRICS[self.metric]}"

    def spec(self) -> str:
        """As written on the command line: ttft:p95:500ms."""
        return f"{self.metric}:{self.percentile}:{self.limit_ms:g}ms"


def parse_slo(text: str) -> SloTarget:
    """`ttft:p95:500ms` (or `e2el:p99:10s`) as an SloTarget; anything else is one UsageError."""
    match = _SLO.match(text.strip().lower())
    example = "e.g. --slo ttft:p95:500ms or --slo e2el:p99:10s"
    if not match:
        raise UsageError(f"--slo {text!r}: write METRIC:PERCENTILE:LIMIT with a unit, {example}")
    metric, percentile, number, unit = match.groups()
    if metric not in METRICS:
        raise UsageError(f"--slo {text!r}: the metric is one of {', '.join(METRICS)}; {example}")
    if percentile not in PERCENTILES:
        raise UsageError(f"--slo {text!r}: the percentile is one of {', '.join(PERCENTILES)} "
                         f"(what each level's summary holds); {example}")
    try:
        limit = float(number) * (1000 if unit == "s" else 1)
    except ValueError:
        limit = math.nan
    if not (limit > 0 and math.isfinite(limit)):
        raise UsageError(f"--slo {text!r}: the limit must be a number > 0; {example}")
    return SloTarget(metric, percentile, limit)


@dataclasses.dataclass(frozen=True)
class LevelPoint:
    """One level of a sweep as the capacity reads it: its load, outcome and SLO percentiles."""

    kind: str  # concurrency | rate
    value: float  # streams in flight, or requests/s
    slug: str  # c8, r2.5
    completed: int
    failed: int
    observed: dict[str, float | None]  # SloTarget.key -> ms (None: no successful request)
    achieved_concurrency: float  # requests in flight on average (Little's law, measured)
    request_throughput: float  # completed requests/s
    misses: tuple[str, ...]  # why the SLOs did not hold here; () when they did

    @property
    def holds(self) -> bool:
        return not self.misses

    def load(self) -> str:
        """The level in words: "24 streams", "4 req/s"."""
        if self.kind == "concurrency":
            return f"{self.value:g} streams"
        return "all at once" if math.isinf(self.value) else f"{self.value:g} req/s"


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The SLO capacity of a sweep: the best level, the next one tried, and every level."""

    kind: str
    slos: tuple[SloTarget, ...]
    levels: tuple[LevelPoint, ...]  # lowest load first
    best: LevelPoint  # the highest level of the unbroken run that holds the SLOs
    next: LevelPoint | None  # the level tried just above it (None: the best is the highest)
    notes: tuple[str, ...]

    @property
    def knee_found(self) -> bool:
        return self.next is not None

    def evidence(self, slo: SloTarget) -> str:
        """The measured numbers behind the capacity for one SLO: "p95 TTFT 480 ms at c24,
        910 ms at c32, SLO 500 ms"."""
        parts = [f"{_ms(self.best.observed[slo.key])} at {self.best.slug}"]
        if self.next is not None:
            parts.append(f"{_ms(self.next.observed[slo.key])} at {self.next.slug}")
        return f"{slo.words()} {', '.join(parts)}, SLO {slo.limit_ms:g} ms"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "slos": [slo.spec() for slo in self.slos],
                "best": self.best.slug, "value": self.best.value,
                "next": self.next.slug if self.next else None, "knee_found": self.knee_found,
                "levels": [{"slug": p.slug, "value": p.value, "holds": p.holds,
                            "misses": list(p.misses), "failed": p.failed,
                            **{key: value for key, value in p.observed.items()}}
                           for p in self.levels],
                "notes": list(self.notes)}


def _ms(value: float | None) -> str:
    return "no successful request" if value is None else f"{value:.0f} ms"


def _number(summary: Mapping[str, Any], key: str, where: str) -> float:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UsageError(f"{where}: {key!r} is missing or not a number; give a results folder "
                         "written by `mls bench run`")
    return float(value)


def _point(summary: Mapping[str, Any], slos: Sequence[SloTarget]) -> LevelPoint:
    level = summary.get("level")
    where = f"level {summary.get('label', '?')}"
    if not (isinstance(level, Mapping) and level.get("kind") in ("concurrency", "rate")
            and isinstance(level.get("slug"), str)):
        raise UsageError(f"{where}: the summary does not say its load level (rebuilt from an "
                         "interrupted run?); run that level again")
    completed, failed = int(_number(summary, "completed", where)), int(
        _number(summary, "failed", where))
    observed: dict[str, float | None] = {}
    misses = []
    for slo in slos:
        value = summary.get(slo.key)
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise UsageError(f"{where}: {slo.key!r} is not a number")
        observed[slo.key] = None if value is None else float(value)
        if value is None:
            misses.append(f"no {METRICS[slo.metric]} measured (no successful request)")
        elif value > slo.limit_ms:
            misses.append(f"{slo.words()} {value:.0f} ms > {slo.limit_ms:g} ms")
    if failed:
        misses.append(f"{failed} of {completed + failed} requests failed")
    return LevelPoint(kind=level["kind"], value=_number(level, "value", where),
                      slug=level["slug"], completed=completed, failed=failed, observed=observed,
                      achieved_concurrency=_number(summary, "achieved_concurrency", where),
                      request_throughput=_number(summary, "request_throughput", where),
                      misses=tuple(misses))


def capacity_at_slo(summaries: Sequence[Mapping[str, Any]],
                    slos: Sequence[SloTarget]) -> Capacity:
    """The capacity of a sweep (its levels' saved summaries) at `slos`; `SloNotMet` when even
    the lowest level misses them, saying its numbers against the SLOs."""
    if not slos:
        raise UsageError("no SLO to judge the levels by; give one, e.g. --slo ttft:p95:500ms")
    if not summaries:
        raise UsageError("the results hold no finished level; run `mls bench run` first")
    points = sorted((_point(summary, slos) for summary in summaries), key=lambda p: p.value)
    kinds = {point.kind for point in points}
    if len(kinds) > 1:
        raise UsageError("the results mix closed-loop (concurrency) and open-loop (rate) levels; "
                         "give one sweep")
    if not points[0].holds:
        lowest = points[0]
        raise SloNotMet(f"no level met the SLO: at the lowest, {lowest.slug} ({lowest.load()}), "
                        f"{'; '.join(lowest.misses)}; measure lower loads, or relax the SLO")
    run = 0
    while run + 1 < len(points) and points[run + 1].holds:
        run += 1
    best = points[run]
    following = points[run + 1] if run + 1 < len(points) else None
    notes = []
    if following is None:
        notes.append(f"capacity is at least {best.load()} ({best.slug}, the highest level "
                     "tried); run a higher level to find where the SLO breaks")
    if following is not None and (again := [p.slug for p in points[run + 2:] if p.holds]):
        notes.append(f"{', '.join(again)} met the SLO again above {following.slug}, which did "
                     "not: the measurement is noisy; repeat it with more requests")
    return Capacity(kind=points[0].kind, slos=tuple(slos), levels=tuple(points), best=best,
                    next=following, notes=tuple(notes))


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
