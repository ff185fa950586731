"""Every network wait has a deadline: misbehaving servers × every command that talks to one.

Each server (the mock, answering every route with one script) misbehaves in one way: it trickles
a byte every half second, never ends a chunked body, sends a chunk size of -1, writes its status
or its Content-Length in digits that are not ASCII, or sends 300 KB of headers. Each command
(`smoke`, `bench run` with its pre-flight, `bench cold-start`, `revision`, the Hub reads behind
plan/new/check, local serve's readiness wait) must end within the sum of the deadlines its
options set (plus a small margin for start-up), with its documented exit code and a line that
says what happened; never a hang, a spin or a traceback.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving.cli import cli
from modal_llm_serving.errors import EngineStartError, UsageError
from modal_llm_serving.facts.hub import read_hub_model
from modal_llm_serving.local.serve import LocalServer

D = 1.5  # every deadline option of every row, in seconds
MARGIN_S = 4.0  # start-up, the last poll's pause, a loaded 2-core machine
SHA = "0123456789abcdef0123456789abcdef01234567"
BODY = b'{"data": [{"id": "fuzz"}], "sha": "' + SHA.encode() + b'"}'
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")

SERVERS = {
    # a whole, valid answer, one byte every half second: no read ever waits long
    "trickle": Script(framing="raw", gap_s=0.5, pieces=tuple(
        bytes([byte]) for byte in b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
        % (len(BODY), BODY))),
    # a keep-alive comment every 50 ms, for ever: bytes flow, nothing ends
    "endless-chunked": Script(framing="raw", pieces=(SSE_HEAD, b"d\r\n: keep-alive\n\r\n"),
                              endless=True, gap_s=0.05),
    "chunk-minus-one": Script(framing="raw", pieces=(SSE_HEAD, b"-1\r\nabc\r\n", b""),
                              endless=True, gap_s=0.2),
    "non-ascii-length": Script(framing="raw", pieces=(
        "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n{}".encode(), b""), endless=True,
        gap_s=0.2),
    "non-ascii-status": Script(framing="raw", pieces=(
        "HTTP/1.1 ٢٠٠ OK\r\nContent-Length: 2\r\n\r\n{}".encode(), b""), endless=True,
        gap_s=0.2),
    "huge-headers": Script(framing="raw", pieces=(
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n",
        b"X-Pad: " + b"a" * 1000 + b"\r\n"), endless=True, gap_s=0.001),
}


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess(model="fuzz") as running:
        yield running
        assert running.stats()["errors"] == []


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, mock: MockProcess) -> Iterator[str]:
    mock.script(routes={"*": SERVERS[request.param]})
    try:
        yield mock.url
    finally:
        mock.script()


def _cli(args: list[str], **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env)
    assert "Traceback" not in result.output and "internal error" not in result.output, \
        result.output
    return result.exit_code, result.stdout, result.stderr


def _smoke(url: str, _tmp: Path) -> tuple[int, str]:
    code, _out, err = _cli(["smoke", url, "--ready-timeout", str(D), "--timeout", str(D)])
    return code, next(line for line in err.splitlines() if line.startswith("failed at"))


def _bench_run(url: str, tmp: Path) -> tuple[int, str]:
    code, _out, err = _cli(["bench", "run", url, "--model", "fuzz", "-n", "2", "-c", "2",
                            "--input-len", "4", "--output-len", "4", "--timeout", str(D),
                            "--stall-timeout", str(D), "--out", str(tmp / "out"),
                            "--no-report"])
    return code, err.strip().splitlines()[-1]


def _cold_start(url: str, _tmp: Path) -> tuple[int, str]:
    code, _out, err = _cli(["bench", "cold-start", url, "--model", "fuzz", "--timeout", str(D)])
    return code, next(line for line in err.splitlines() if "first token after failed" in line)


def _revision(url: str, _tmp: Path) -> tuple[int, str]:
    code, out, err = _cli(["revision", "org/model", "--timeout", str(D)], HF_ENDPOINT=url)
    assert not out  # no hash, ever
    (line,) = err.strip().splitlines()
    return code, line


def _hub_read(url: str, tmp: Path) -> tuple[int, str]:
    """The Hub read behind plan/new/check (a library call: its deadline is no option)."""
    env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp / "hf"), "MLS_CACHE_DIR": str(tmp / "mls")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        read_hub_model("org/model", SHA, timeout=D)
    except UsageError as exc:  # HubUnreachable included: exit 2, one line
        return 2, str(exc)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0, "read"


def _local_ready(url: str, tmp: Path) -> tuple[int, str]:
    """local serve's readiness wait, against an engine that is alive but whose port misbehaves."""
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              start_new_session=True)
    server = LocalServer(process=engine, base_url=url, served_model_name="fuzz",
                         log_path=tmp / "engine.log")
    try:
        server.wait_ready(timeout=D)
    except EngineStartError as exc:
        return 1, str(exc)
    finally:
        server.stop()
    return 0, "ready"


# command, its deadlines in sequence (what it may wait in all), its exit code, its line
COMMANDS: dict[str, tuple[Callable[[str, Path], tuple[int, str]], float, int, str]] = {
    # ready, then (if it passed) four steps of one request each
    "smoke": (_smoke, 5 * D, 1, "failed at '"),
    # /v1/models, /tokenize (+ /detokenize), then the requests, two at once
    "bench run": (_bench_run, 4 * D, 1, "no request succeeded"),
    "bench cold-start": (_cold_start, D, 1, "first token after failed"),
    "revision": (_revision, D, 1, "Error: "),
    "hub read": (_hub_read, D, 2, "org/model"),
    "local ready": (_local_ready, D, 1, "not ready after"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_ends_within_its_deadline(server: str, command: str,
                                                tmp_path: Path) -> None:
    run, budget, exit_code, words = COMMANDS[command]
    start = time.monotonic()
    code, line = run(server, tmp_path)
    took = time.monotonic() - start
    assert took < budget + MARGIN_S, (took, line)
    assert code == exit_code, line
    assert words in line and "\n" not in line, line


def test_the_deadline_reaches_the_pools_it_guards() -> None:
    """`bounded` reaches httpx's pools by their attribute names: if httpx moves them, this
    fails here, not as a command that hangs."""
    import httpx
    import httpx2

    from modal_llm_serving.deadline import _Backend, bounded

    for module in (httpx, httpx2):
        client: Any = bounded(module.Client())
        assert isinstance(client._transport._pool._network_backend, _Backend)
        client.close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A loopback server that accepts every connection and never sends a byte."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the accepting thread sees `stop`
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()
        for connection in accepted:
            connection.close()


@pytest.mark.timeout(120)  # a read the deadline cannot cut hangs: fail here, not at 900 s
def test_a_server_that_never_answers_is_cut_at_the_deadline(silent: str) -> None:
    """Every read blocks (no byte ever comes): the deadline must cut the read itself."""
    code, line = _smoke(silent, Path())
    assert code == 1 and line.startswith("failed at 'ready'"), line
    code, line = _revision(silent, Path())
    assert code == 1 and "did not answer whole within 1.5 s" in line, line
