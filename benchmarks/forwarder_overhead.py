"""What a recipe's forwarder costs: TTFT and chunk gaps, direct vs through it.

    .venv/bin/python benchmarks/forwarder_overhead.py [--requests 40] [--max-tokens 64]

Starts one real local vLLM (the tiny random model, the online recipe's settings as the test
suite's server), puts the recipe's own forwarder in front of it, and sends the same streamed chat
request alternately to the engine and through the forwarder, one at a time. Reports the median
and p90 of TTFT (first content event − send) and E2EL (last content event − send) for both
paths, and the difference. The forwarder runs in a process of its own, as in the container
(where it shares a process with Modal's mostly idle runtime, not with the client). The client
stamps bytes as they come off the socket (raw chunks, split on newlines), so both paths carry the
same client overhead.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modal_llm_serving.local.serve import engine_build, free_port, local_command, start_server
from modal_llm_serving.recipes.files import recipe_path
from tests.tiny_model import build_tiny_model

KEY = "forwarder-overhead-not-a-secret"
FORWARDER = """
import sys, threading
from modal_llm_serving.recipes.files import load_recipe, recipe_path
recipe = load_recipe(recipe_path(sys.argv[3]))
recipe.start_forwarder(sys.argv[1], api_key=sys.argv[4], host="127.0.0.1", port=int(sys.argv[2]))
threading.Event().wait()
"""


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the forwarder did not listen on {port} within {timeout:.0f} s")


def one_request(client: httpx.Client, base_url: str, *, max_tokens: int) -> tuple[float, float]:
    """(TTFT s, E2EL s) of one streamed chat request: first and last content event − send."""
    body = {"model": "tiny", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me a story."}]}
    stamps: list[float] = []
    sent = time.perf_counter()
    with client.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {KEY}"}) as response:
        response.raise_for_status()
        pending = b""
        # split on b"\n" only: text splitting would also break at U+2028 and friends, which a
        # random model emits unescaped inside JSON strings
        for data in response.iter_raw():
            now = time.perf_counter()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if any(choice["delta"].get("content") for choice in chunk["choices"]):
                        stamps.append(now)
    return stamps[0] - sent, stamps[-1] - sent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per path")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--recipe", default="vllm_online", help="whose forwarder to measure")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "tiny")
        # the online recipe's own engine command, as `mls local serve --recipe` runs it
        command = local_command(recipe_path("vllm_online"), model=str(model),
                                served_model_name="tiny", build=engine_build())
        with start_server(command, api_key=KEY, kv_cache_gib=1,
                          log_path=Path(folder) / "vllm.log") as server:
            print(f"starting vLLM (log {server.log_path})", file=sys.stderr)
            server.wait_ready(timeout=300)
            port = free_port()
            forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, server.base_url,
                                          str(port), options.recipe, KEY])
            paths = {"direct": server.base_url, "forwarder": f"http://127.0.0.1:{port}"}
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
            try:
                wait_for_port(port)
                with httpx.Client(timeout=120) as client:
                    for url in paths.values():  # warm-up, excluded
                        for _ in range(3):
                            one_request(client, url, max_tokens=options.max_tokens)
                    for index in range(options.requests):
                        for name, url in paths.items():
                            results[name].append(one_request(client, url,
                                                             max_tokens=options.max_tokens))
                        print(f"\r{index + 1}/{options.requests}", end="", file=sys.stderr)
            finally:
                forwarder.terminate()
                forwarder.wait()
    print(file=sys.stderr)
    summary = {}
    for name, samples in results.items():
        ttft = [sample[0] * 1000 for sample in samples]
        e2el = [sample[1] * 1000 for sample in samples]
        summary[name] = {
            "n": len(samples),
            "ttft_ms_p50": statistics.median(ttft), "ttft_ms_p90": percentile(ttft, 0.9),
            "e2el_ms_p50": statistics.median(e2el), "e2el_ms_p90": percentile(e2el, 0.9)}
    summary["added_ms"] = {key: summary["forwarder"][key] - summary["direct"][key]
                           for key in ("ttft_ms_p50", "e2el_ms_p50")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
