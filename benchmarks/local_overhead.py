"""Does `mls local serve` add anything to the engine? Side by side, in one run.

Serves the embedded SmolLM2 twice over, alternating, with the same engine arguments:
  A. `mls local serve` (our CLI, through `vllm_launcher`, with its smoke test), and
  B. the same argv by hand with vLLM's own entry point (`python -m
     vllm.entrypoints.openai.api_server`, the one that works with the CPU build as installed),
and measures output tokens/s at 1 and 8 concurrent streams (fixed 128-token replies with
`ignore_eos`, greedy), time to ready, and the memory of each server's process tree (PSS:
resident memory with shared pages split between the processes that share them).

    .venv/bin/python benchmarks/local_overhead.py --rounds 2 --out results/local_overhead.json

Each measurement is printed and appended to the output JSON as soon as it is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from modal_llm_serving.local.embedded_model import DEFAULT_MODEL_ID, ensure_default_model
from modal_llm_serving.local.serve import (
    DEFAULT_KV_CACHE_GIB,
    engine_build,
    free_port,
    local_command,
)
from modal_llm_serving.recipes.files import recipe_path

PROMPT = "Write a long story about a lighthouse keeper."
OUTPUT_TOKENS = 128


def engine_argv(model: str, port: int) -> list[str]:
    """What `mls local serve` runs with its defaults: the online recipe's command, made local."""
    return local_command(recipe_path("vllm_online"), model=model,
                         served_model_name=DEFAULT_MODEL_ID, port=port,
                         build=engine_build()).argv


def start(variant: str, model: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(DEFAULT_KV_CACHE_GIB),
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    if variant == "mls":
        argv = [sys.executable, "-m", "modal_llm_serving", "local", "serve", "--port", str(port)]
    else:
        served = engine_argv(model, port)[2:]  # drop "vllm serve"; the model becomes --model
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *served]
    with log.open("wb") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def wait_models(base: str, process: subprocess.Popen[bytes], timeout: float = 300) -> float:
    start_time = time.monotonic()
    while time.monotonic() - start_time < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if DEFAULT_MODEL_ID in httpx.get(f"{base}/v1/models", timeout=2).text:
                return time.monotonic() - start_time
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("server not ready")


def tree_pss_mib(pid: int) -> float:
    """Proportional set size of the process tree: shared pages split, so the sum is honest."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_full_info().pss for p in processes if p.is_running()) / 2**20


async def throughput(base: str, streams: int, requests: int) -> float:
    """Output tokens/s over `requests` fixed-length completions, `streams` at a time."""
    payload = {"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "temperature": 0}
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        await client.post("/v1/chat/completions", json=payload)  # warm-up, not counted
        queue = list(range(requests))
        tokens = 0

        async def worker() -> None:
            nonlocal tokens
            while queue:
                queue.pop()
                reply = await client.post("/v1/chat/completions", json=payload)
                reply.raise_for_status()
                tokens += reply.json()["usage"]["completion_tokens"]

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        return tokens / (time.perf_counter() - began)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16, help="per stream count")
    parser.add_argument("--out", type=Path, default=Path("results/local_overhead.json"))
    args = parser.parse_args()
    model = str(ensure_default_model())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load_before": os.getloadavg(), "argv": engine_argv(model, 0), "runs": []}
    runs: list[dict[str, object]] = record["runs"]  # type: ignore[assignment]
    for round_index in range(args.rounds):
        for variant in ("mls", "vllm-cli"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = args.out.parent / f"local_overhead-{variant}.log"
            process = start(variant, model, port, log)
            try:
                ready = wait_models(base, process)
                run: dict[str, object] = {"round": round_index, "variant": variant,
                                          "ready_s": round(ready, 1)}
                for streams in (1, 8):
                    rate = asyncio.run(throughput(base, streams, args.requests * streams // 2))
                    run[f"tok_s_{streams}"] = round(rate, 1)
                run["pss_mib"] = round(tree_pss_mib(process.pid), 0)
            finally:
                stop(process)
            runs.append(run)
            print(json.dumps(run), flush=True)
            args.out.write_text(json.dumps(record, indent=2))
    for streams in (1, 8):
        mean = {v: sum(float(r[f"tok_s_{streams}"]) for r in runs if r["variant"] == v)  # type: ignore[arg-type]
                / args.rounds for v in ("mls", "vllm-cli")}
        delta = 100 * (mean["mls"] / mean["vllm-cli"] - 1)
        print(f"{streams} stream(s): mls {mean['mls']:.1f} tok/s, vLLM CLI "
              f"{mean['vllm-cli']:.1f} tok/s, difference {delta:+.1f}%")
        record[f"mean_tok_s_{streams}"] = mean
        record[f"difference_pct_{streams}"] = round(delta, 2)
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
