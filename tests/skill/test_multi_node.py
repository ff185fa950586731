"""The multi-node recipe (vllm_multi_node.py) on this machine, with no cluster and no GPU.

Modal's own cluster context (`modal._cluster.current_cluster_context`, what the SDK sets in each
clustered container at start) is simulated, and the recipe's code reads it through the real SDK
(`modal.Cluster.from_context()`): every rank gets its part, and each rank's command passes vLLM's
own parser. A worker rank's @modal.enter runs for real against a loopback rank 0 and a stand-in
`vllm` on PATH (a shell script that records its arguments): it is ready only when rank 0 is,
and fails at once when its own engine exits. Rank 0's @modal.enter runs against the stand-in
engine of standin/sglang (the same OpenAI routes and /health). A rank whose engine dies ends its
container. The file's Modal settings and rank 0's command are checked with the other recipes
(test_recipes.py, through tests/verify.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import modal._cluster
import pytest

from modal_llm_serving.local.engine_args import parse_vllm_serve
from modal_llm_serving.recipes.files import load_recipe, recipe_path
from modal_llm_serving.recipes.new import render_source

from .standin import sglang_standin

RECIPE = "vllm_multi_node"
IPV6 = ["fd00::1", "fd00::2", "fd00::3", "fd00::4"]


def simulate_cluster(monkeypatch: pytest.MonkeyPatch, rank: int, ipv4: list[str]) -> None:
    """What the SDK sets in a clustered container before @modal.enter runs."""
    context = modal._cluster.ClusterContext(rank=rank, cluster_id="cu-simulated",
                                            container_ips=IPV6[:len(ipv4)],
                                            container_ipv4_ips=ipv4, fabric_ids=[""] * len(ipv4))
    monkeypatch.setattr(modal._cluster, "current_cluster_context", context)


def fresh_recipe() -> ModuleType:
    return load_recipe(recipe_path(RECIPE), module_name=f"multi_node_{time.monotonic_ns()}")


def test_every_rank_gets_its_part_from_the_cluster_context(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r = fresh_recipe()
    ipv4 = [f"10.1.0.{i + 1}" for i in range(r.N_NODES)]
    for rank in range(r.N_NODES):
        simulate_cluster(monkeypatch, rank, ipv4)
        assert r.cluster_role() == (rank, ipv4)  # the cluster network's IPv4 addresses
        command, env = r.node_command(*r.cluster_role())
        args = parse_vllm_serve(command)
        assert (args.node_rank, args.nnodes) == (rank, r.N_NODES)
        assert (args.master_addr, args.master_port) == (ipv4[0], r.MASTER_PORT)
        assert args.headless is (rank > 0), "rank 0 serves the API, the others only work"
        assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (r.N_GPU, r.N_NODES)
        assert (args.model, args.revision) == (r.MODEL_NAME, r.MODEL_REVISION)
        assert env == {"VLLM_HOST_IP": ipv4[rank], "HF_HUB_OFFLINE": "1"}


def test_a_cluster_unlike_the_file_is_refused() -> None:
    r = fresh_recipe()
    with pytest.raises(RuntimeError, match=f"rank 0 of {r.N_NODES + 1} containers: this file "
                                           f"is written for N_NODES = {r.N_NODES}"):
        r.node_command(0, ["10.1.0.1"] * (r.N_NODES + 1))
    with pytest.raises(RuntimeError, match=f"rank {r.N_NODES} of"):
        r.node_command(r.N_NODES, ["10.1.0.1"] * r.N_NODES)


# --- a worker rank's start, against a loopback rank 0 -------------------------------------------


class RankZero:
    """Rank 0's public port on loopback: /health answers `before` in turn, then 200."""

    def __init__(self, before: Iterable[int]) -> None:
        self.before, self.answered = iter(before), []
        zero = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = next(zero.before, 200)
                zero.answered.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@contextlib.contextmanager
def rank_zero(before: Iterable[int]) -> Iterator[RankZero]:
    zero = RankZero(before)
    thread = threading.Thread(target=zero.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield zero
    finally:
        zero.server.shutdown()
        zero.server.server_close()


def worker(monkeypatch: pytest.MonkeyPatch, folder: Path, *, zero_port: int,
           engine: str) -> tuple[ModuleType, object, Callable[..., None], Callable[..., None]]:
    """The recipe as rank 1 of 2 on loopback (rank 0 at 127.0.0.1:`zero_port`), a stand-in
    `vllm` whose body is `engine`, and a fresh container with its @enter and @exit."""
    bin_folder = folder / "bin"
    bin_folder.mkdir()
    script = bin_folder / "vllm"
    record = f"printf '%s\\n' \"$VLLM_HOST_IP\" \"$HF_HUB_OFFLINE\" \"$@\" > {folder}/ran"
    script.write_text(f"#!/bin/sh\n{record}\n{engine}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    monkeypatch.setenv("MLS_API_KEY", "user-key")
    r = fresh_recipe()
    assert r.N_NODES == 2, "the loopback cluster below has two ranks"
    monkeypatch.setattr(r, "PORT", zero_port)  # rank 0's public port, read when start() runs
    monkeypatch.setattr(r, "RETRY_INTERVAL", 0)
    monkeypatch.setattr(r, "STARTUP_TIMEOUT", 60)  # bounds a failure
    simulate_cluster(monkeypatch, 1, ["127.0.0.1", "127.0.0.2"])
    user_cls = r.VLLMCluster._get_user_cls()
    return r, object.__new__(user_cls), user_cls.start._get_raw_f(), user_cls.stop._get_raw_f()


def test_a_worker_rank_is_ready_when_rank_zero_is_and_runs_headless(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with rank_zero([503, 503]) as zero:
        _r, container, start, stop = worker(monkeypatch, tmp_path, zero_port=zero.port,
                                           engine="exec sleep 600")
        try:
            start(container)
            assert zero.answered == [("/health", 503), ("/health", 503), ("/health", 200)]
            assert container.engine.poll() is None  # type: ignore[attr-defined]
        finally:
            stop(container)
        assert container.engine.wait(timeout=30) == -signal.SIGTERM  # type: ignore[attr-defined]
    host_ip, offline, *argv = (tmp_path / "ran").read_text().splitlines()
    args = parse_vllm_serve(["vllm", *argv])
    assert (args.node_rank, args.headless, args.master_addr) == (1, True, "127.0.0.1")
    assert (host_ip, offline) == ("127.0.0.2", "1")


def test_a_worker_rank_fails_at_once_when_its_engine_exits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with rank_zero(itertools.repeat(503)) as zero:  # rank 0 never comes up
        _r, container, start, _stop = worker(monkeypatch, tmp_path, zero_port=zero.port,
                                             engine="exit 3")
        with pytest.raises(RuntimeError, match=rf"vLLM exited with code 3 before "
                                               rf"http://127.0.0.1:{zero.port}/health"):
            start(container)


# --- rank 0's start, against a stand-in engine ----------------------------------------------------


def test_rank_zero_waits_for_its_engine_warms_up_then_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 runs its own command (a `vllm` on PATH that runs the stand-in engine of
    standin/sglang: /health 503 until "every rank is up", then OpenAI chat), waits through the
    503s, warms up once under the user's key; its engine is rank 0's: the API, not headless."""
    monkeypatch.setenv("MLS_API_KEY", "user-key")
    with sglang_standin(monkeypatch, tmp_path, health=(503, 503)) as engine:
        script = tmp_path / "bin" / "vllm"
        script.write_text('#!/bin/sh\nexec python -m sglang.launch_server "$@"\n')
        script.chmod(0o755)
        text = render_source(recipe_path(RECIPE).read_text(), {
            "ENGINE_PORT": engine.port, "RETRY_INTERVAL": 0}).text  # bound in the command
        path = tmp_path / "multi_node_rank0.py"
        path.write_text(text)
        r = load_recipe(path, module_name=path.stem)
        monkeypatch.setattr(r, "PORT", 0)  # the forwarder's port: the OS's pick, read at start
        simulate_cluster(monkeypatch, 0, ["127.0.0.1", "127.0.0.2"])
        user_cls = r.VLLMCluster._get_user_cls()
        container = object.__new__(user_cls)
        try:
            user_cls.start._get_raw_f()(container)
            seen = engine.requests()
            assert [(q["path"], q["status"]) for q in seen] == [
                ("/health", 503), ("/health", 503), ("/health", 200),
                ("/v1/chat/completions", 200)]
            assert seen[-1]["authorization"] == "Bearer user-key"
        finally:
            user_cls.stop._get_raw_f()(container)
        assert container.engine.wait(timeout=30) == -signal.SIGTERM  # type: ignore[attr-defined]
    args = parse_vllm_serve(container.engine.args)  # type: ignore[attr-defined]
    assert (args.node_rank, args.headless, args.master_addr) == (0, False, "127.0.0.1")
    assert (args.host, args.port) == ("127.0.0.1", engine.port)


# --- a rank whose engine exits ends its container ------------------------------------------------

WATCH = """
import importlib.util, subprocess, sys, threading
spec = importlib.util.spec_from_file_location("recipe", sys.argv[1])
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
stopping = threading.Event()
if sys.argv[2] == "stopping":
    stopping.set()
recipe.stop_when_exits(subprocess.Popen(["sh", "-c", "exit 3"]), stopping)
print("still running")
"""


@pytest.mark.parametrize("stopping", [False, True], ids=["engine-died", "our-own-exit"])
def test_a_rank_whose_engine_exits_ends_its_container(stopping: bool) -> None:
    """In a fresh Python (the watchdog signals its own process): an engine that dies ends the
    container with SIGTERM, as Modal stops one; one stopped by @exit does not."""
    done = subprocess.run([sys.executable, "-u", "-c", WATCH, str(recipe_path(RECIPE)),
                           "stopping" if stopping else "running"],
                          capture_output=True, text=True, timeout=120)
    if stopping:
        assert (done.returncode, done.stdout) == (0, "still running\n"), done.stderr[-2000:]
    else:
        assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
        assert done.stdout == "vLLM exited with code 3: stopping this container\n"
