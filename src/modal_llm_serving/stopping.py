"""Stopping on a signal: SIGTERM (`timeout`, `docker stop`, CI) and SIGHUP (a closed terminal)
end a command the way Ctrl-C does, then it exits 128 + the signal's number, as a shell reports.

Outside an event loop the process-wide handler raises KeyboardInterrupt, as Ctrl-C does. Inside
one (`run_stoppable`) the loop's own handler cancels the main task instead, so in-flight work ends
the way Ctrl-C ends it under asyncio (requests recorded as cancelled, records flushed), whether
or not SIGINT itself is ignored (a background job's is).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

__all__ = ["EXIT_INTERRUPTED", "STOP_SIGNALS", "interrupted", "run_stoppable",
           "stop_signals_as_ctrl_c"]

T = TypeVar("T")
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
STOP_SIGNALS = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}
_received: list[int] = []


def interrupted() -> tuple[str, int]:
    """How the command was interrupted, in words, and its exit code (Ctrl-C: 130)."""
    if _received:
        return STOP_SIGNALS[signal.Signals(_received[0])], 128 + _received[0]
    return "interrupted", EXIT_INTERRUPTED


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _wanted(number: int) -> bool:
    """A stop signal this process should act on (`nohup` asks to ignore SIGHUP: keep that)."""
    return signal.getsignal(number) != signal.SIG_IGN


@contextlib.contextmanager
def stop_signals_as_ctrl_c() -> Iterator[None]:
    """For the length of a command, SIGTERM and SIGHUP raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS if _wanted(number)}
    _received.clear()
    for number in saved:
        signal.signal(number, _as_ctrl_c)
    try:
        yield
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)


def run_stoppable(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run (on uvloop when installed: less client overhead) of `coroutine`, which a
    stop signal cancels; KeyboardInterrupt once it has ended, as for Ctrl-C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_stoppable(coroutine))
    return uvloop.run(_stoppable(coroutine))


async def _stoppable(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped: list[int] = []

    def stop(number: int) -> None:
        if not stopped:
            task.cancel()
        stopped.append(number)

    in_main = threading.current_thread() is threading.main_thread()
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS
             if in_main and _wanted(number)}
    for number in saved:
        loop.add_signal_handler(number, stop, number)
    try:
        return await coroutine
    except asyncio.CancelledError:
        if not stopped:
            raise
        _received.append(stopped[0])
        raise KeyboardInterrupt from None
    finally:
        for number, previous in saved.items():
            loop.remove_signal_handler(number)
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
