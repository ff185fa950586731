"""One load level over several worker processes: `mls bench run --workers N`.

One Python process cannot stamp tens of thousands of stream events a second on time: at 512
streams and more its event loop falls behind and every latency it reports grows. So the level's
streams are split (partition.py) over N processes, each with its own event loop and pre-opened
connection pool, and this process only collects:

1. every worker opens its pool, then says it is ready;
2. this process picks one start instant on the monotonic clock (CLOCK_MONOTONIC is one clock for
   every process of a Linux machine) and sends it; every worker starts its part at that instant,
   so all records are stamped on one timeline;
3. workers send their finished records in small batches; this process writes them to the one
   requests.jsonl as they come (an interrupted run keeps them) and summarizes them as one run;
4. Ctrl-C: this process asks every worker to stop; in-flight requests are recorded as
   cancelled, and every finished record of every worker is kept.

Each worker's health (CPU, loop lag, memory) is kept and judged on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.data import Prompt
from modal_llm_serving.bench.health import merge, peak_rss_mb
from modal_llm_serving.bench.metrics import Accumulator
from modal_llm_serving.bench.options import BenchOptions, Level
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.results import JsonlSink, read_records, write_summary
from modal_llm_serving.bench.runner import (
    LoadRun,
    Progress,
    run_event_loop,
    run_load,
    start_instant_ns,
    summarize,
)
from modal_llm_serving.bench.summary import Context, LevelSummary
from modal_llm_serving.errors import BenchWorkerError, MlsError, UsageError
from modal_llm_serving.untrusted import read_json_file

__all__ = ["STREAMS_PER_WORKER", "choose_workers", "merge_parts", "run_level"]

# One process stamps 128 streams of 100 tokens/s within 0.4 ms of the truth (97.5 % of ideal
# throughput, docs/PERFORMANCE.md) and falls behind at 512; so a worker per 128 streams, at most
# one per core.
STREAMS_PER_WORKER = 128
START_MARGIN_NS = 50_000_000  # from "go" to the shared start: time for the message to arrive
READY_TIMEOUT_S = 120.0  # a worker imports the harness and opens its pool in this time
STOP_GRACE_S = 15.0  # after Ctrl-C, workers get this long to record their cancelled requests
BATCH_S = 0.05  # a worker sends its finished records this often
PROGRESS_S = 0.5


def choose_workers(options: BenchOptions, level: Level, *, cores: int) -> int:
    """How many processes run this level: `options.workers` (never more than its streams), or
    one per `STREAMS_PER_WORKER` streams and at most one per core of the `cores` this process
    may use (`local.cpu_info.usable_cores()`, cgroup quota included)."""
    part = options.share(level)  # a container's part of the load is split again
    streams = part.concurrency or part.max_concurrency
    requested = options.workers
    if requested is not None:
        return max(1, min(requested, streams)) if streams else requested
    if not streams:
        return 1  # an uncapped open loop: its streams are unknown in advance (see --workers)
    return max(1, min(cores, math.ceil(streams / STREAMS_PER_WORKER)))


def run_level(options: BenchOptions, level: Level, prompts: list[Prompt], *,
              sink: Callable[[RequestRecord], None],
              progress: Callable[[Progress], None] | None = None) -> LevelSummary:
    """Run one level to its bounds, in this process or split over `options.workers`; return
    its summary. Each finished record goes to `sink` as it arrives."""
    if (options.workers or 1) <= 1:
        return run_event_loop(run_load(options, level, prompts, sink=sink, progress=progress))  # type: ignore[no-any-return]
    return _Coordinator(options, level, prompts, sink, progress).run()


def merge_parts(options: BenchOptions, level: Level, parts: list[Path],
                out: Path) -> LevelSummary:
    """One level's parts run on other machines (one results folder each: the in-region app's
    containers) made one run in `out`: all records in one requests.jsonl, one summary.

    Each part stamped from the same wall-clock start (`options.start_at_unix`) on its own
    monotonic clock, so their stamps share one timeline to within the machines' clock sync
    (milliseconds; a latency is always measured on one machine, only throughput's window
    spans them)."""
    accumulator = Accumulator()
    summaries = [read_json_file(folder / "summary.json") for folder in parts]
    with JsonlSink(out / "requests.jsonl") as sink:
        for folder in parts:
            for data in read_records(folder / "requests.jsonl"):
                record = RequestRecord.from_dict(data)
                sink(record)
                accumulator.add(record)
    # each container judged again from its numbers: its warnings then name the container
    health = merge([part.get("harness", {}) for part in summaries], kind="container")
    health["workers"] = sum(part.get("workers", 1) for part in summaries)
    first = summaries[0]
    # the model a container resolved; the merged run is the whole load, its workers unsaid
    options = dataclasses.replace(options, model=first.get("model_id", options.model),
                                  part=(), workers=None)
    summary = summarize(options, level, accumulator, health, t0_ns=None,
                        sent=sum(part.get("num_prompts", 0) for part in summaries))
    assert summary.run is not None
    client = first.get("client", {})
    summary = dataclasses.replace(
        summary, run=dataclasses.replace(summary.run, workers=health["workers"],
                                         containers=len(parts)),
        context=Context(date=first.get("date", ""), data=first.get("data", {}),
                        python=client.get("python", ""), platform=client.get("platform", "")))
    write_summary(out, summary)
    return summary


# --- this process: start the workers, collect their records -------------------------------------

@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection  # the worker's records and news
    control: multiprocessing.connection.Connection  # "go" and "stop" to the worker
    ready: bool = False
    health: dict[str, Any] | None = None
    counters: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # sent done failed flight tokens


class _Coordinator:
    def __init__(self, options: BenchOptions, level: Level, prompts: list[Prompt],
                 sink: Callable[[RequestRecord], None],
                 progress: Callable[[Progress], None] | None) -> None:
        self.options = options
        self.level = level
        self.prompts = prompts
        self.sink = sink
        self.progress = progress
        self.accumulator = Accumulator()
        self.workers: list[_Worker] = []
        self.t0_ns = 0

    def run(self) -> LevelSummary:
        count = self.options.workers or 1
        # spawn, not fork: the parent may hold threads (a tokenizer's pool) a fork would copy
        context = multiprocessing.get_context("spawn")
        try:
            for k in range(count):
                part = dataclasses.replace(self.options, workers=1,
                                           part=(*self.options.part, (k, count)))
                # two one-way pipes: the worker's event loop watches its control end, which
                # makes that end non-blocking; a send on a non-blocking pipe can stop half-way
                news_in, news_out = context.Pipe(duplex=False)
                control_in, control_out = context.Pipe(duplex=False)
                process = context.Process(target=_worker_main,
                                          args=(news_out, control_in, part, self.level,
                                                self.prompts),
                                          name=f"mls-bench-worker-{k + 1}", daemon=True)
                process.start()
                news_out.close()
                control_in.close()
                self.workers.append(_Worker(process, news_in, control_out))
            self._until(lambda: all(worker.ready for worker in self.workers),
                        timeout_s=READY_TIMEOUT_S, what="open their connections")
            self.t0_ns = (start_instant_ns(self.options)
                          or time.perf_counter_ns() + START_MARGIN_NS)
            for worker in self.workers:
                worker.control.send(("go", self.t0_ns))
            try:
                self._until(lambda: all(w.health is not None for w in self.workers),
                            timeout_s=None, what="finish")
            except (KeyboardInterrupt, MlsError, RuntimeError):
                self._stop()  # the other workers' finished records are kept
                raise
        finally:
            self._close()
        health = merge([worker.health or {} for worker in self.workers],
                       parent_rss_mb=peak_rss_mb())
        sent = sum(worker.counters[0] for worker in self.workers)
        return summarize(self.options, self.level, self.accumulator, health, t0_ns=self.t0_ns,
                         sent=sent)

    def _until(self, done: Callable[[], bool], *, timeout_s: float | None, what: str) -> None:
        """Take the workers' messages until `done()`; a worker that dies is an error."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shown = time.monotonic()
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                raise BenchWorkerError(f"bench workers did not {what} within {timeout_s:g} s "
                                       "(is the machine overloaded?); try fewer --workers")
            waiting = {w.conn: w for w in self.workers if w.health is None}
            for conn in multiprocessing.connection.wait(list(waiting), timeout=PROGRESS_S):
                self._take(waiting[conn])  # type: ignore[index]
            if self.progress is not None and self.t0_ns and \
                    time.monotonic() - shown >= PROGRESS_S:
                shown = time.monotonic()
                self.progress(self._snapshot())
        if self.progress is not None and self.t0_ns:
            self.progress(self._snapshot())

    def _take(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.health = {}  # gone: nothing more to read from it
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            why = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
            raise BenchWorkerError(f"{self._name(worker)} ended without its results (exit code "
                                   f"{code}{why}); the other workers' finished requests are "
                                   "kept") from None
        kind = message[0]
        if kind == "records":
            for record in message[1]:
                self.sink(record)
                self.accumulator.add(record)
        elif kind == "progress":
            worker.counters = message[1]
        elif kind == "ready":
            worker.ready = True
        elif kind == "done":
            worker.counters, worker.health = message[1], message[2]
        elif kind == "failed":
            worker.health = {}
            error_type, text, trace = message[1], message[2], message[3]
            if error_type == "UsageError":
                raise UsageError(text)
            error = RuntimeError(f"{self._name(worker)} failed: {error_type}: {text}")
            error.add_note(f"the worker's traceback:\n{trace}")  # for the internal-error log
            raise error

    def _name(self, worker: _Worker) -> str:
        return f"bench worker {self.workers.index(worker) + 1} of {len(self.workers)}"

    def _snapshot(self) -> Progress:
        sent, done, failed, flight, tokens = (sum(values) for values in zip(
            *(worker.counters for worker in self.workers), strict=True))
        return Progress(elapsed_s=max(0.0, (time.perf_counter_ns() - self.t0_ns) / 1e9),
                        sent=sent, done=done, failed=failed, in_flight=flight,
                        output_tokens=tokens, target=self.options.num_requests,
                        duration_s=self.options.duration_s)

    def _stop(self) -> None:
        """Ctrl-C: every worker cancels its requests; keep all they recorded, then return."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.control.send(("stop",))
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            pending = [w for w in self.workers if w.health is None and w.process.is_alive()]
            if not pending:
                break
            by_conn = {w.conn: w for w in pending}
            for conn in multiprocessing.connection.wait(list(by_conn), timeout=0.2):
                with contextlib.suppress(MlsError, RuntimeError):
                    self._take(by_conn[conn])  # type: ignore[index]

    def _close(self) -> None:
        for worker in self.workers:
            worker.conn.close()
            worker.control.close()
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


# --- a worker process: one part of the load on its own event loop --------------------------------

def _worker_main(conn: multiprocessing.connection.Connection,
                 control: multiprocessing.connection.Connection, options: BenchOptions,
                 level: Level, prompts: list[Prompt]) -> None:
    """A worker's whole life; whatever goes wrong is sent to the parent as one line."""
    # Ctrl-C (and `timeout`'s SIGTERM, a closed terminal's SIGHUP) reach the whole process
    # group: the parent alone decides, and tells us to stop
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    try:
        run_event_loop(_work(conn, control, options, level, prompts))
    except BaseException as exc:  # reported to the parent, which raises it
        with contextlib.suppress(OSError):
            conn.send(("failed", type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        conn.close()
        control.close()


async def _work(conn: multiprocessing.connection.Connection,
                control: multiprocessing.connection.Connection, options: BenchOptions,
                level: Level, prompts: list[Prompt]) -> None:
    loop = asyncio.get_running_loop()
    batch: list[RequestRecord] = []
    run = LoadRun(options, level, prompts, batch.append, progress=None)
    start: asyncio.Future[int] = loop.create_future()
    main = asyncio.current_task()
    assert main is not None

    def on_message() -> None:
        try:
            message = control.recv()
        except (EOFError, OSError):  # the parent is gone: nobody to report to
            loop.remove_reader(control.fileno())
            message = ("stop",)
        if message[0] == "go" and not start.done():
            start.set_result(message[1])
        elif message[0] == "stop":
            main.cancel()

    def counters() -> tuple[int, int, int, int, int]:
        return run.sent, run.done, run.failed, run.in_flight, run.out_tokens

    def send_records() -> None:
        if batch:
            conn.send(("records", batch[:]))
            batch.clear()

    async def ship() -> None:
        shown = time.monotonic()
        while True:
            await asyncio.sleep(BATCH_S)
            send_records()
            if time.monotonic() - shown >= PROGRESS_S:
                shown = time.monotonic()
                conn.send(("progress", counters()))

    async def ready_then_start() -> int:
        conn.send(("ready",))
        return await start

    loop.add_reader(control.fileno(), on_message)
    shipper = loop.create_task(ship())
    health: dict[str, Any] = {}
    try:
        health = await run.run(start=ready_then_start)
    except asyncio.CancelledError:
        pass  # stopped: what finished (and what was cancelled) still goes to the parent
    finally:
        shipper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shipper
        loop.remove_reader(control.fileno())
        send_records()  # also when something failed: the parent keeps what finished
    conn.send(("done", counters(), health))
