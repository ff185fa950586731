"""A 10,000-request run against the mock: the JSONL grows as requests finish, memory stays flat.

Samples, once a second, the harness process's RSS and the number of lines already in its
requests.jsonl. Constant memory in the number of requests means the RSS column stops growing
once the first few hundred requests are done (the summary keeps 8 bytes per value, not records).

    .venv/bin/python benchmarks/scale.py                     # 10,000 requests, 64 streams
    .venv/bin/python benchmarks/scale.py --requests 50000 --streams 512
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time

import psutil
from _common import PYTHON, ROOT, load_average
from mockserver import MockProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=16)
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = ROOT / "results" / f"scale-{stamp}"
    samples = []
    with MockProcess(ttft_ms=5, itl_ms=1) as mock:
        process = subprocess.Popen(
            [str(PYTHON), "-m", "modal_llm_serving.cli", "bench", "run", mock.url, "-c",
             str(args.streams), "-n", str(args.requests), "--input-len", "16", "--output-len",
             str(args.output_len), "--out", str(out), "--no-report"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        watched = psutil.Process(process.pid)
        started = time.monotonic()
        jsonl = out / "requests.jsonl"
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss / 2**20
            except psutil.Error:
                break
            lines = sum(1 for _ in jsonl.open()) if jsonl.is_file() else 0
            samples.append({"t_s": round(time.monotonic() - started, 1), "jsonl_lines": lines,
                            "rss_mb": round(rss, 1)})
            print(f"{samples[-1]['t_s']:6.1f} s  {lines:6d} lines  RSS {rss:6.1f} MB", flush=True)
            time.sleep(1.0)
    summary = json.loads((out / "summary.json").read_text())
    result = {"requests": args.requests, "streams": args.streams, "load": load_average(),
              "completed": summary["completed"], "failed": summary["failed"],
              "harness_peak_rss_mb": summary["harness"]["peak_rss_mb"], "samples": samples}
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    print(f"completed {summary['completed']}, failed {summary['failed']}, harness peak RSS "
          f"{summary['harness']['peak_rss_mb']:.0f} MB; {out / 'scale.json'}")


if __name__ == "__main__":
    main()
