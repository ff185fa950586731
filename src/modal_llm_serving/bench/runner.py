"""Load generation: closed loop (fixed concurrency) or open loop (request rate), one asyncio loop.

Closed loop: `concurrency` workers, each sends its next request when its last one ends; reports
achieved concurrency. Open loop: send times are fixed in advance from the arrival process
(constant, Poisson, or gamma with a burstiness factor, as `vllm bench serve`), so latency is also
reported from the schedule (coordinated-omission corrected) together with the dispatch lag; an
optional `max_concurrency` caps requests in flight (waiting for a slot counts as dispatch lag).

Multi-turn sessions: a conversation's turns go out one after another, each carrying the previous
turns (so the server can reuse the prefix) and one session header per conversation, for sticky
routing. Shared-prefix prompts send their system prompt first in every turn of a conversation.
Trace replay (trace.py) is an open loop whose schedule is the trace's sessions' first timestamps
(scaled by the level's speed); a session's later turns go out at their own timestamps or when the
turn before them has ended, whichever is later.
Bounds: a number of requests and/or a duration (no new request starts after it).
Each finished record goes straight to the sink (JSONL), so an interrupted run keeps them.

One loop runs one part of a load (`options.part`, see partition.py): the whole load, or one
worker process's share of it when `bench/shards.py` splits a level over several processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from modal_llm_serving.bench.data import Prompt
from modal_llm_serving.bench.health import HealthMonitor, judge
from modal_llm_serving.bench.metrics import Accumulator
from modal_llm_serving.bench.options import RETRY_STATUSES, BenchOptions, Level
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.stream import RequestSpec, RetryPolicy, send_streaming
from modal_llm_serving.bench.summary import LevelRun, LevelSummary
from modal_llm_serving.bench.trace import trace_sessions
from modal_llm_serving.bench.transport import Transport, make_transport
from modal_llm_serving.errors import MlsError
from modal_llm_serving.stopping import run_stoppable

__all__ = ["LoadRun", "Progress", "arrivals", "run_event_loop", "run_load", "start_instant_ns",
           "summarize"]

UNCAPPED_POOL = 100_000  # "no limit" for an open loop without --max-concurrency


@dataclasses.dataclass
class Progress:
    """A snapshot for the live display."""

    elapsed_s: float
    sent: int
    done: int
    failed: int
    in_flight: int
    output_tokens: int
    target: int | None
    duration_s: float | None

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


class LoadRun:
    """One part of one load level on this event loop (`run()` drives it to its bounds)."""

    def __init__(self, options: BenchOptions, level: Level, prompts: list[Prompt],
                 sink: Callable[[RequestRecord], None],
                 progress: Callable[[Progress], None] | None) -> None:
        self.options = options
        self.level = level
        self.prompts = prompts
        self.sink = sink
        self.progress = progress
        self.sent = self.done = self.failed = self.out_tokens = 0
        self.in_flight = 0
        self.t0_ns = 0
        self.deadline_ns: int | None = None
        self.part = options.share(level)
        self.indices = self.part.indices()
        self.run_id = uuid.uuid4().hex[:8]  # session ids: run id + first index (unique in parts)
        self.chat = options.endpoint == "chat"
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self.url = options.base_url + path
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                        **options.request_headers()}
        self.transport: Transport | None = None
        self.retry = RetryPolicy(statuses=frozenset(RETRY_STATUSES),
                                 max_retries=options.retries)
        self.task: asyncio.Task[Any] | None = None  # the task driving run(), to end it early
        self.failure: Exception | None = None  # why it ended early

    # --- budget -------------------------------------------------------------------------------
    def take_slot(self) -> int | None:
        """The next request's index, or None once the request or time budget is spent."""
        if self.deadline_ns is not None and time.perf_counter_ns() >= self.deadline_ns:
            return None
        index = next(self.indices, None)
        if index is not None:
            self.sent += 1
        return index

    # --- one conversation ---------------------------------------------------------------------
    async def conversation(self, first_index: int, *, scheduled_ns: int | None) -> None:
        options = self.options
        session_id = f"{self.run_id}-{first_index}" if options.turns > 1 else None
        history: list[dict[str, str]] = []
        index: int | None = first_index
        prefix = None
        for turn in range(options.turns):
            if index is None:
                return
            prompt = self.prompts[index % len(self.prompts)]  # any part: the same prompt
            if turn == 0:
                prefix = prompt.prefix  # the conversation keeps its first system prompt
            text = await self.request(index, prompt, history, prefix=prefix,
                                      session_id=session_id, turn=turn,
                                      scheduled_ns=scheduled_ns if turn == 0 else None)
            if text is None:
                return  # a failed turn ends the conversation: later turns would lack context
            if turn + 1 < options.turns:
                history += [{"role": "user", "content": prompt.text},
                            {"role": "assistant", "content": text}]
                index = self.take_slot()

    async def trace_session(self, first_index: int, session: range, *,
                            scheduled_ns: int) -> None:
        """One session of a trace: its turns in order, each at its own time (scaled) or when
        the one before it has ended, whichever is later; each carries the turns before it."""
        session_id = f"{self.run_id}-{first_index}" if len(session) > 1 else None
        history: list[dict[str, str]] = []
        index: int | None = first_index
        for turn, position in enumerate(session):
            prompt = self.prompts[position]
            if turn:
                if (index := self.take_slot()) is None:
                    return
                due_ns = max(self.t0_ns + int((prompt.at_s or 0) / self.level.value * 1e9),
                             time.perf_counter_ns())
                await _sleep_until(due_ns)
                scheduled_ns = due_ns - self.t0_ns
            assert index is not None
            text = await self.request(index, prompt, history, prefix=None, session_id=session_id,
                                      turn=turn, scheduled_ns=scheduled_ns)
            if text is None:
                return  # as in a conversation: later turns would lack their context
            history += [{"role": "user", "content": prompt.text},
                        {"role": "assistant", "content": text}]

    async def request(self, index: int, prompt: Prompt, history: list[dict[str, str]], *,
                      prefix: str | None, session_id: str | None, turn: int,
                      scheduled_ns: int | None) -> str | None:
        options = self.options
        body: dict[str, Any] = {"model": options.model, "stream": True,
                                "max_tokens": prompt.output_len,
                                "stream_options": {"include_usage": True}}
        if self.chat:
            messages = list(prompt.messages) if prompt.messages else [
                {"role": "user", "content": prompt.text}]
            system = [{"role": "system", "content": prefix}] if prefix is not None else []
            body["messages"] = system + history + messages
        else:
            body["prompt"] = (prefix + "\n" if prefix is not None else "") + "".join(
                m["content"] + "\n" for m in history) + prompt.text
        if options.ignore_eos:
            body["ignore_eos"] = True
        if options.min_tokens:
            body["min_tokens"] = prompt.output_len
        headers = self.headers
        if session_id is not None:
            headers = {**headers, options.session_header: session_id}
        spec = RequestSpec(url=self.url, body=json.dumps(body).encode(), headers=headers,
                           chat=self.chat)
        record = RequestRecord(index=index, input_len=prompt.input_len,
                               max_tokens=prompt.output_len, scheduled_ns=scheduled_ns,
                               session_id=session_id, turn=turn)
        self.in_flight += 1
        try:
            assert self.transport is not None
            text = await send_streaming(self.transport, spec, record, t0_ns=self.t0_ns,
                                        retry=self.retry)
        except asyncio.CancelledError:
            record.error, record.error_detail = "cancelled", "the run ended before this request"
            record.end_ns = time.perf_counter_ns() - self.t0_ns
            self.finish(record)
            raise
        finally:
            self.in_flight -= 1
        self.finish(record)
        return text if record.ok else None

    def finish(self, record: RequestRecord) -> None:
        self.done += 1
        if record.ok:
            self.out_tokens += record.n_out or 0
        else:
            self.failed += 1
        try:
            self.sink(record)
        except MlsError as exc:  # results cannot be kept (disk full): end the run, say why
            if self.failure is None:
                self.failure = exc
                if self.task is not None:
                    self.task.cancel()

    # --- load patterns ------------------------------------------------------------------------
    async def closed_loop(self) -> None:
        async def worker() -> None:
            while (index := self.take_slot()) is not None:
                await self.conversation(index, scheduled_ns=None)

        assert self.part.concurrency is not None
        await asyncio.gather(*(worker() for _ in range(self.part.concurrency)))

    async def open_loop(self) -> None:
        options = self.options
        rate = self.level.rate if self.level.rate is not None else math.inf
        # the whole load's schedule, of which this part takes every n-th arrival
        sessions = trace_sessions(self.prompts) if self.level.kind == "trace" else []
        times = (iter([(self.prompts[session.start].at_s or 0) / self.level.value
                       for session in sessions]) if sessions else
                 arrivals(rate=rate, arrival=options.arrival, burstiness=options.burstiness,
                          seed=options.seed))
        cap = self.part.max_concurrency
        gate = asyncio.Semaphore(cap) if cap else None
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        for position, offset in self.part.positions(times):
            when_ns = self.t0_ns + int(offset * 1e9)
            budget = self.part.budget
            if (self.deadline_ns is not None and when_ns >= self.deadline_ns) or (
                    budget is not None and self.sent >= budget):
                break  # scheduled after the end, or nothing left to send: no need to wait
            await _sleep_until(when_ns)
            if gate is not None:
                await gate.acquire()
            index = self.take_slot()
            if index is None:
                if gate is not None:
                    gate.release()
                break
            task = loop.create_task(self._gated(index, int(offset * 1e9), gate,
                                                sessions[position] if sessions else None))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _gated(self, index: int, scheduled_ns: int, gate: asyncio.Semaphore | None,
                     session: range | None) -> None:
        try:
            if session is not None:
                await self.trace_session(index, session, scheduled_ns=scheduled_ns)
            else:
                await self.conversation(index, scheduled_ns=scheduled_ns)
        finally:
            if gate is not None:
                gate.release()

    async def report_progress(self) -> None:
        assert self.progress is not None
        while True:
            await asyncio.sleep(0.5)
            self.progress(self.snapshot())

    def snapshot(self) -> Progress:
        return Progress(elapsed_s=(time.perf_counter_ns() - self.t0_ns) / 1e9, sent=self.sent,
                        done=self.done, failed=self.failed, in_flight=self.in_flight,
                        output_tokens=self.out_tokens, target=self.options.num_requests,
                        duration_s=self.options.duration_s)

    async def run(self, *, start: Callable[[], Awaitable[int]] | None = None) -> dict[str, Any]:
        """Drive the load to its bounds; return the harness's health numbers.

        `start`, if given, is awaited once the pool is open and returns the clock's zero (a
        perf_counter_ns() moment): parts in several processes start on one shared instant.
        """
        options = self.options
        # the pool is sized to the load: one connection per request in flight. An uncapped open
        # loop gets no cap here either (a pool limit would queue requests inside their TTFT);
        # it pre-opens a modest number and grows on demand.
        capped = self.part.concurrency or self.part.max_concurrency
        pool = capped or UNCAPPED_POOL
        monitor = HealthMonitor()
        self.task = asyncio.current_task()
        async with make_transport(options.transport, pool=pool, timeout_s=options.timeout_s,
                                  stall_timeout_s=options.stall_timeout_s) as transport:
            self.transport = transport
            if options.prewarm and hasattr(transport, "prewarm"):
                await transport.prewarm(self.url, min(capped or 64, 1024))
            if start is not None:
                self.t0_ns = await start()
            else:
                self.t0_ns = start_instant_ns(options) or time.perf_counter_ns()
            # a part that opened its pool after the shared start began late: say by how much
            start_late_ms = max(0.0, (time.perf_counter_ns() - self.t0_ns) / 1e6)
            await _sleep_until(self.t0_ns)
            if options.duration_s is not None:
                self.deadline_ns = self.t0_ns + int(options.duration_s * 1e9)
            monitor.start()
            reporter = (asyncio.get_running_loop().create_task(self.report_progress())
                        if self.progress else None)
            try:
                closed = self.level.kind == "concurrency"
                await (self.closed_loop() if closed else self.open_loop())
            except asyncio.CancelledError:
                if self.failure is None:
                    raise
            finally:
                await monitor.stop()
                if reporter is not None:
                    reporter.cancel()
            if self.progress is not None:
                self.progress(self.snapshot())
        if self.failure is not None:
            raise self.failure
        return {**monitor.result(), "start_late_ms": start_late_ms}


def summarize(options: BenchOptions, level: Level, accumulator: Accumulator,
              harness: dict[str, Any], *, t0_ns: int | None, sent: int) -> LevelSummary:
    """A level's summary: the accumulated records, plus the harness's health and warnings."""
    measured = accumulator.summary(warmup_s=options.warmup_s, cooldown_s=options.cooldown_s,
                                   slo=options.slo)
    harness = {**harness, "warnings": judge(harness, measured)}
    run = LevelRun(options=options, level=level, num_prompts=sent,
                   workers=options.workers or 1, t0_perf_counter_ns=t0_ns)
    return LevelSummary(measured=measured, harness=harness, label=level.label(options.arrival),
                        run=run)


def start_instant_ns(options: BenchOptions) -> int | None:
    """`options.start_at_unix` on this machine's monotonic clock (None when not set).

    Parts on different machines cannot share a monotonic clock; they share a wall-clock moment
    instead (NTP keeps machines within milliseconds), and each stamps on its own clock from it.
    """
    if options.start_at_unix is None:
        return None
    return time.perf_counter_ns() + int((options.start_at_unix - time.time()) * 1e9)


def run_event_loop(coroutine: Any) -> Any:
    """Run `coroutine` on its own event loop (uvloop when installed); SIGTERM and SIGHUP
    cancel it as Ctrl-C does (see stopping.py), so what finished is kept."""
    return run_stoppable(coroutine)


async def _sleep_until(when_ns: int) -> None:
    """Sleep until perf_counter_ns() reaches `when_ns`, never waking early.

    The event loop's clock will not do: uvloop's `loop.time()` is cached per loop iteration at
    millisecond resolution and its timers may fire up to 1 ms early, so requests went out before
    their scheduled time. The last 2 ms yield with sleep(0) (which also lets already-dispatched
    sends run when behind schedule).
    """
    while True:
        remaining = (when_ns - time.perf_counter_ns()) / 1e9
        if remaining <= 0:
            await asyncio.sleep(0)
            return
        await asyncio.sleep(remaining if remaining > 0.002 else 0)


def arrivals(*, rate: float, arrival: str, burstiness: float, seed: int) -> Iterator[float]:
    """The open loop's send offsets (s from the start), without end: constant, Poisson or gamma
    gaps at `rate` requests/s; an infinite rate sends everything at 0."""
    rng = random.Random(seed)
    now = 0.0
    while True:
        yield now
        if math.isinf(rate):
            continue
        if arrival == "constant":
            now += 1 / rate
        elif arrival == "poisson":
            now += rng.expovariate(rate)
        else:
            now += rng.gammavariate(burstiness, 1 / (rate * burstiness))


async def run_load(options: BenchOptions, level: Level, prompts: list[Prompt], *,
                   sink: Callable[[RequestRecord], None],
                   progress: Callable[[Progress], None] | None = None) -> LevelSummary:
    """Run one load level to its bounds on this event loop; each finished record goes to
    `sink`; return the summary."""
    accumulator = Accumulator()

    def keep(record: RequestRecord) -> None:
        sink(record)
        accumulator.add(record)

    run = LoadRun(options, level, prompts, keep, progress)
    harness = await run.run()
    return summarize(options, level, accumulator, harness, t0_ns=run.t0_ns, sent=run.sent)
