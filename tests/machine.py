"""The machine shared by the suite's worker processes, and taken whole by what measures time.

A test marked `alone` (or a fixture inside `machine_to_itself()`) measures time against a bound
the machine's other work would break (the harness's own health, TTFT against the mock's known
truth): it waits until the tests running on the other workers end, and they wait for it. A
readers-writer lock over two files in the folder the run's workers share (tests/conftest.py
makes it): every test passes the gate and holds `share` shared while it runs; a measurement
holds the gate (no new test starts) and then `share` exclusively (the running ones have ended).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# The lock files this process holds for the test it runs now (one test at a time per worker).
_HELD: dict[str, IO[bytes]] = {}


@contextlib.contextmanager
def machine_share(folder: Path | None, *, alone: bool) -> Iterator[None]:
    """Around one test: shared, or the whole machine if `alone`. No folder: one process, nothing
    runs beside a test."""
    if folder is None:
        yield
        return
    with open(folder / "gate.lock", "a+b") as gate, open(folder / "share.lock", "a+b") as share:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(share, fcntl.LOCK_EX)
        else:
            fcntl.flock(share, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        _HELD.update(gate=gate, share=share)
        try:
            yield
        finally:
            _HELD.clear()
            fcntl.flock(share, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@contextlib.contextmanager
def machine_to_itself() -> Iterator[None]:
    """For a fixture whose measurements the tests then judge: this test's share is given up, the
    machine taken whole for the block, then the share taken back."""
    gate, share = _HELD.get("gate"), _HELD.get("share")
    if gate is None or share is None:
        yield
        return
    fcntl.flock(share, fcntl.LOCK_UN)
    fcntl.flock(gate, fcntl.LOCK_EX)
    fcntl.flock(share, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(share, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
