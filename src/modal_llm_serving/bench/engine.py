"""The engine's own view of a load level: its Prometheus `/metrics`, scraped while the level runs.

The client sees a request's time to first token; it cannot see where that time went. The engine
can: how many requests it was running and how many it kept waiting, how full its KV cache was,
how many prompt tokens its prefix cache served, whom it preempted, and its own mean queue time
and TTFT (histogram sums over counts). So a `Scraper` reads `GET /metrics` on a thread every
`interval_s` from just before a level starts to just after it ends (counters are read as their
change over the level), with the headers the benchmark sends (the key, the proxy tokens).

An absent endpoint (an error status, a refused connection, an answer that is not Prometheus text
or has no vLLM or SGLang metrics) is noted once, in the summary, and never fails the run; later
failed scrapes are counted. A 401 or 403 is told with its likely cause: the skill's vLLM recipes
pass /metrics (open in vLLM itself) only to a request that carries the app's key. Each scrape is
one bounded call (`deadline.fetch`: one overall deadline, a bounded body) and its text is read by
the strict parser (prometheus.py).

Where each name is defined (checked against the versions this toolkit pins):
- vLLM 0.32, `vllm/v1/metrics/loggers.py` (`PrometheusStatLogger.__init__`):
  vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc (a fraction,
  0-1; before 0.10 vllm:gpu_cache_usage_perc), the counters vllm:prefix_cache_queries and
  vllm:prefix_cache_hits (tokens; before 0.10 vllm:gpu_prefix_cache_*), vllm:num_preemptions,
  and the histograms vllm:request_queue_time_seconds and vllm:time_to_first_token_seconds.
- SGLang 0.5, `sglang/srt/observability/metrics_collector.py`: sglang:num_running_reqs,
  sglang:num_queue_reqs, sglang:token_usage (a fraction), the counters sglang:prompt_tokens_total
  and sglang:cached_tokens_total (tokens), sglang:num_retracted_requests_total (its preemption),
  and the histograms sglang:queue_time_seconds and sglang:time_to_first_token_seconds.
prometheus_client writes a counter as NAME_total and a histogram as NAME_sum and NAME_count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from modal_llm_serving.bench.prometheus import MAX_BYTES, PrometheusTextError, parse
from modal_llm_serving.deadline import bounded, fetch
from modal_llm_serving.endpoint.wire import one_line
from modal_llm_serving.errors import EndpointError, EndpointTimeout, UntrustedDataError
from modal_llm_serving.files import cannot_write, write_atomic

__all__ = ["QUANTITIES", "Scraper", "Snapshot", "engine_summary", "read_snapshot",
           "write_timeline"]

SCRAPE_TIMEOUT_S = 5.0  # one scrape, whole; a slower one is counted as failed

# key: (the engines' series names, first found wins; how label sets combine)
QUANTITIES: dict[str, tuple[tuple[str, ...], str]] = {
    "running": (("vllm:num_requests_running", "sglang:num_running_reqs"), "sum"),
    "waiting": (("vllm:num_requests_waiting", "sglang:num_queue_reqs"), "sum"),
    # a fraction per engine: the fullest one is the one that preempts
    "kv_cache_usage": (("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                        "sglang:token_usage"), "max"),
    "prefix_cache_queries": (("vllm:prefix_cache_queries_total",
                              "vllm:gpu_prefix_cache_queries_total",
                              "sglang:prompt_tokens_total"), "sum"),
    "prefix_cache_hits": (("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total",
                           "sglang:cached_tokens_total"), "sum"),
    "preemptions": (("vllm:num_preemptions_total", "sglang:num_retracted_requests_total"), "sum"),
    "queue_time_sum": (("vllm:request_queue_time_seconds_sum",
                        "sglang:queue_time_seconds_sum"), "sum"),
    "queue_time_count": (("vllm:request_queue_time_seconds_count",
                          "sglang:queue_time_seconds_count"), "sum"),
    "ttft_sum": (("vllm:time_to_first_token_seconds_sum",
                  "sglang:time_to_first_token_seconds_sum"), "sum"),
    "ttft_count": (("vllm:time_to_first_token_seconds_count",
                    "sglang:time_to_first_token_seconds_count"), "sum"),
}
GAUGES = ("running", "waiting", "kv_cache_usage")
_NAMES = frozenset(name for names, _how in QUANTITIES.values() for name in names)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One scrape: when (perf_counter_ns, the clock the records count from) and what it read."""

    t_ns: int
    source: str  # vllm | sglang
    values: dict[str, float]  # QUANTITIES' keys that the engine reported


def read_snapshot(data: bytes, *, t_ns: int) -> Snapshot:
    """A /metrics answer as a Snapshot; PrometheusTextError if it is not Prometheus text or
    holds none of the metrics above."""
    samples = parse(data, names=_NAMES)
    values: dict[str, float] = {}
    for key, (names, how) in QUANTITIES.items():
        for name in names:
            found = [value for series, _labels, value in samples
                     if series == name and math.isfinite(value)]  # NaN, Inf: not a reading
            if found:
                values[key] = sum(found) if how == "sum" else max(found)
                break
    if not values:
        raise PrometheusTextError("it holds none of vLLM's or SGLang's metrics")
    vllm = any(name.startswith("vllm:") for name, _labels, _value in samples)
    return Snapshot(t_ns=t_ns, source="vllm" if vllm else "sglang", values=values)


class Scraper:
    """Scrapes `base_url`/metrics every `interval_s` on its own thread, between `start()` and
    `stop()` (which takes one last scrape); `snapshots` and `unavailable` say what came."""

    def __init__(self, base_url: str, headers: dict[str, str], *, interval_s: float) -> None:
        self.url = base_url + "/metrics"
        self.interval_s = interval_s
        self.snapshots: list[Snapshot] = []
        self.unavailable: str | None = None  # why no scrape worked (set once, at the first)
        self.failed = 0  # scrapes that failed after one worked
        self._keyed = any(name.lower() == "authorization" for name in headers)
        self._http = bounded(httpx.Client(headers=headers, timeout=SCRAPE_TIMEOUT_S))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mls-metrics", daemon=True)

    def start(self) -> None:
        """The first scrape now, before the level's first request: the baseline the counters'
        change over the level is taken from (on the thread it could land after requests had
        moved them). Then one every `interval_s`, unless that first one failed."""
        self.scrape()
        if self.unavailable is None:
            self._thread.start()

    def stop(self) -> None:
        """End the scraping (after one last scrape) and release the connection."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(SCRAPE_TIMEOUT_S * 2 + 1)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.scrape()
        self.scrape()

    def scrape(self) -> None:
        """One scrape: a snapshot kept, or the failure noted."""
        try:
            response = fetch(self._http, "GET", self.url, seconds=SCRAPE_TIMEOUT_S,
                             max_bytes=MAX_BYTES)
            if response.status_code != 200:
                raise EndpointError(_refusal(response.status_code, keyed=self._keyed))
            snapshot = read_snapshot(response.content, t_ns=time.perf_counter_ns())
        except PrometheusTextError as exc:
            self._failed(f"GET /metrics is not an engine's Prometheus text ({exc})")
        except EndpointTimeout:
            self._failed(f"GET /metrics gave no whole answer within {SCRAPE_TIMEOUT_S:g} s")
        except UntrustedDataError:
            self._failed(f"GET /metrics answered more than {MAX_BYTES} bytes")
        except EndpointError as exc:  # its status
            self._failed(str(exc))
        except httpx.HTTPError as exc:
            self._failed(f"GET /metrics failed ({type(exc).__name__})")
        else:
            self.snapshots.append(snapshot)

    def _failed(self, why: str) -> None:
        if self.snapshots:
            self.failed += 1
        else:
            self.unavailable = one_line(why, 200)


def _refusal(status: int, *, keyed: bool) -> str:
    """Why /metrics answered `status` instead of the engine's text, in a line the user can act on
    (`keyed`: the scrape carried an Authorization header)."""
    said = f"GET /metrics answered {status}"
    if status in (401, 403) and not keyed:
        return f"{said}: a deployed app passes it only with its key; pass --api-key"
    if status in (401, 403):
        return f"{said}: the key was refused; check --api-key against the app's key"
    if status == 404:
        return f"{said}: the endpoint does not serve it"
    return said


def engine_summary(snapshots: list[Snapshot], *, unavailable: str | None = None,
                   failed: int = 0, interval_s: float | None = None) -> dict[str, Any]:
    """A level's engine view: gauges (mean and max) over the scrapes taken while it ran (all but
    the first and last), counters as their change from the first scrape to the last."""
    if not snapshots:
        return {"unavailable": unavailable or "no scrape of GET /metrics"}
    first, last = snapshots[0], snapshots[-1]
    during = snapshots[1:-1]
    out: dict[str, Any] = {"source": first.source, "scrapes": len(snapshots),
                           "failed_scrapes": failed, "interval_s": interval_s}
    for key in GAUGES:
        values = [snap.values[key] for snap in during if key in snap.values]
        out[f"{key}_mean"] = sum(values) / len(values) if values else None
        out[f"{key}_max"] = max(values) if values else None
    change = {key: last.values[key] - first.values[key] for key in QUANTITIES
              if key not in GAUGES and key in first.values and key in last.values
              and last.values[key] >= first.values[key]}  # lower: the engine restarted
    queries, hits = change.get("prefix_cache_queries"), change.get("prefix_cache_hits")
    out.update(prefix_cache_queries=queries, prefix_cache_hits=hits,
               prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
               preemptions=change.get("preemptions"),
               mean_queue_time_ms=_mean_ms(change, "queue_time"),
               mean_ttft_ms=_mean_ms(change, "ttft"))
    return out


def _mean_ms(change: dict[str, float], histogram: str) -> float | None:
    """A histogram's mean over the level (sum over count), in ms; None without observations."""
    count, total = change.get(f"{histogram}_count"), change.get(f"{histogram}_sum")
    return total / count * 1000 if count and total is not None else None


def write_timeline(path: Path, snapshots: list[Snapshot]) -> None:
    """engine_metrics.jsonl: one line per scrape, `t_ns` (perf_counter_ns, as summary.json's
    `t0_perf_counter_ns`), `source` and each value read under QUANTITIES' keys."""
    text = "".join(json.dumps({"t_ns": snapshot.t_ns, "source": snapshot.source,
                               **snapshot.values}) + "\n" for snapshot in snapshots)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise cannot_write(path, exc) from None
