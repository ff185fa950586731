"""The hot path: each stream's schedule of token events, and the one ticker that writes them.

A fault-free stream is a `Plan` in the process's `Ticker`; a stream with faults to inject walks
the same `Plan` from its own task (protocol.py), so lateness and event bytes are made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import Protocol

# the words the mock's tokens spell (state.py tokenizes with the same list)
WORDS = ('alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india',
    'juliet', 'kilo', 'lima', 'mike', 'november', 'oscar', 'papa', 'quebec', 'romeo', 'sierra',
    'tango', 'uniform', 'victor', 'whiskey', 'xray', 'yankee', 'zulu')


class Plan:
    """One stream's schedule, written event by event (by the process's ticker, or by the
    stream's own task when it has faults to inject)."""

    def __init__(self, protocol: Protocol, *, chat: bool, n: int, chunk: int, received: int,
                 ttft_ns: int, gap_ns: int, prompt_len: int, cached: int = 0,
                 split: bool = False, done_marker: bool = True) -> None:
        self.protocol, self.chat, self.n, self.chunk = protocol, chat, n, chunk
        self.events = (n + chunk - 1) // chunk
        self.received, self.ttft_ns, self.gap_ns, self.prompt_len = received, ttft_ns, gap_ns, \
            prompt_len
        self.split, self.done_marker, self.cached = split, done_marker, cached
        self.index = 0
        self.first_late = self.max_late = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def due(self) -> int:
        return self.received + self.ttft_ns + self.index * self.gap_ns

    def emit(self, now: int) -> bool:
        """Write the next event (`now` is at or after its due time); True while more are due."""
        protocol = self.protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            self.done.set_result(None)
            return False
        late = now - self.due
        self.max_late = max(self.max_late, late)
        if self.index == 0:
            self.first_late = late
            protocol.first_ns = now
        tokens = min(self.chunk, self.n - self.index * self.chunk)
        last = self.index == self.events - 1
        protocol.write(_event(self.chat, self.index, self.chunk, tokens, last), split=self.split)
        self.index += 1
        if last:
            protocol.finish(self.n, self.prompt_len, self.cached, self.first_late, self.max_late,
                            split=self.split, done=self.done_marker)
            self.done.set_result(None)
        return not last


class Ticker:
    """Writes the events of every fault-free stream of this process from one task.

    A task per stream sleeping once per event costs a timer, a future and a task switch for
    every token; at thousands of streams that was most of the mock's CPU. Here the next due event
    of every stream sits in one heap; the ticker writes whatever is due, then sleeps until the
    next one (spinning only its last millisecond, so nothing is written early and little late).
    """

    def __init__(self, errors: list[str]) -> None:
        self._heap: list[tuple[int, int, Plan]] = []
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._added = asyncio.Event()
        self._errors = errors

    def play(self, plan: Plan) -> asyncio.Future[None]:
        self._push(plan)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._stopped)
        self._added.set()
        return plan.done

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A ticker that died is the mock's own failure: recorded, never a client's fate."""
        if not task.cancelled() and task.exception() is not None:
            self._errors.append(f"ticker: {task.exception()!r}")

    def _push(self, plan: Plan) -> None:
        self._count += 1
        heapq.heappush(self._heap, (plan.due, self._count, plan))

    async def _run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                self._added.clear()
                await self._added.wait()
                continue
            now = time.perf_counter_ns()
            while heap and heap[0][0] <= now:
                _due, _, plan = heapq.heappop(heap)
                if plan.emit(now):
                    self._push(plan)
                now = time.perf_counter_ns()
            if heap:
                delay = heap[0][0] - now
                # coarse sleep to a millisecond before; the last millisecond in loop turns
                # (the loop's timers have millisecond resolution and may fire early)
                self._added.clear()
                if delay > 1_500_000:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout((delay - 1_000_000) / 1e9):
                            await self._added.wait()  # a new stream may be due sooner
                else:
                    await asyncio.sleep(0)


@functools.lru_cache(maxsize=4096)
def _event(chat: bool, index: int, chunk: int, tokens: int, last: bool) -> bytes:
    """The bytes of one token event: the same for every stream, so made once (at thousands of
    streams the mock's time goes to writing, not to JSON)."""
    text = " ".join(WORDS[(index * chunk + i) % len(WORDS)] for i in range(tokens)) + " "
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice["finish_reason"] = "length" if last else None
    payload = b"data: " + json.dumps({"object": "chunk", "choices": [choice]}).encode()
    if index == 0 and chat:  # vLLM opens chat streams with a role-only chunk
        role = {"object": "chunk", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        payload = b"data: " + json.dumps(role).encode() + b"\n\n" + payload
    return payload + b"\n\n"
