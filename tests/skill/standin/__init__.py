"""A stand-in SGLang engine that a recipe starts with its own command (`sglang/launch_server.py`).

`sglang_standin()` puts it first: a `python` for this interpreter first on PATH, this folder
first on PYTHONPATH, its settings in the environment the recipe's `subprocess.Popen` passes on.
The port is bound once, here; each stand-in process the recipe starts takes the listening socket
over a Unix socket, so requests made before it is up wait in the socket's queue, as they would
for a real engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass
class StandIn:
    port: int  # the recipe's PORT: where the stand-in serves
    log: Path
    _read: int = 0

    def requests(self) -> list[dict[str, Any]]:
        """The requests the stand-in answered since the last call: method, path, status and
        authorization, in the order it answered them."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        new, self._read = lines[self._read:], len(lines)
        return [json.loads(line) for line in new]


class _Handoff:
    """A TCP port bound here, once; its listening socket goes to each process that connects to
    the Unix socket at `path`."""

    def __init__(self, folder: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.path = os.path.join(folder, "handoff")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.path)
        self.unix.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.unix.accept()
                with conn:
                    socket.send_fds(conn, [b"L"], [self.listener.fileno()])
            except OSError:  # closed: the test is over
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.unix.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.unix.close()
        self.listener.close()


def refusing_port() -> int:
    """A port that was listening a moment ago and is closed now: connections are refused."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def sglang_standin(monkeypatch: pytest.MonkeyPatch, folder: Path, *,
                   health: tuple[int, ...] | str = (503, 503),
                   exit_code: int | None = None) -> Iterator[StandIn]:
    """A stand-in engine for what the recipe starts while this lasts. `health`: the statuses
    /health answers before 200, or "never" (503 forever); `exit_code`: the stand-in exits with
    it at once, and the port refuses connections."""
    bin_folder = folder / "bin"
    bin_folder.mkdir()
    (bin_folder / "python").symlink_to(sys.executable)  # the recipe runs `python -m ...`
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    with tempfile.TemporaryDirectory(prefix="mls-") as short:  # a Unix socket path is short
        handoff = None if exit_code is not None else _Handoff(short)
        log = folder / "requests.jsonl"
        monkeypatch.setenv("MLS_SGLANG_STANDIN", json.dumps({
            "handoff": handoff and handoff.path, "log": str(log),
            "health": health if isinstance(health, str) else list(health), "exit": exit_code}))
        try:
            yield StandIn(port=handoff.port if handoff else refusing_port(), log=log)
        finally:
            if handoff is not None:
                handoff.close()
