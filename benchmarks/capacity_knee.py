"""How close `mls bench run --search` lands to a known capacity, and how long it takes.

The mock (`--knee N`) serves N streams at a time and queues the rest first come first served, as
an engine with `--max-num-seqs N` does: its capacity is N streams (closed loop) or N / S
requests/s (open loop), S = TTFT + (tokens - 1) x ITL, the time a stream holds its slot. Below
the knee TTFT is the mock's TTFT; past it a request waits for a slot. Each case runs the search
as its own process (the `mls` command, as a user would) and prints one Markdown row.

    .venv/bin/python benchmarks/capacity_knee.py                  # every case
    .venv/bin/python benchmarks/capacity_knee.py --cases c16,rc16
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time

from _common import PYTHON, ROOT, load_average
from mockserver import MockProcess

TTFT_MS, ITL_MS, TOKENS = 20, 10, 16  # a slot is held S = 20 + 15 x 10 = 170 ms
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000
SLO = "ttft:p95:100ms"  # the queue adds up to S: a request that waits breaks it
# name: (knee, search, arrival, extra options)
CASES = {
    "c4": (4, "concurrency", None, ["--duration", "2"]),
    "c16": (16, "concurrency", None, ["--duration", "2"]),
    "c64": (64, "concurrency", None, ["--duration", "2"]),
    "rc16": (16, "rate", "constant", ["--rate", "10", "--duration", "4"]),
    "rp16": (16, "rate", "poisson", ["--rate", "10", "--duration", "4"]),
}


def run_case(name: str, out_root: str) -> dict[str, object]:
    knee, search, arrival, extra = CASES[name]
    truth = knee if search == "concurrency" else knee / SERVICE_S
    out = ROOT / out_root / name
    with MockProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS, knee=knee) as mock:
        argv = [str(PYTHON), "-m", "modal_llm_serving.cli", "bench", "run", mock.url,
                "--search", search, "--slo", SLO, "--input-len", "32", "--output-len",
                str(TOKENS), "--out", str(out), "--no-report", *extra]
        if arrival:
            argv += ["--arrival", arrival]
        started = time.monotonic()
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.monotonic() - started
    capacity = json.loads((out / "sweep.json").read_text())["capacity"]
    found = capacity["capacity"]
    return {"case": name, "truth": truth, "capacity": found,
            "error": None if found is None else found / truth - 1,
            "bracket": capacity["bracket"], "levels": len(capacity["levels"]),
            "tried": [row["slug"] for row in capacity["levels"]], "stopped": capacity["stopped"],
            "seconds": seconds, "load": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out_root = f"results/capacity-knee-{stamp}"
    print("| case | known capacity | found | error | bracket (held, failed) | levels tried | "
          "wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.cases.split(","):
        row = run_case(name, out_root)
        rows.append(row)
        bracket = row["bracket"]
        assert isinstance(bracket, dict)
        error = row["error"]
        print(f"| {name} | {row['truth']:.4g} | {row['capacity']} | "
              f"{'–' if error is None else f'{error:+.1%}'} | "
              f"{bracket['highest_pass']}, {bracket['lowest_fail']} | "
              f"{row['levels']}: {' '.join(map(str, row['tried']))} | {row['seconds']:.1f} |",
              flush=True)
    (ROOT / out_root / "capacity_knee.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
