"""Local serving speed of the online recipe's command against variants of its settings.

    .venv/bin/python benchmarks/local_settings.py [--rounds 2] [--requests 16]
        [--variant small="--max-model-len 2048 --max-num-seqs 16"]

Side by side in one run, alternating: the command `mls local serve` runs (the online recipe's
own, CPU-transformed) and the same with some flags replaced. Each variant is started through the
same launcher with the embedded SmolLM2; output tokens/s over fixed 128-token greedy replies at 1
and 8 streams, readiness time and memory, as in `local_overhead.py`. Answers "does serving the
recipe's settings here cost speed?" with numbers from one machine and one moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
from local_overhead import stop, throughput, tree_pss_mib, wait_models

from modal_llm_serving.local.argv import with_value
from modal_llm_serving.local.embedded_model import DEFAULT_MODEL_ID, ensure_default_model
from modal_llm_serving.local.serve import (
    DEFAULT_KV_CACHE_GIB,
    engine_build,
    free_port,
    launcher_argv,
    local_command,
)
from modal_llm_serving.recipes.files import recipe_path


def replace_flags(argv: list[str], changes: list[str]) -> list[str]:
    """`argv` with each `--flag value` of `changes` replacing the flag's value (or appended)."""
    for index in range(0, len(changes), 2):
        argv = with_value(argv, changes[index], changes[index + 1])
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16, help="per stream count")
    parser.add_argument("--variant", action="append", metavar='NAME="[ENV=V ...] --flag v ..."',
                        default=[], help="a variant of the recipe's command: environment "
                                         "variables for the engine, then flags (repeatable)")
    parser.add_argument("--streams", default="1,8", help="stream counts to measure, e.g. 1,4,8")
    parser.add_argument("--out", type=Path, default=Path("results/local_settings.json"))
    args = parser.parse_args()
    variants: dict[str, list[str]] = {"recipe": []}
    for spec in args.variant or ['small="--max-model-len 2048 --max-num-seqs 16"']:
        name, _, flags = spec.partition("=")
        variants[name] = shlex.split(flags.strip('"'))
    streams_list = [int(s) for s in args.streams.split(",")]
    model = str(ensure_default_model())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load_before": os.getloadavg(), "variants": variants, "runs": []}
    runs: list[dict[str, object]] = record["runs"]  # type: ignore[assignment]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(DEFAULT_KV_CACHE_GIB),
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    for round_index in range(args.rounds):
        for name, changes in variants.items():
            port = free_port()
            command = local_command(recipe_path("vllm_online"), model=model,
                                    served_model_name=DEFAULT_MODEL_ID, port=port,
                                    build=engine_build())
            settings = [c for c in changes if re.match(r"^[A-Z_][A-Z0-9_]*=", c)]
            flags = [c for c in changes if c not in settings]
            argv = launcher_argv(replace_flags(command.argv, flags))
            variant_env = {**env, **dict(s.split("=", 1) for s in settings)}
            log = args.out.parent / f"local_settings-{name}.log"
            with log.open("wb") as handle:
                process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                           start_new_session=True, env=variant_env)
            base = f"http://127.0.0.1:{port}"
            try:
                run: dict[str, object] = {"round": round_index, "variant": name,
                                          "ready_s": round(wait_models(base, process), 1)}
                for streams in streams_list:
                    rate = asyncio.run(throughput(base, streams, args.requests * streams // 2))
                    run[f"tok_s_{streams}"] = round(rate, 1)
                run["pss_mib"] = round(tree_pss_mib(process.pid), 0)
            finally:
                stop(process)
            runs.append(run)
            print(json.dumps(run), flush=True)
            args.out.write_text(json.dumps(record, indent=2))
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        means = {s: sum(float(r[f"tok_s_{s}"]) for r in mine) / len(mine)  # type: ignore[arg-type]
                 for s in streams_list}
        print(f"{name}: " + ", ".join(f"{means[s]:.1f} tok/s at {s} streams"
                                      for s in streams_list))
        record[f"mean_{name}"] = means
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(main())
