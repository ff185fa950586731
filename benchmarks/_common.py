"""Helpers the benchmark scripts share: run a tool as its own process, read peers' results."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The repository's venv; on a machine without one (a calibration host carrying only src/ and
# benchmarks/, with the harness's own dependencies installed), the Python running the script.
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.is_file():
    PYTHON = Path(sys.executable)
PEERS_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
GUIDELLM = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "guidellm"

sys.path.insert(0, str(ROOT / "benchmarks"))


def run_measured(argv: list[str], *, cwd: Path | None = None, log: Path | None = None,
                 timeout: float = 1800,
                 env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """Run argv; return (exit code, wall seconds, peak MB of its whole process tree's RSS).

    Sampled every 50 ms with psutil (summed over the tool's worker processes, if it has any);
    rusage's ru_maxrss is useless here: after exec it still holds the forking parent's peak.
    """
    try:
        import psutil
    except ImportError:  # a bare calibration host: no memory column, the rest as usual
        psutil = None

    started = time.perf_counter()
    peak = 0
    source = {"PYTHONPATH": str(ROOT / "src")} if not (ROOT / ".venv").is_dir() else {}
    with (log.open("w") if log else open(os.devnull, "w")) as sink:
        process = subprocess.Popen(argv, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **source,
                                        **(env or {})})
        if psutil is None:
            code = process.wait(timeout=timeout)
            return code, time.perf_counter() - started, 0.0
        watched = psutil.Process(process.pid)
        deadline = started + timeout
        while process.poll() is None:
            try:
                tree = [watched, *watched.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            if time.perf_counter() > deadline:
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
    return process.returncode, time.perf_counter() - started, peak / 2**20


def load_average() -> str:
    """The 1/5/15-minute load averages: timings on a shared machine need them beside them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ours(url: str, out: Path, *, model: str, concurrency: int, requests: int, input_len: int,
         output_len: int, dataset: Path | None = None, transport: str = "raw",
         api_key: str | None = None, prewarm: bool = True,
         workers: int | None = None) -> dict[str, Any]:
    argv = [str(PYTHON), "-m", "modal_llm_serving.cli", "bench", "run", url, "--model", model,
            "-c", str(concurrency), "-n", str(requests), "--output-len", str(output_len),
            "--out", str(out), "--no-report", "--transport", transport]
    argv += ["--dataset", str(dataset)] if dataset else ["--input-len", str(input_len)]
    if api_key:
        argv += ["--api-key", api_key]
    if not prewarm:
        argv.append("--no-prewarm")
    if workers is not None:
        argv += ["--workers", str(workers)]
    code, wall, rss = run_measured(argv, log=out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text()) if code in (0, 1) else {}
    used = summary.get("workers", 1)
    name = (f"mls bench ({transport}{'' if prewarm else ', no prewarm'}"
            f"{f', {used} workers' if used > 1 else ', 1 process' if workers == 1 else ''})")
    return {**_split_by_mock_stamps(out, summary), "tool": name,
            "ok": code == 0, "wall_s": wall,
            "peak_rss_mb": rss, "ttft_p50": summary.get("median_ttft_ms"),
            "ttft_mean": summary.get("mean_ttft_ms"), "tpot_mean": summary.get("mean_tpot_ms"),
            "itl_mean": summary.get("mean_itl_ms"),
            "output_tok_s": summary.get("output_throughput"),
            "completed": summary.get("completed"),
            "client_cpu": summary.get("harness", {}).get("client_cpu_fraction_of_one_core"),
            "workers": used}


def _split_by_mock_stamps(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Where TTFT went, from the mock's own stamps (CLOCK_MONOTONIC, shared by both processes):
    client send → mock read, mock read → first token written (the mock's own lateness shows
    here), first token written → client stamp. Medians, ms."""
    t0 = summary.get("t0_perf_counter_ns")
    if t0 is None:
        return {}
    up, mock, down, first_late, max_late = [], [], [], [], []
    with (out / "requests.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            timing = record.get("server_timing")
            if not timing or record.get("first_token_ns") is None:
                continue
            up.append((timing["received_ns"] - (record["sent_ns"] + t0)) / 1e6)
            mock.append((timing["first_ns"] - timing["received_ns"]) / 1e6)
            down.append((record["first_token_ns"] + t0 - timing["first_ns"]) / 1e6)
            first_late.append(timing.get("first_late_ns", 0) / 1e6)
            max_late.append(timing.get("max_late_ns", 0) / 1e6)
    if not up:
        return {}
    first_late.sort()
    max_late.sort()
    return {"send_to_mock_p50": statistics.median(up),
            "mock_ttft_p50": statistics.median(mock),
            "mock_to_stamp_p50": statistics.median(down),
            # per request, TTFT less the mock's own time: loopback plus the client's delays
            "client_share_p50": statistics.median(u + d for u, d in zip(up, down, strict=True)),
            # how far behind its own schedule the mock wrote: a late mock is not the client
            "mock_first_late_p50": statistics.median(first_late),
            "mock_first_late_p99": first_late[int(0.99 * (len(first_late) - 1))],
            "mock_max_late_p99": max_late[int(0.99 * (len(max_late) - 1))]}


def vllm_bench(url: str, out: Path, *, model: str, tokenizer: Path, concurrency: int,
               requests: int, input_len: int, output_len: int,
               dataset: Path | None = None, api_key: str | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(PYTHON), "-m", "modal_llm_serving.local.launcher", "bench", "serve",
            "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
            "--model", model, "--tokenizer", str(tokenizer), "--num-prompts", str(requests),
            "--max-concurrency", str(concurrency), "--request-rate", "inf", "--ignore-eos",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", str(out), "--result-filename", "result.json",
            "--disable-tqdm"]
    if dataset:  # a ShareGPT file (vLLM 0.32's custom-JSONL loader needs pandas)
        argv += ["--dataset-name", "sharegpt", "--dataset-path", str(dataset),
                 "--sharegpt-output-len", str(output_len)]
    else:
        argv += ["--dataset-name", "random", "--random-input-len", str(input_len),
                 "--random-output-len", str(output_len)]
    # vllm bench serve sends OPENAI_API_KEY as its bearer key
    env = {"OPENAI_API_KEY": api_key} if api_key else None
    code, wall, rss = run_measured(argv, log=out / "log.txt", env=env)
    result_path = out / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    return {"tool": "vllm bench serve", "ok": code == 0 and bool(result), "wall_s": wall,
            "peak_rss_mb": rss, "ttft_p50": result.get("median_ttft_ms"),
            "ttft_mean": result.get("mean_ttft_ms"), "tpot_mean": result.get("mean_tpot_ms"),
            "itl_mean": result.get("mean_itl_ms"),
            "output_tok_s": result.get("output_throughput"),
            "completed": result.get("completed"), "client_cpu": None}


def guidellm(url: str, out: Path, *, model: str, concurrency: int, requests: int,
             input_len: int, output_len: int) -> dict[str, Any]:
    """guidellm in its side venv; the mock serves the tokenizer folder's path as its model id
    (guidellm 0.8 loads its tokenizer from the model name)."""
    if not GUIDELLM.is_file():
        return {"tool": "guidellm", "ok": False, "error": "not installed: run "
                "benchmarks/setup_peers.sh"}
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(GUIDELLM), "run", "--backend", f"kind=openai_http,target={url},model={model}",
            "--profile", f"kind=concurrent,streams={concurrency}",
            "--constraint", f"kind=max_requests,count={requests}",
            "--data", f"kind=synthetic_text,prompt_tokens={input_len},output_tokens={output_len}",
            "--output", f"kind=json,path={out / 'result.json'}", "--disable-console-interactive"]
    code, wall, rss = run_measured(argv, cwd=out, log=out / "log.txt")
    path = out / "result.json"
    if not path.is_file():
        return {"tool": "guidellm", "ok": False, "wall_s": wall, "peak_rss_mb": rss}
    metrics = json.loads(path.read_text())["benchmarks"][0]["metrics"]

    def pick(name: str, stat: str) -> float | None:
        value = metrics.get(name, {}).get("successful", {})
        return value.get("percentiles", {}).get("p50") if stat == "p50" else value.get(stat)

    completed = metrics.get("request_totals", {}).get("successful")
    duration = json.loads(path.read_text())["benchmarks"][0].get("duration")
    tokens = metrics.get("output_token_count", {}).get("successful", {}).get("total_sum")
    return {"tool": "guidellm 0.8.1", "ok": code == 0, "wall_s": wall, "peak_rss_mb": rss,
            "ttft_p50": pick("time_to_first_token_ms", "p50"),
            "ttft_mean": pick("time_to_first_token_ms", "mean"),
            # guidellm's "inter token latency" is what vLLM (and we) call TPOT
            "tpot_mean": pick("inter_token_latency_ms", "mean"),
            "itl_mean": None,
            "output_tok_s": tokens / duration if tokens and duration else None,
            "completed": completed, "client_cpu": None}
