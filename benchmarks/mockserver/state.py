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
BLOCK = 16  # tokens per prefix-cache block, as vLLM's default block size
CACHE_BLOCKS = 100_000  # the prefix cache's size; full, it is emptied (a known truth, not LRU)


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
        # what GET /metrics tells, in vLLM's names: streams being written (each holds one of
        # the --knee slots), streams queued for one, and a prefix cache whose truth is exact
        # (whole blocks of a prompt's tokens seen before, from its start)
        self.running = 0
        self.cache: set[int] = set()
        self.prefix_queries = self.prefix_hits = 0

    def cached_tokens(self, tokens: list[int]) -> int:
        """Tokens of `tokens` the prefix cache holds (its leading whole blocks seen before, as
        vLLM's hash chain of blocks), counted in the /metrics counters; then cache its blocks."""
        if len(self.cache) > CACHE_BLOCKS:
            self.cache.clear()
        key, hits, hitting = 0, 0, True
        for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
            key = hash((key, *tokens[start:start + BLOCK]))
            hitting = hitting and key in self.cache
            hits += BLOCK if hitting else 0
            self.cache.add(key)
        self.prefix_queries += len(tokens)
        self.prefix_hits += hits
        return hits

    def metrics(self) -> bytes:
        """GET /metrics: Prometheus text in vLLM 0.32's names (bench/engine.py reads them)."""
        label = f'{{engine="0",model_name="{self.settings.model}"}}'
        lines = []
        for name, kind, value in (
                ("vllm:num_requests_running", "gauge", self.running),
                ("vllm:num_requests_waiting", "gauge",
                 len(self.slots.waiting) if self.slots else 0),
                ("vllm:kv_cache_usage_perc", "gauge", len(self.cache) / CACHE_BLOCKS),
                ("vllm:prefix_cache_queries_total", "counter", self.prefix_queries),
                ("vllm:prefix_cache_hits_total", "counter", self.prefix_hits),
                ("vllm:num_preemptions_total", "counter", 0)):
            lines += [f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
        return ("\n".join(lines) + "\n").encode()

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

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int | None]:
        """Hold one of the `--knee` slots for the block (no limit without it); yields when a
        request that queued got its slot (perf_counter_ns), None when it did not wait: its
        schedule (TTFT, then a token per ITL) starts then, so the wait adds to its TTFT."""
        if self.slots is None:
            yield None
            return
        async with self.slots.held() as waited:
            yield time.perf_counter_ns() if waited else None

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
