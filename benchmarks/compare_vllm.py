"""Side by side on real local vLLM: `mls bench`, `vllm bench serve` and guidellm, same workload.

Starts vLLM here (the embedded SmolLM2-135M-Instruct by default), writes ONE prompt file with
exact token lengths (built with the server's /tokenize), and at each concurrency runs every tool
on it in turn (order rotated each repeat, so drift does not favour one tool). The served model id
is the checkpoint's folder, so guidellm (which loads its tokenizer from the model id) works
offline; guidellm takes synthetic prompts of the same token lengths (its file loader wants a
column mapping we do not guess).

Needs a quiet machine: other work on the CPUs moves every number.

    .venv/bin/python benchmarks/compare_vllm.py                    # c = 1,4,16; 2 repeats
    .venv/bin/python benchmarks/compare_vllm.py --streams 1,8 --repeats 3 --tools ours,vllm
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import signal
import statistics
from pathlib import Path
from typing import Any

from _common import ROOT, guidellm, load_average, ours, vllm_bench

from modal_llm_serving.bench.data import ServerTokenizer, parse_length, synthetic_prompts
from modal_llm_serving.local.serve import engine_build, local_command, resolve_model, start_server
from modal_llm_serving.recipes.files import recipe_path

KEYS = ("ttft_mean", "ttft_p50", "tpot_mean", "itl_mean", "output_tok_s")


def main() -> None:
    # SIGTERM must unwind the `with start_server(...)` below, or the engine outlives the script
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder [default: embedded SmolLM2]")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--tools", default="ours,vllm,guidellm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    args = parser.parse_args()
    tools = [tool.strip() for tool in args.tools.split(",")]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = ROOT / "results" / f"compare-vllm-{stamp}"
    out.mkdir(parents=True)
    path, _revision, _name = resolve_model(args.model, None)
    streams = [int(s) for s in args.streams.split(",")]
    # The online recipe's command, as `mls local serve` runs it, plus two benchmark settings:
    # no prefix caching (every tool sends the same prompts, and whichever ran second would
    # otherwise find their prefill cached) and enough sequences for the most streams.
    command = local_command(recipe_path("vllm_online"), model=path, served_model_name=path,
                            build=engine_build())
    argv = [*command.argv, "--no-enable-prefix-caching", "--max-num-seqs", str(max(streams))]
    command = dataclasses.replace(command, argv=argv)
    rows: list[dict[str, Any]] = []
    with start_server(command, kv_cache_gib=2, log_path=out / "vllm.log") as server:
        print(f"vLLM ready in {server.wait_ready(timeout=600):.0f} s at {server.base_url}",
              flush=True)
        tokenizer = ServerTokenizer(server.base_url, path, {})
        count = max(streams) * args.requests_per_stream
        prompts, exact = synthetic_prompts(
            tokenizer, count=count, input_len=parse_length(str(args.input_len), option="in"),
            output_len=parse_length(str(args.output_len), option="out"), seed=0)
        # ShareGPT form: vLLM 0.32's custom-JSONL loader needs pandas, its ShareGPT loader does
        # not; with a fixed output length both tools read the same prompts from it
        dataset = out / "prompts.sharegpt.json"
        dataset.write_text(json.dumps([{"conversations": [
            {"from": "human", "value": p.text}, {"from": "gpt", "value": "-"}]}
            for p in prompts]))
        print(f"{count} prompts, exact input length for {exact:.0%}", flush=True)
        # one warm-up pass so no tool pays for first-request compilation
        ours(server.base_url, out / "warmup", model=path, concurrency=2, requests=4,
             input_len=args.input_len, output_len=8)
        for repeat in range(args.repeats):
            order = tools[repeat % len(tools):] + tools[:repeat % len(tools)]
            for c in streams:
                requests = c * args.requests_per_stream
                for tool in order:
                    folder = out / f"{tool}-c{c}-r{repeat}"
                    common = {"concurrency": c, "requests": requests,
                              "input_len": args.input_len, "output_len": args.output_len}
                    before = load_average()
                    if tool == "ours":
                        row = ours(server.base_url, folder, model=path, dataset=dataset,
                                   **common)
                    elif tool == "vllm":
                        row = vllm_bench(server.base_url, folder, model=path,
                                         tokenizer=Path(path), dataset=dataset, **common)
                    else:
                        row = guidellm(server.base_url, folder, model=path, **common)
                    row.update(streams=c, repeat=repeat, key=tool,
                               load=f"{before} → {load_average()}")
                    rows.append(row)
                    print(f"{row['tool']:<20} c={c:<3} r={repeat} " + "  ".join(
                        f"{k}={row.get(k) or 0:.2f}" for k in KEYS) + f"  load {row['load']}",
                        flush=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    print("\n" + _table(rows, tools, streams))
    print(f"\nresults: {out}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _table(rows: list[dict[str, Any]], tools: list[str], streams: list[int]) -> str:
    lines = ["| streams | tool | TTFT mean (ms) | TTFT p50 (ms) | TPOT mean (ms) | ITL mean (ms) | "
             "output tok/s | Δ vs vllm bench serve (TTFT / TPOT / tok/s) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in streams:
        means: dict[str, dict[str, float]] = {}
        for tool in tools:
            chosen = [r for r in rows if r["streams"] == c and r["key"] == tool and r.get("ok")]
            means[tool] = {k: statistics.mean(r[k] for r in chosen if r.get(k) is not None)
                           for k in KEYS if any(r.get(k) is not None for r in chosen)}
        base = means.get("vllm", {})
        for tool in tools:
            m = means[tool]
            delta = " / ".join(
                f"{100 * (m[k] / base[k] - 1):+.1f}%" if k in m and base.get(k) else "–"
                for k in ("ttft_mean", "tpot_mean", "output_tok_s")) if tool != "vllm" else "–"
            cells = [f"{m[k]:.2f}" if k in m else "–" for k in KEYS]
            name = next((r["tool"] for r in rows if r["key"] == tool), tool)
            lines.append(f"| {c} | {name} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
