"""Service-level objectives: `--slo` parsed once, judged per request (goodput) and per level.

One SLO is `METRIC:PERCENTILE:LIMIT`:

    ttft:p95:500ms     95 % of requests get their first token within 500 ms
    tpot:p50:50ms      the median time per output token is at most 50 ms
    e2el:p99:10s       99 % of requests end within 10 s

METRIC is ttft, tpot or e2el (FORMULAS in metrics.py defines each); PERCENTILE is p50, p90, p95
or p99 (the percentiles every summary keeps); LIMIT is a number > 0 with `ms` or `s` (a bare
number is ms). vLLM's goodput form `METRIC:MS` (`ttft:500`) is accepted too: it has no
percentile, so it counts toward goodput only and a capacity search refuses it.

Per request (goodput, `Slo.met`): a request is good iff it succeeded and met every limit.
Per level (`judge`): a level holds an SLO iff the metric's percentile over the level's succeeded
requests is within the limit and the failed requests are no more than the share the percentile
leaves (errors are misses: a p95 SLO tolerates 5 % failed). A metric with no values where
requests succeeded (TPOT of one-token outputs) counts as 0, as vLLM's goodput does.

`mls bench run --search` (capacity.py) writes its result into the sweep's `sweep.json` as
`capacity`, an object of this shape (levels in the order they were tried; values are streams
for a concurrency search, requests/s for a rate search):

    "capacity": {
      "search": "concurrency",                   # or "rate"
      "slos": ["ttft:p95:500ms", "tpot:p50:50ms"],
      "levels": [                                # every level tried
        {"slug": "c8", "value": 8, "passed": true, # null: interrupted, not judged
         "goodput": 41.2, "failed_share": 0.0,   # good requests/s; failed / all requests
         "slos": [{"slo": "ttft:p95:500ms", "value_ms": 212.0, "passed": true}, ...]},
        ...],
      "capacity": 8,                             # null when no level held every SLO
      "capacity_slug": "c8",
      "capacity_goodput": 41.2,
      "bracket": {"highest_pass": 8,             # the highest level that held, below
                  "lowest_fail": 9},             # the lowest that did not (null: none)
      "bracketed": true,                         # both ends measured: the knee is inside
      "relative_width": 0.125,                   # (lowest_fail - highest_pass) / highest_pass
      "target_width": 0.1,                       # the search stops at this width (or 1 stream)
      "stopped": "narrow",                       # why it ended: capacity.STOPS
      "complete": true                           # false: interrupted ("interrupted") or
    }                                            # killed ("running"): the capacity so far
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from modal_llm_serving.errors import UsageError

__all__ = ["METRICS", "PERCENTILES", "Objective", "Slo", "judge", "parse_slo", "parse_slos",
           "require_percentiles"]

METRICS = ("ttft", "tpot", "e2el")
PERCENTILES = (50, 90, 95, 99)  # the ones a level's summary keeps (p50_ttft_ms, ...)
_LIMIT = re.compile(r"(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>ms|s)?")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One SLO: `metric`'s `percentile` within `limit_ms` (percentile None: goodput only)."""

    metric: str
    limit_ms: float
    percentile: int | None = None

    def __str__(self) -> str:
        """The canonical text: ttft:p95:500ms (or vLLM's ttft:500)."""
        limit = f"{self.limit_ms:g}"
        if self.percentile is None:
            return f"{self.metric}:{limit}"
        return f"{self.metric}:p{self.percentile}:{limit}ms"


@dataclasses.dataclass(frozen=True)
class Slo:
    """Service-level objectives in ms; a request is good iff it succeeded and met every one."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    # the percentile each metric is judged at per level, ("ttft", 95), ...; a metric given in
    # vLLM's METRIC:MS form has none (goodput only)
    percentiles: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, float]:
        return {key: value for key, value in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms),
                                              ("e2el", self.e2el_ms)) if value is not None}

    def met(self, ttft: float, tpot: float, e2el: float) -> bool:
        return ((self.ttft_ms is None or ttft <= self.ttft_ms)
                and (self.tpot_ms is None or tpot <= self.tpot_ms)
                and (self.e2el_ms is None or e2el <= self.e2el_ms))

    def objectives(self) -> list[Objective]:
        """Each SLO as given, in METRICS order."""
        percentiles = dict(self.percentiles)
        return [Objective(metric, limit, percentiles.get(metric))
                for metric, limit in self.as_dict().items()]


def parse_slo(text: str) -> Objective:
    """`ttft:p95:500ms`, `e2el:p99:10s` or vLLM's `ttft:500` (ms) as an Objective; anything
    else is a one-line UsageError saying how to write it."""
    parts = [part.strip().lower() for part in text.split(":")]
    metric, percentile, limit = parts[0], None, math.nan
    if len(parts) in (2, 3) and metric in METRICS:
        if len(parts) == 3:
            percentile = _percentile(parts[1])
        limit = _limit_ms(parts[-1])
    if metric not in METRICS or not limit > 0 or math.isinf(limit) or (
            len(parts) == 3 and percentile is None):
        raise UsageError(
            f"--slo {text!r}: write METRIC:PERCENTILE:LIMIT, e.g. ttft:p95:500ms (METRIC "
            f"{', '.join(METRICS)}; PERCENTILE {', '.join(f'p{p}' for p in PERCENTILES)}; "
            "LIMIT > 0 in ms or s), or vLLM's METRIC:MS, e.g. ttft:500")
    return Objective(metric, limit, percentile)


def _percentile(text: str) -> int | None:
    number = text.removeprefix("p")
    return int(number) if text.startswith("p") and number in {str(p) for p in PERCENTILES} \
        else None


def _limit_ms(text: str) -> float:
    match = _LIMIT.fullmatch(text)
    if match is None:
        return math.nan
    value = float(match["number"])
    return value * 1000 if match["unit"] == "s" else value


def parse_slos(values: tuple[str, ...] | list[str]) -> Slo | None:
    """Every `--slo` given as one Slo (None when none is); a metric given twice is refused."""
    objectives = [parse_slo(value) for value in values]
    metrics = [objective.metric for objective in objectives]
    for metric in METRICS:
        if metrics.count(metric) > 1:
            raise UsageError(f"--slo gives {metric} twice; give each metric once")
    if not objectives:
        return None
    by_metric = {objective.metric: objective for objective in objectives}

    def limit(metric: str) -> float | None:
        return by_metric[metric].limit_ms if metric in by_metric else None

    return Slo(ttft_ms=limit("ttft"), tpot_ms=limit("tpot"), e2el_ms=limit("e2el"),
               percentiles=tuple((metric, objective.percentile) for metric in METRICS
                                 if (objective := by_metric.get(metric)) is not None
                                 and objective.percentile is not None))


def require_percentiles(slo: Slo | None, who: str) -> Slo:
    """`slo` when it has SLOs and each has a percentile (what `who` judges a level at), else a
    one-line UsageError saying how to write them."""
    objectives = slo.objectives() if slo else []
    if slo is None or not objectives:
        raise UsageError(f"{who} judges each level by SLOs: add one or more, e.g. "
                         "--slo ttft:p95:500ms --slo tpot:p50:50ms")
    if bare := [str(o) for o in objectives if o.percentile is None]:
        raise UsageError(f"--slo {bare[0]} has no percentile, and {who} judges each level at "
                         f"one: write it as e.g. {bare[0].partition(':')[0]}:p95:"
                         f"{bare[0].partition(':')[2]}ms")
    return slo


def judge(slo: Slo, summary: dict[str, Any]) -> dict[str, Any]:
    """Whether a level (its summary.json content) held every SLO that has a percentile:
    `passed`, its `goodput` and `failed_share`, and each SLO's value and verdict."""
    completed, failed = summary["completed"], summary["failed"]
    failed_share = failed / (completed + failed) if completed + failed else 1.0
    verdicts = []
    for objective in slo.objectives():
        if objective.percentile is None:
            continue
        value = summary.get(f"p{objective.percentile}_{objective.metric}_ms")
        if value is None and completed:
            value = 0.0  # no values where requests succeeded: one-token outputs have no TPOT
        passed = (completed > 0 and value is not None and value <= objective.limit_ms
                  and failed_share <= 1 - objective.percentile / 100)
        verdicts.append({"slo": str(objective), "value_ms": value, "passed": passed})
    # the level's goodput counts requests good by the run's own --slo: this SLO's only when
    # they are the same (a search's are); else it is not known (None)
    goodput = summary.get("request_goodput") if summary.get("goodput_config") == slo.as_dict() \
        else None
    return {"passed": bool(verdicts) and all(v["passed"] for v in verdicts),
            "goodput": goodput, "failed_share": failed_share,
            "slos": verdicts}
