"""Is the client, not the server, the bottleneck? Client CPU, event-loop lag, dispatch lag, memory.

One asyncio loop runs each worker process of the harness: if it is busy, stamps are late and
every latency grows. A monitor task asks to wake every 10 ms; how late it wakes is the loop
lag. The process's CPU time over wall time says how close its loop thread is to a full core.
With several workers, each is judged on its own and warnings name the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.metrics import Distribution, Measured
from modal_llm_serving.local.cpu_info import usable_cores

__all__ = ["HealthMonitor", "judge", "merge"]

# Above these the numbers describe the client more than the server (checked on 2 cores).
CPU_LIMIT = 0.85  # of one core
# 10 ms: on a loaded 2-core box the OS alone gives a quiet loop 3-6 ms p99 lag (measured), while
# TTFT at 128 streams stayed within 2% of truth; at 512 streams lag p99 was ~100 ms
LOOP_LAG_P99_LIMIT_MS = 10.0
DISPATCH_LAG_P99_LIMIT_MS = 5.0
SAMPLE_INTERVAL_S = 0.01  # how often the monitor asks to wake


class HealthMonitor:
    """Samples event-loop lag while running; `result()` adds CPU and peak memory."""

    def __init__(self) -> None:
        self._lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._wall0 = 0.0
        self._cpu0 = 0.0
        self._wall = 0.0
        self._cpu = 0.0

    def start(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        interval = SAMPLE_INTERVAL_S
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            late = time.perf_counter() - before - interval
            self._lags_ms.append(max(0.0, late) * 1000)
            if len(self._lags_ms) > 200_000:  # keep memory flat on very long runs
                del self._lags_ms[::2]

    async def stop(self) -> None:
        self._wall = time.perf_counter() - self._wall0
        self._cpu = time.process_time() - self._cpu0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def result(self) -> dict[str, Any]:
        lag = Distribution.of(self._lags_ms)
        return {
            "client_cpu_fraction_of_one_core": self._cpu / self._wall if self._wall else 0.0,
            "client_cpu_seconds": self._cpu,
            "wall_seconds": self._wall,
            "loop_lag_n": lag.n,
            "loop_lag_p50_ms": lag.p50,
            "loop_lag_p99_ms": lag.p99,
            "loop_lag_max_ms": lag.max,
            "peak_rss_mb": peak_rss_mb(),
        }


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. (`ru_maxrss` does not: it
    keeps the peak of whatever process forked us, e.g. a 400 MB parent.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # macOS reports bytes


MIN_JUDGED_WALL_S = 2.0  # shorter runs are too small to judge the client by


_SHARD_NUMBERS = ("client_cpu_fraction_of_one_core", "client_cpu_seconds", "wall_seconds",
                  "loop_lag_n", "loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms",
                  "peak_rss_mb", "start_late_ms")
START_LATE_LIMIT_MS = 100.0  # a part this late overlaps the others for less of the run


def merge(parts: list[dict[str, Any]], *, parent_rss_mb: float = 0.0,
          kind: str = "worker") -> dict[str, Any]:
    """The health of a load split over worker processes (or containers, `kind`): the busiest
    one's CPU and loop lag (the one whose stamps are worst), the CPU seconds and memory of all,
    and each one's own numbers under "shards"."""
    def most(key: str) -> float:
        return max((part.get(key) or 0.0 for part in parts), default=0.0)

    def total(key: str) -> float:
        return sum(part.get(key) or 0.0 for part in parts)

    return {
        "client_cpu_fraction_of_one_core": most("client_cpu_fraction_of_one_core"),
        "client_cpu_seconds": total("client_cpu_seconds"),
        "wall_seconds": most("wall_seconds"),
        "loop_lag_n": int(total("loop_lag_n")),
        "loop_lag_p50_ms": most("loop_lag_p50_ms"),
        "loop_lag_p99_ms": most("loop_lag_p99_ms"),
        "loop_lag_max_ms": most("loop_lag_max_ms"),
        "start_late_ms": most("start_late_ms"),
        "peak_rss_mb": total("peak_rss_mb") + parent_rss_mb,
        "workers": len(parts),
        "cores": usable_cores(),
        "shards": [{key: part.get(key) for key in _SHARD_NUMBERS} for part in parts],
        "shard_kind": kind,
    }


def judge(harness: dict[str, Any], measured: Measured) -> list[str]:
    """Loud warnings when the client itself limits or distorts the measurement."""
    warnings: list[str] = []
    if (harness.get("wall_seconds") or 0.0) < MIN_JUDGED_WALL_S or not measured.completed:
        # A run of a few requests, or one where nothing succeeded, is mostly start-up and error
        # handling: its CPU share says nothing about whether the client kept up with a load.
        return warnings
    shards = harness.get("shards")
    workers = len(shards) if isinstance(shards, list) else 1
    cores = harness.get("cores") or usable_cores()
    kind = harness.get("shard_kind", "worker")
    if isinstance(shards, list):
        for number, shard in enumerate(shards, 1):
            warnings += _loop_warnings(shard, where=f"{kind} {number} of {workers}: ",
                                       workers=workers if kind == "worker" else cores, cores=cores)
        if kind == "worker" and workers > cores:
            warnings.append(f"CLIENT BOTTLENECK: {workers} workers share {cores} CPU cores; "
                            "their stamps wait for a core. Use --workers "
                            f"{cores} or a machine with more cores.")
    else:
        warnings += _loop_warnings(harness, where="", workers=1, cores=cores)
    lag = measured.latencies.get("dispatch_lag")
    dispatch = lag.p99 if lag is not None else None
    if dispatch is not None and dispatch > DISPATCH_LAG_P99_LIMIT_MS:
        warnings.append(f"CLIENT BOTTLENECK: dispatch lag p99 {dispatch:.1f} ms (limit "
                        f"{DISPATCH_LAG_P99_LIMIT_MS:g} ms): requests left later than scheduled; "
                        "read the TTFT-from-schedule numbers.")
    return warnings


def _loop_warnings(health: dict[str, Any], *, where: str, workers: int,
                   cores: int) -> list[str]:
    """A loop too busy to stamp on time: its CPU share, and how late it wakes."""
    warnings = []
    more = (f"split the streams over more processes (--workers, now {workers}; this machine "
            f"has {cores} cores), " if workers < cores else "")
    cpu = health.get("client_cpu_fraction_of_one_core") or 0.0
    if cpu > CPU_LIMIT:
        warnings.append(f"CLIENT BOTTLENECK: {where}the harness used {cpu:.0%} of a CPU core "
                        f"(limit {CPU_LIMIT:.0%}); latencies include client queueing. Use "
                        f"fewer streams, {more}a bigger client machine, or the in-region Modal "
                        "client.")
    lag = health.get("loop_lag_p99_ms") or 0.0
    if lag > LOOP_LAG_P99_LIMIT_MS:
        warnings.append(f"CLIENT BOTTLENECK: {where}event-loop lag p99 {lag:.1f} ms (limit "
                        f"{LOOP_LAG_P99_LIMIT_MS:g} ms): timestamps may be taken that late.")
    late = health.get("start_late_ms") or 0.0
    if late > START_LATE_LIMIT_MS:
        warnings.append(f"LATE START: {where}started {late:.0f} ms after the shared start (it "
                        "was still starting up); the parts overlapped for less of the run. "
                        "Give the parts more time to start.")
    return warnings
