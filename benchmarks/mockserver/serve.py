"""Start the mock from the command line: one port served by N processes, or mock, command, stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys

from .process import MockProcess
from .protocol import Protocol
from .state import MockState, Settings


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
    parser = argparse.ArgumentParser(
        description="A mock OpenAI-compatible streaming server with a known truth, for "
                    "calibration and faults ONLY.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--chunk", type=int, default=1, help="tokens per streamed event")
    parser.add_argument("--model", default="mock")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=N")
    parser.add_argument("--stall-s", type=float, default=5.0)
    parser.add_argument("--cold-s", type=float, default=0.0)
    parser.add_argument("--proxy-auth", metavar="ID:SECRET",
                        help="answer 401 without these Modal proxy-auth tokens")
    parser.add_argument("--knee", type=int, metavar="N",
                        help="serve N streams at a time; more wait their turn (first come, first "
                             "served), their TTFT growing with the queue, as an engine's "
                             "--max-num-seqs N does [default: no limit]")
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
    if args.knee is not None and args.knee < 1:
        parser.error("--knee must be >= 1")
    return args, args.host, args.port


def main() -> None:
    settings, host, port = parse_args()
    command = [part for part in settings.command if part != "--"]
    if command:
        # one command: the mock in its own process, the given command against it, then stop
        with MockProcess(ttft_ms=settings.ttft_ms, itl_ms=settings.itl_ms, chunk=settings.chunk,
                         model=settings.model, faults=tuple(settings.fault),
                         stall_s=settings.stall_s, cold_s=settings.cold_s,
                         proxy_auth=settings.proxy_auth, knee=settings.knee,
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
