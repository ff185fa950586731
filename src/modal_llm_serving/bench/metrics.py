"""A level's numbers, computed from its per-request records (FORMULAS defines each).

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

from modal_llm_serving.bench.options import Slo
from modal_llm_serving.bench.records import NS_PER_MS, RequestRecord

__all__ = ["FORMULAS", "Accumulator", "Distribution", "Goodput", "Measured", "percentile",
           "stats"]

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
    "cached_token_share": "cached-token share = Σ usage.prompt_tokens_details.cached_tokens / "
                          "Σ prompt tokens, over the requests whose usage reports it",
}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy 'linear'); values must be sorted."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """n, mean, median, std (population), min, max and the standard percentiles; all but n are
    None when there are no values."""

    n: int
    mean: float | None
    median: float | None
    std: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        ordered = sorted(values)
        n = len(ordered)
        if not n:
            return cls(n=0, mean=None, median=None, std=None, min=None, max=None, p50=None,
                       p90=None, p95=None, p99=None)
        mean = math.fsum(ordered) / n
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in ordered) / n)
        return cls(n=n, mean=mean, median=percentile(ordered, 50), std=std, min=ordered[0],
                   max=ordered[-1], p50=percentile(ordered, 50), p90=percentile(ordered, 90),
                   p95=percentile(ordered, 95), p99=percentile(ordered, 99))


def stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """A Distribution as a plain dict (the cold-start result prints it)."""
    return dataclasses.asdict(Distribution.of(values))


@dataclasses.dataclass(frozen=True)
class Goodput:
    """Requests that succeeded and met every SLO."""

    slo: Slo
    good: int
    per_s: float  # request_goodput
    attainment: float  # good / all requests in the window (errors are misses)


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a level's records say, over the measurement window (FORMULAS defines each)."""

    duration: float  # s
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    # ms: ttft, tpot, itl, e2el; in an open loop also sched_ttft, sched_e2el and dispatch_lag
    latencies: dict[str, Distribution]
    achieved_concurrency: float
    error_counts: dict[str, int]  # most common first
    error_examples: dict[str, str]  # one detail per kind
    requests_total: int  # window or not
    excluded_by_window: int
    window_ms: tuple[float, float]
    n_out_source: str
    tpot_undefined: int  # succeeded with one output token: no TPOT
    goodput: Goodput | None  # None without SLOs
    total_cached_tokens: int | None = None  # None: no request's usage reported it
    cached_token_share: float | None = None


_FIELDS = ("sent", "end", "ok", "ttft", "tpot", "e2el", "sched_ttft", "sched_e2el", "lag",
           "n_out", "n_in", "itl_start", "itl_count", "tpot_missing", "cached")


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
            "cached": float(record.cached_tokens) if record.cached_tokens is not None else nan,
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
                slo: Slo | None = None) -> Measured:
        """The records sent and ended inside the window (warm-up and cool-down cut off)."""
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
        latencies: dict[str, Distribution] = {}
        for name in ("ttft", "tpot", "itl", "e2el", "sched_ttft", "sched_e2el", "lag"):
            source = itls if name == "itl" else [c[name][i] for i in good_rows]
            if name == "lag":
                source = [c["lag"][i] for i in inside]
            values = [value for value in source if not math.isnan(value)]
            if name.startswith(("sched", "lag")) and not values:
                continue  # a closed loop has no schedule
            latencies["dispatch_lag" if name == "lag" else name] = Distribution.of(values)
        goodput = None
        if slo is not None and slo.as_dict():
            good = sum(1 for i in good_rows if slo.met(_zero(c["ttft"][i]), _zero(c["tpot"][i]),
                                                        _zero(c["e2el"][i])))
            goodput = Goodput(slo=slo, good=good, per_s=per(good),
                              attainment=good / len(inside) if inside else 0.0)
        reported = [i for i in good_rows if not math.isnan(c["cached"][i])]
        cached = sum(int(c["cached"][i]) for i in reported)
        prompt_of_reported = sum(c["n_in"][i] for i in reported)
        busy_ms = sum(c["end"][i] - c["sent"][i] for i in inside)
        return Measured(
            duration=duration, completed=len(good_rows), failed=len(inside) - len(good_rows),
            total_input_tokens=in_tokens, total_output_tokens=out_tokens,
            request_throughput=per(len(good_rows)), output_throughput=per(out_tokens),
            total_token_throughput=per(in_tokens + out_tokens), latencies=latencies,
            achieved_concurrency=busy_ms / duration_ms if duration_ms > 0 else 0.0,
            error_counts=dict(errors.most_common()),
            error_examples={kind: self._error_details.get(kind, "") for kind in errors},
            requests_total=self.count, excluded_by_window=self.count - len(inside),
            window_ms=(window_start, window_end),
            n_out_source=("usage.completion_tokens" if not self._n_out_from_events else
                          f"usage.completion_tokens; token events for "
                          f"{self._n_out_from_events} request(s) without usage"),
            tpot_undefined=int(sum(c["tpot_missing"][i] for i in good_rows)),
            goodput=goodput, total_cached_tokens=cached if reported else None,
            cached_token_share=cached / prompt_of_reported if prompt_of_reported else None)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _zero(value: float) -> float:
    """vLLM counts an undefined TPOT (one output token) as 0 for goodput; so do we."""
    return 0.0 if math.isnan(value) else value
