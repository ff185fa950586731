"""What one mock process knows: its settings, its counts, its faults, and its own failures."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from .scripted import Scripted
from .ticker import WORDS, Ticker

FAULTS = ("503", "429", "reset", "malformed", "stall", "hang", "nodone", "split")
COMPLETIONS = ("/v1/chat/completions", "/v1/completions")
SEEN = 1000  # the latest completion requests GET /mock/requests shows


class Settings(argparse.Namespace):
    ttft_ms: float
    itl_ms: float
    chunk: int
    model: str
    fault: list[str]
    stall_s: float
    cold_s: float
    proxy_auth: str | None
    knee: int | None
    processes: int
    command: list[str]


class MockState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # the mock's own failures (a bug here, not a fate of the client): /mock/stats shows
        # them, and the tests assert there are none
        self.errors: list[str] = []
        self.ticker = Ticker(self.errors)
        self.count = 0
        self.connections = 0
        # what a test checks of what the client sent: the latest completion requests as read
        self.seen: deque[dict[str, object]] = deque(maxlen=SEEN)
        self.faults: dict[str, int] = {}
        for spec in settings.fault or []:
            kind, _, every = spec.partition("=")
            if kind not in FAULTS or not every.isdigit() or int(every) < 1:
                raise SystemExit(f"--fault {spec!r}: use KIND=N with KIND one of {FAULTS}")
            self.faults[kind] = int(every)
        self.cold_until = time.monotonic() + settings.cold_s
        # what the tests check: per session header, the message count of each turn
        self.sessions: dict[str, list[int]] = {}
        # answers a test scripted (POST /mock/script); None: the mock answers as itself
        self.scripted: Scripted | None = None
        self.slots = Slots(settings.knee) if settings.knee else None

    def remember(self, path: str, headers: dict[str, str], body: bytes, *, received_ns: int,
                 connection: int, connected_ns: int) -> None:
        """Count a completion request and keep it as read (stamps on the client's clock,
        perf_counter_ns: when it was read, and when its connection was opened)."""
        self.count += 1
        self.seen.append({"number": self.count, "path": path, "headers": headers,
                          "body": body.decode("utf-8", "replace"), "received_ns": received_ns,
                          "connection": connection, "connected_ns": connected_ns})

    def fault_for(self, number: int) -> set[str]:
        return {kind for kind, every in self.faults.items() if number % every == 0}

    def stats(self) -> dict[str, object]:
        return {"requests": self.count, "connections": self.connections,
                "sessions": self.sessions, "errors": self.errors}


class Slots:
    """`--knee N`: a server with N slots, as an engine with `--max-num-seqs N` is. A stream holds
    a slot from its first token's wait to its last token; a request that finds all N taken waits,
    first come first served, so its TTFT grows with the queue ahead of it."""

    def __init__(self, count: int) -> None:
        self.free = count
        self.waiting: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """Hold a slot for the block; yields whether the request had to wait for it."""
        waited = False
        if self.free > 0:
            self.free -= 1
        else:
            waited = True
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            try:
                await turn  # a finishing stream hands its slot straight to the first in line
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed the slot just as it was cancelled: pass it on
                else:
                    self.waiting.remove(turn)
                raise
        try:
            yield waited
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


def tokenize(text: str) -> list[int]:
    vocab = {word: i for i, word in enumerate(WORDS)}
    return [vocab.get(word, len(WORDS) + (hash(word) % 1000)) for word in text.split()]
