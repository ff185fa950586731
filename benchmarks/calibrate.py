"""Calibrate `mls bench` against the mock's known truth, from 1 to 512 streams, beside its peers.

Truth: the mock writes each stream's first token `--ttft-ms` after it reads the request, then one
token every `--itl-ms` (absolute schedule). So TTFT = ttft, TPOT = itl, and the ideal output
throughput at c streams is c × N_out / (ttft + (N_out − 1) × itl). Each tool runs as its own
process against the same mock (itself in its own process); every level runs the same requests.

    .venv/bin/python benchmarks/calibrate.py          # ours + vllm bench serve + guidellm
    .venv/bin/python benchmarks/calibrate.py --tools ours --streams 1,128
    .venv/bin/python benchmarks/calibrate.py --tools ours,ours-aiohttp,ours-httpx   # transports
    .venv/bin/python benchmarks/calibrate.py --tools ours-1proc,ours --streams 1,128,512,2048 \
        --mock-processes 8     # one process vs the default workers, a mock that keeps up

The mock reports how late it wrote its own events (`server_timing`); the table shows that beside
the client's error, so a mock that falls behind is not read as client error.

Prints a Markdown table (the one in docs/PERFORMANCE.md) and writes results/calibration-*.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from _common import PYTHON, ROOT, guidellm, load_average, ours, vllm_bench
from mockserver import MockProcess

TOOLS = ("ours", "ours-1proc", "ours-aiohttp", "ours-httpx", "ours-noprewarm", "vllm",
         "guidellm")


def _tokenizer(folder: Path) -> Path:
    """A tokenizer folder the peers can load offline (the toolkit's tiny model builder).

    Built in a child process: this script stays small, and so do the tools it forks.
    """
    if not (folder / "tokenizer.json").is_file():
        code = ("import sys, pathlib; from tests.tiny_model import build_tiny_model;"
                " build_tiny_model(pathlib.Path(sys.argv[1]))")
        subprocess.run([str(PYTHON), "-c", code, str(folder)], check=True,
                       capture_output=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,8,32,128,512")
    parser.add_argument("--tools", default="ours,vllm,guidellm")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--waves", type=int, default=3, help="requests per level = waves × c")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mock-processes", type=int, default=1,
                        help="serve the mock from N processes (SO_REUSEPORT)")
    args = parser.parse_args()
    tools = [tool.strip() for tool in args.tools.split(",")]
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools {sorted(unknown)}; choose from {', '.join(TOOLS)}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / f"calibration-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    # the peers load a tokenizer by the model's name; ours counts tokens with the mock's /tokenize
    peers = {"vllm", "guidellm"} & set(tools)
    tokenizer = _tokenizer(ROOT / "results" / "calibration-tokenizer") if peers else Path("mock")
    rows: list[dict[str, Any]] = []
    n_out, ttft, itl = args.output_len, args.ttft_ms, args.itl_ms
    e2el = ttft + (n_out - 1) * itl
    # guidellm takes its tokenizer from the model name, so the mock serves that path as its id
    with MockProcess(ttft_ms=ttft, itl_ms=itl, model=str(tokenizer),
                     processes=args.mock_processes) as mock:
        for streams in (int(s) for s in args.streams.split(",")):
            requests = max(args.waves * streams, 16)
            ideal = streams * n_out / (e2el / 1000)
            for tool in tools:
                folder = out / f"{tool}-c{streams}"
                common = {"concurrency": streams, "requests": requests,
                          "input_len": args.input_len, "output_len": n_out}
                load_before = load_average()
                if tool.startswith("ours"):
                    variant = tool.partition("-")[2]
                    transport = variant if variant in ("aiohttp", "httpx") else "raw"
                    row = ours(mock.url, folder, model=str(tokenizer), transport=transport,
                               prewarm=variant != "noprewarm",
                               workers=1 if variant == "1proc" else None, **common)
                elif tool == "vllm":
                    row = vllm_bench(mock.url, folder, model=str(tokenizer),
                                     tokenizer=tokenizer, **common)
                else:
                    row = guidellm(mock.url, folder, model=str(tokenizer), **common)
                row.update(streams=streams, requests=requests, ideal_tok_s=ideal,
                           load=f"{load_before} → {load_average()}")
                if row.get("ttft_p50") is not None:
                    row["ttft_p50_err_ms"] = row["ttft_p50"] - ttft
                    row["ttft_p50_err_pct"] = 100 * (row["ttft_p50"] / ttft - 1)
                    if row.get("client_share_p50") is not None:  # the client's own share
                        row["client_ttft_err_ms"] = row["client_share_p50"]
                if row.get("tpot_mean") is not None:
                    row["tpot_err_ms"] = row["tpot_mean"] - itl
                if row.get("output_tok_s"):
                    row["throughput_of_ideal"] = row["output_tok_s"] / ideal
                rows.append(row)
                print(_line(row), flush=True)
    result = {"date_utc": stamp, "machine": f"{_cpu_model()}, {_cpus()} CPUs",
              "mock_processes": args.mock_processes, "truth": {"ttft_ms": ttft, "itl_ms": itl,
                                          "output_len": n_out, "input_len": args.input_len},
              "rows": rows}
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    print("\n" + _table(rows))
    print(f"\nresults: {out / 'calibration.json'}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _line(row: dict[str, Any]) -> str:
    return (f"{row['tool']:<22} c={row['streams']:<4} TTFT p50 {_fmt(row.get('ttft_p50'))} ms  "
            f"TPOT {_fmt(row.get('tpot_mean'))} ms  {_fmt(row.get('output_tok_s'), '.0f')} tok/s "
            f"({_fmt(row.get('throughput_of_ideal'), '.1%')} of ideal)  RSS "
            f"{_fmt(row.get('peak_rss_mb'), '.0f')} MB  load {row['load']}")


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| streams | tool | TTFT p50 (ms) | TTFT p50 error (ms) | mock late, first token "
             "p50/p99 (ms) | client's own TTFT error (ms) | TPOT mean (ms) | TPOT error "
             "(ms) | output tok/s | of ideal | client peak RSS (MB) | load (1/5/15 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['streams']} | {row['tool']} | {_fmt(row.get('ttft_p50'))} | "
            f"{_fmt(row.get('ttft_p50_err_ms'), '+.2f')} | "
            f"{_fmt(row.get('mock_first_late_p50'))}/{_fmt(row.get('mock_first_late_p99'))} | "
            f"{_fmt(row.get('client_ttft_err_ms'), '+.2f')} | {_fmt(row.get('tpot_mean'))} | "
            f"{_fmt(row.get('tpot_err_ms'), '+.2f')} | {_fmt(row.get('output_tok_s'), '.0f')} | "
            f"{_fmt(row.get('throughput_of_ideal'), '.1%')} | "
            f"{_fmt(row.get('peak_rss_mb'), '.0f')} | {row['load']} |")
    split = [row for row in rows if row.get("mock_ttft_p50") is not None]
    if split:
        lines += ["", "Where our TTFT went (medians, ms; the mock stamps with the same monotonic "
                      "clock): send → mock read | mock read → first token written | written → "
                      "our stamp", "", "| streams | send → mock | mock TTFT | mock → stamp |",
                  "|---|---|---|---|"]
        lines += [f"| {row['streams']} | {row['send_to_mock_p50']:.2f} | "
                  f"{row['mock_ttft_p50']:.2f} | {row['mock_to_stamp_p50']:.2f} |"
                  for row in split if row["tool"].startswith("mls bench (raw")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
