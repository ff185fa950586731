"""A mock OpenAI-compatible streaming server with a known truth, for calibration and faults ONLY.

It is never a stand-in for an engine: it exists to measure the benchmark client against timings
that are known exactly (TTFT, per-token delay, chunking) and to inject faults on purpose.
Raw asyncio protocol on uvloop, so it costs as little CPU as possible; run it in its own process
(`MockProcess` does) so it does not share the client's event loop or core. `--processes N`
serves one port from N processes (SO_REUSEPORT: the kernel spreads connections over them), so
the mock keeps up with thousands of streams where one event loop could not.

Truth: a request's first token event is written `ttft_ms` after its body is read, then one event
every `itl_ms * chunk` (each carrying `chunk` tokens), on an absolute schedule (no drift).
A busy mock writes late; it says how late, so its lateness is never blamed on the client: the
usage event's `server_timing` carries its stamps (perf_counter_ns, CLOCK_MONOTONIC, the clock the
client stamps with) and `first_late_ns` / `max_late_ns`, how far behind the schedule its first
and its latest event were written.

Faults, `--fault KIND=N` (every Nth request, counted from 1): 503, 429, reset (connection closed
after half the tokens), malformed (a non-JSON event mid-stream), stall (pauses `--stall-s`
mid-stream), hang (reads the request, never answers), nodone (no `data: [DONE]`), split (events
written in 1-7 byte pieces with `: keep-alive` comments between). `--cold-s S`: 503 for S seconds
after start and after POST /mock/scale-to-zero (a scaled-to-zero endpoint).

    python benchmarks/mock_server.py --port 8123 --ttft-ms 50 --itl-ms 10 --processes 4
    python benchmarks/mock_server.py -- mls bench run {url} -c 1,128 -n 256   # mock, run, stop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import heapq
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

WORDS = ('alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india',
    'juliet', 'kilo', 'lima', 'mike', 'november', 'oscar', 'papa', 'quebec', 'romeo', 'sierra',
    'tango', 'uniform', 'victor', 'whiskey', 'xray', 'yankee', 'zulu')
FAULTS = ("503", "429", "reset", "malformed", "stall", "hang", "nodone", "split")


class Settings(argparse.Namespace):
    ttft_ms: float
    itl_ms: float
    chunk: int
    model: str
    fault: list[str]
    stall_s: float
    cold_s: float
    processes: int
    command: list[str]


class MockState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ticker = Ticker()
        self.count = 0
        self.faults: dict[str, int] = {}
        for spec in settings.fault or []:
            kind, _, every = spec.partition("=")
            if kind not in FAULTS or not every.isdigit() or int(every) < 1:
                raise SystemExit(f"--fault {spec!r}: use KIND=N with KIND one of {FAULTS}")
            self.faults[kind] = int(every)
        self.cold_until = time.monotonic() + settings.cold_s
        # what the tests check: per session header, the message count of each turn
        self.sessions: dict[str, list[int]] = {}

    def fault_for(self, number: int) -> set[str]:
        return {kind for kind, every in self.faults.items() if number % every == 0}


def _tokenize(text: str) -> list[int]:
    vocab = {word: i for i, word in enumerate(WORDS)}
    return [vocab.get(word, len(WORDS) + (hash(word) % 1000)) for word in text.split()]


class Protocol(asyncio.Protocol):
    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.received_ns = 0
        self.first_ns = 0
        self.session: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        method, path, _ = [*lines[0].split(" "), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < head_end + 4 + length:
            return
        self.session = headers.get("modal-session-id")
        body = self.buffer[head_end + 4: head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        self.busy = True
        self.received_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC: comparable across processes
        asyncio.get_running_loop().create_task(
            self._serve(method, path, body, self.received_ns))

    async def _serve(self, method: str, path: str, body: bytes, received: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._route(method, path.split("?")[0], body, received)
        self.busy = False
        if self.transport is not None and not self.transport.is_closing() and self.buffer:
            self._next()

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  503: "Service Unavailable"}.get(status, "Error")
        assert self.transport is not None
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    async def _route(self, method: str, path: str, body: bytes, received: int) -> None:
        state = self.state
        if path == "/health":
            return self._send(200, {})
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [
                {"id": state.settings.model, "object": "model"}]})
        if path == "/mock/stats":
            return self._send(200, {"requests": state.count, "sessions": state.sessions})
        if path == "/mock/scale-to-zero":
            state.cold_until = time.monotonic() + state.settings.cold_s
            return self._send(200, {"cold_s": state.settings.cold_s})
        if path in ("/tokenize", "/detokenize"):
            request = json.loads(body or b"{}")
            if path == "/tokenize":
                tokens = _tokenize(request.get("prompt", ""))
                return self._send(200, {"count": len(tokens), "tokens": tokens})
            text = " ".join(WORDS[t % len(WORDS)] for t in request.get("tokens", []))
            return self._send(200, {"prompt": text})
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return self._send(404, {"error": {"message": f"no route {path}"}})
        if time.monotonic() < state.cold_until:
            return self._send(503, {"error": {"message": "scaled to zero; starting"}})
        state.count += 1
        faults = state.fault_for(state.count)
        if "hang" in faults:
            await asyncio.sleep(3600)
            return None
        for status in (503, 429):
            if str(status) in faults:
                return self._send(status, {"error": {"message": f"injected {status}"}})
        try:
            request = json.loads(body)
        except ValueError:
            return self._send(400, {"error": {"message": "body is not JSON"}})
        if request.get("model") != state.settings.model:
            return self._send(404, {"error": {"message": f"The model `{request.get('model')}` "
                                                         "does not exist."}})
        if self.session is not None:
            turns = state.sessions.setdefault(self.session, [])
            turns.append(len(request.get("messages") or []))
        n = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        await self._stream(path.endswith("chat/completions"), n, faults, received,
                           prompt_len=len(_tokenize(json.dumps(request.get("messages")
                                                               or request.get("prompt")))))
        return None

    async def _stream(self, chat: bool, n: int, faults: set[str], received: int, *,
                      prompt_len: int) -> None:
        settings = self.state.settings
        transport = self.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = max(1, settings.chunk)
        plan = _Plan(self, chat=chat, n=n, chunk=chunk, received=received,
                     ttft_ns=int(settings.ttft_ms * 1e6),
                     gap_ns=int(chunk * settings.itl_ms * 1e6), prompt_len=prompt_len,
                     split="split" in faults, done_marker="nodone" not in faults)
        if not faults:  # the common case: the process's one ticker writes it
            await self.state.ticker.play(plan)
            return
        while not plan.done.done():  # a stream with faults goes on its own, to inject them
            # due on the monotonic clock itself (the loop's clock is cached per iteration)
            while (delay := plan.due - time.perf_counter_ns()) > 0:
                await asyncio.sleep(delay / 1e9)  # a timer may fire early: never write early
            now = time.perf_counter_ns()
            if plan.index == plan.events // 2 and plan.index > 0:
                if "reset" in faults:
                    transport.abort()
                    return
                if "stall" in faults:
                    await asyncio.sleep(settings.stall_s)
                if "malformed" in faults:
                    self._write(b"data: {not json\n\n", split=False)
            plan.emit(now)

    def _finish(self, n: int, prompt_len: int, first_late: int, max_late: int, *, split: bool,
                done: bool) -> None:
        """The usage event (with the mock's own stamps), [DONE], the end of the body."""
        assert self.transport is not None
        usage = {"object": "chunk", "choices": [],
                 "usage": {"prompt_tokens": prompt_len, "completion_tokens": n,
                           "total_tokens": prompt_len + n},
                 # the mock's own stamps (perf_counter_ns) and lateness: calibration separates
                 # the mock's delays from the client's
                 "server_timing": {"received_ns": self.received_ns, "first_ns": self.first_ns,
                                   "first_late_ns": first_late, "max_late_ns": max_late}}
        self._write(b"data: " + json.dumps(usage).encode() + b"\n\n", split=split)
        if done:
            self._write(b"data: [DONE]\n\n", split=split)
        self.transport.write(b"0\r\n\r\n")

    def _write(self, data: bytes, *, split: bool) -> None:
        assert self.transport is not None
        if not split:
            self.transport.write(_framed(data))
            return
        pieces, start = [], 0
        while start < len(data):
            size = random.randint(1, 7)
            pieces.append(data[start:start + size])
            start += size
            if random.random() < 0.2:
                pieces.append(b": keep-alive\n\n" if data[start - 1:start] == b"\n" else b"")
        for piece in pieces:
            if piece:
                self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))


class _Plan:
    """One stream's schedule, written event by event (by the process's ticker, or by the
    stream's own task when it has faults to inject)."""

    def __init__(self, protocol: Protocol, *, chat: bool, n: int, chunk: int, received: int,
                 ttft_ns: int, gap_ns: int, prompt_len: int, split: bool = False,
                 done_marker: bool = True) -> None:
        self.protocol, self.chat, self.n, self.chunk = protocol, chat, n, chunk
        self.events = (n + chunk - 1) // chunk
        self.received, self.ttft_ns, self.gap_ns, self.prompt_len = received, ttft_ns, gap_ns, \
            prompt_len
        self.split, self.done_marker = split, done_marker
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
        protocol._write(_event(self.chat, self.index, self.chunk, tokens, last), split=self.split)
        self.index += 1
        if last:
            protocol._finish(self.n, self.prompt_len, self.first_late, self.max_late,
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

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, _Plan]] = []
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._added = asyncio.Event()

    def play(self, plan: _Plan) -> asyncio.Future[None]:
        self._push(plan)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._added.set()
        return plan.done

    def _push(self, plan: _Plan) -> None:
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


@functools.lru_cache(maxsize=4096)
def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (cached: token events repeat across streams)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on one port (SO_REUSEPORT when more than one; port 0 picks a
    free port for all)."""
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if count > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(4096)
        sockets.append(sock)
    return sockets


async def serve(settings: Settings, sock: socket.socket, *, announce: bool) -> None:
    loop = asyncio.get_running_loop()
    state = MockState(settings)
    server = await loop.create_server(lambda: Protocol(state), sock=sock)
    if announce:
        host, port = sock.getsockname()[:2]
        print(f"READY {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--chunk", type=int, default=1, help="tokens per streamed event")
    parser.add_argument("--model", default="mock")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=N")
    parser.add_argument("--stall-s", type=float, default=5.0)
    parser.add_argument("--cold-s", type=float, default=0.0)
    parser.add_argument("--processes", type=int, default=1,
                        help="serve from N processes on one port (SO_REUSEPORT); request "
                             "counts, faults and /mock/stats are then per process")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after --: a command to run against the mock ({url} is replaced), "
                             "e.g. -- mls bench run {url} -c 1,32")
    args = parser.parse_args(argv, namespace=Settings())
    MockState(args)  # validates --fault before we say READY
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    return args, args.host, args.port


def main() -> None:
    settings, host, port = parse_args()
    command = [part for part in settings.command if part != "--"]
    if command:
        # one command: the mock in its own process, the given command against it, then stop
        with MockProcess(ttft_ms=settings.ttft_ms, itl_ms=settings.itl_ms, chunk=settings.chunk,
                         model=settings.model, faults=tuple(settings.fault),
                         stall_s=settings.stall_s, cold_s=settings.cold_s,
                         processes=settings.processes) as mock:
            print(f"mock at {mock.url}", file=sys.stderr, flush=True)
            code = subprocess.call([part.replace("{url}", mock.url) for part in command])
        raise SystemExit(code)
    sockets = listening_sockets(host, port, settings.processes)
    children = []
    for sock in sockets[1:]:  # each child serves its own socket; the kernel balances them
        pid = os.fork()
        if pid == 0:
            _serve_forever(settings, sock, announce=False)
            os._exit(0)
        children.append(pid)
    try:
        _serve_forever(settings, sockets[0], announce=True)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _serve_forever(settings: Settings, sock: socket.socket, *, announce: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(settings, sock, announce=announce))


class MockProcess:
    """The mock in its own process: `with MockProcess(ttft_ms=50) as mock: mock.url`."""

    def __init__(self, *, ttft_ms: float = 50.0, itl_ms: float = 10.0, chunk: int = 1,
                 model: str = "mock", faults: tuple[str, ...] = (), stall_s: float = 5.0,
                 cold_s: float = 0.0, cpu: int | None = None, processes: int = 1) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--ttft-ms", str(ttft_ms),
                "--itl-ms", str(itl_ms), "--chunk", str(chunk), "--model", model,
                "--stall-s", str(stall_s), "--cold-s", str(cold_s),
                "--processes", str(processes)]
        for fault in faults:
            argv += ["--fault", fault]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.process.pid, {cpu})
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the mock server did not start: {line!r}")
        self.url = f"http://{line.removeprefix('READY ')}"

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


if __name__ == "__main__":
    main()
