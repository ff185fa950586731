"""The mock in its own process, as tests and benchmarks start it, and its control routes.

    with MockProcess(ttft_ms=50, itl_ms=10) as mock:     # calibration: a known truth
        run_the_client(mock.url)
    with MockProcess(model="fuzz") as mock:              # hostile: scripted answers
        mock.script([Script(status=200, pieces=(b"data: {not json\\n\\n",))])
        run_the_client(mock.url)
        assert mock.stats()["errors"] == []               # no fate came from a mock bug
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import scripted

# the entry script (benchmarks/mock_server.py): the mock's own process runs it
ENTRY = Path(__file__).resolve().parents[1] / "mock_server.py"


class MockProcess:
    """The mock in its own process: `with MockProcess(ttft_ms=50) as mock: mock.url`."""

    def __init__(self, *, ttft_ms: float = 50.0, itl_ms: float = 10.0, chunk: int = 1,
                 model: str = "mock", faults: tuple[str, ...] = (), stall_s: float = 5.0,
                 cold_s: float = 0.0, cpu: int | None = None, processes: int = 1,
                 proxy_auth: str | None = None, knee: int | None = None) -> None:
        argv = [sys.executable, str(ENTRY), "--ttft-ms", str(ttft_ms),
                "--itl-ms", str(itl_ms), "--chunk", str(chunk), "--model", model,
                "--stall-s", str(stall_s), "--cold-s", str(cold_s),
                "--processes", str(processes)]
        for fault in faults:
            argv += ["--fault", fault]
        if proxy_auth:
            argv += ["--proxy-auth", proxy_auth]
        if knee is not None:
            argv += ["--knee", str(knee)]
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

    def script(self, answers: Sequence[scripted.Script] = (), *, models: bytes | None = None,
               missing: Iterable[str] = (),
               routes: dict[str, scripted.Script] | None = None) -> None:
        """From now on, completion requests play `answers` (round robin from the first),
        /v1/models answers `models`, the `missing` routes answer 404, a path in `routes` (or
        any path, for `*`) plays its own script. Called with nothing, the mock answers as
        itself again. With --processes N, only one process hears it."""
        self._call("POST", "/mock/script", scripted.encode(answers, models=models,
                                                           missing=missing, routes=routes))

    def stats(self) -> dict[str, Any]:
        """Completion requests seen, connections accepted, turns per session, and the mock's own
        errors."""
        stats: dict[str, Any] = json.loads(self._call("GET", "/mock/stats"))
        return stats

    def requests(self, *, after: int = 0) -> list[dict[str, Any]]:
        """The completion requests read after the `after`-th (the latest 1000 at most): each
        one's `number`, `path`, `headers` (lower-case names), `body` (text), `received_ns`,
        and its connection's `connection` number and `connected_ns` (perf_counter_ns: the
        client's clock too, CLOCK_MONOTONIC)."""
        seen: list[dict[str, Any]] = json.loads(self._call("GET", "/mock/requests"))
        return [request for request in seen if request["number"] > after]

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"the mock answered {method} {path} with {response.status}")
        return data

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
