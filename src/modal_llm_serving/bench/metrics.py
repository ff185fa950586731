"""Summary statistics of a run, computed from per-request records (FACTS.md's definitions).

Percentiles use linear interpolation between closest ranks (numpy's default, as `vllm bench
serve`); `std` is the population standard deviation (also as vLLM). Every statistic carries n.
The accumulator keeps only compact float arrays (8 bytes a value), never the records themselves:
those go to the JSONL as they finish.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from modal_llm_serving.bench.records import NS_PER_MS, RequestRecord

__all__ = ["FORMULAS", "PERCENTILES", "Accumulator", "Slo", "percentile", "stats"]

PERCENTILES = (50, 90, 95, 99)

# Printed beside every number in reports: peers disagree on names (vLLM's TPOT is AIPerf's ITL).
FORMULAS = {
    "ttft": "TTFT = first token-bearing event − send",
    "tpot": "TPOT = (t_last − t_first) / (N_out − tokens in first event)",
    "itl": "ITL = gap between successive token-bearing events",
    "e2el": "E2EL = last token event − send",
    "sched_ttft": "TTFT from schedule = first token-bearing event − scheduled send "
                  "(coordinated-omission corrected)",
    "sched_e2el": "E2EL from schedule = last token event − scheduled send",
    "dispatch_lag": "dispatch lag = send − scheduled send",
    "output_throughput": "output tok/s = Σ usage.completion_tokens / duration",
    "total_token_throughput": "total tok/s = Σ (prompt + completion tokens) / duration",
    "request_throughput": "req/s = completed / duration",
    "request_goodput": "goodput = requests that succeeded and met every SLO / duration",
    "slo_attainment": "SLO attainment = good requests / all requests (errors are misses)",
    "achieved_concurrency": "achieved concurrency = Σ (end − send) / duration",
    "duration": "duration = last end − first send, over requests in the window",
}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy 'linear'); values must be sorted."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean, median, std (population), min, max and the standard percentiles."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None,
                **{f"p{p}": None for p in PERCENTILES}}
    mean = math.fsum(ordered) / n
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in ordered) / n)
    return {"n": n, "mean": mean, "median": percentile(ordered, 50), "std": std,
            "min": ordered[0], "max": ordered[-1],
            **{f"p{p}": percentile(ordered, p) for p in PERCENTILES}}


@dataclasses.dataclass(frozen=True)
class Slo:
    """Service-level objectives in ms; a request is good iff it succeeded and met every one."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {key: value for key, value in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms),
                                              ("e2el", self.e2el_ms)) if value is not None}

    def met(self, ttft: float, tpot: float, e2el: float) -> bool:
        return ((self.ttft_ms is None or ttft <= self.ttft_ms)
                and (self.tpot_ms is None or tpot <= self.tpot_ms)
                and (self.e2el_ms is None or e2el <= self.e2el_ms))


_FIELDS = ("sent", "end", "ok", "ttft", "tpot", "e2el", "sched_ttft", "sched_e2el", "lag",
           "n_out", "n_in", "itl_start", "itl_count", "tpot_missing")


class Accumulator:
    """Takes finished records one by one; `summary()` applies the window and computes."""

    def __init__(self) -> None:
        self._columns: dict[str, array[float]] = {name: array("d") for name in _FIELDS}
        self._itl = array("d")
        self._errors: list[tuple[int, str]] = []  # (row, kind); errors are few
        self._error_details: dict[str, str] = {}
        self._n_out_from_events = 0
        self.count = 0

    def add(self, record: RequestRecord) -> None:
        nan = math.nan
        columns = self._columns
        ok = record.ok
        values = {
            "sent": record.sent_ns / NS_PER_MS, "end": record.end_ns / NS_PER_MS,
            "ok": 1.0 if ok else 0.0,
            "ttft": _or_nan(record.ttft_ms), "tpot": _or_nan(record.tpot_ms),
            "e2el": _or_nan(record.e2el_ms), "sched_ttft": _or_nan(record.sched_ttft_ms),
            "sched_e2el": _or_nan(record.sched_e2el_ms), "lag": _or_nan(record.dispatch_lag_ms),
            "n_out": float(record.n_out or 0) if ok else 0.0,
            "n_in": float(record.prompt_tokens if record.prompt_tokens is not None
                          else record.input_len),
            "itl_start": float(len(self._itl)), "itl_count": float(len(record.itl_ns) if ok else 0),
            "tpot_missing": 1.0 if ok and record.tpot_ms is None else 0.0,
        }
        for name in _FIELDS:
            columns[name].append(values.get(name, nan))
        if ok:
            self._itl.extend(gap / NS_PER_MS for gap in record.itl_ns)
            if record.completion_tokens is None:
                self._n_out_from_events += 1
        else:
            kind = record.error or "unknown"
            self._errors.append((self.count, kind))
            self._error_details.setdefault(kind, record.error_detail or "")
        self.count += 1

    def summary(self, *, warmup_s: float = 0.0, cooldown_s: float = 0.0,
                slo: Slo | None = None) -> dict[str, Any]:
        """vLLM-compatible keys where the meaning is the same; ours otherwise."""
        c = self._columns
        rows = range(self.count)
        first_sent = min(c["sent"], default=0.0)
        last_end = max(c["end"], default=0.0)
        window_start = first_sent + warmup_s * 1000
        window_end = last_end - cooldown_s * 1000
        inside = [i for i in rows if c["sent"][i] >= window_start and c["end"][i] <= window_end]
        good_rows = [i for i in inside if c["ok"][i]]
        duration_ms = (max((c["end"][i] for i in inside), default=0.0)
                       - min((c["sent"][i] for i in inside), default=0.0))
        duration = duration_ms / 1000
        out_tokens = sum(int(c["n_out"][i]) for i in good_rows)
        in_tokens = sum(int(c["n_in"][i]) for i in good_rows)
        itls = [self._itl[j] for i in good_rows
                for j in range(int(c["itl_start"][i]), int(c["itl_start"][i] + c["itl_count"][i]))]
        inside_set = set(inside)
        errors = Counter(kind for row, kind in self._errors if row in inside_set)
        per = (lambda x: x / duration) if duration > 0 else (lambda _x: 0.0)
        result: dict[str, Any] = {
            "duration": duration,
            "completed": len(good_rows),
            "failed": len(inside) - len(good_rows),
            "total_input_tokens": in_tokens,
            "total_output_tokens": out_tokens,
            "request_throughput": per(len(good_rows)),
            "output_throughput": per(out_tokens),
            "total_token_throughput": per(in_tokens + out_tokens),
        }
        for name in ("ttft", "tpot", "itl", "e2el", "sched_ttft", "sched_e2el", "lag"):
            source = itls if name == "itl" else [c[name][i] for i in good_rows]
            if name == "lag":
                source = [c["lag"][i] for i in inside]
            values = [value for value in source if not math.isnan(value)]
            if name.startswith(("sched", "lag")) and not values:
                continue
            key = "dispatch_lag" if name == "lag" else name
            summary = stats(values)
            result[f"n_{key}"] = summary["n"]
            for stat in ("mean", "median", "std", "min", "max", *(f"p{p}" for p in PERCENTILES)):
                result[f"{stat}_{key}_ms"] = summary[stat]
        busy_ms = sum(c["end"][i] - c["sent"][i] for i in inside)
        result["achieved_concurrency"] = busy_ms / duration_ms if duration_ms > 0 else 0.0
        result["error_counts"] = dict(errors.most_common())
        result["error_examples"] = {kind: self._error_details.get(kind, "") for kind in errors}
        result["requests_total"] = self.count
        result["excluded_by_window"] = self.count - len(inside)
        result["window_ms"] = [window_start, window_end]
        result["n_out_source"] = ("usage.completion_tokens" if not self._n_out_from_events else
                                  f"usage.completion_tokens; token events for "
                                  f"{self._n_out_from_events} request(s) without usage")
        result["tpot_undefined"] = int(sum(c["tpot_missing"][i] for i in good_rows))
        if slo is not None and slo.as_dict():
            good = sum(1 for i in good_rows if slo.met(_zero(c["ttft"][i]), _zero(c["tpot"][i]),
                                                        _zero(c["e2el"][i])))
            result["request_goodput"] = per(good)
            result["goodput_config"] = slo.as_dict()
            result["slo_good"] = good
            result["slo_attainment"] = good / len(inside) if inside else 0.0
        else:
            result["request_goodput"] = None
        return result


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _zero(value: float) -> float:
    """vLLM counts an undefined TPOT (one output token) as 0 for goodput; so do we."""
    return 0.0 if math.isnan(value) else value
