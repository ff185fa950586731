# ---
# cmd: ["modal", "run", "-m", "modal_llm_serving.bench.modal_app", "--url", "https://..."]
# ---

# # Run `mls bench` inside Modal, next to the endpoint

# A benchmark run from a laptop measures the internet too: tens of milliseconds of round trip
# in every TTFT, and a home uplink in every throughput number. This app runs the very same harness
# (`modal_llm_serving.bench`) as a Modal Function pinned to a region, so the client sits in the
# endpoint's region and the numbers describe the server.
#
# The results (per-request JSONL, summary JSON, report and plots) come back to the machine that
# launched it, under `--out`.
#
# One container splits its streams over worker processes, one per core (`--workers`). Past what
# one container's cores can stamp on time (a few hundred streams per core), `--containers K`
# runs each load level from K containers at once: each runs its own part of the load (its
# share of the streams and requests, every K-th arrival of the one schedule), all start at one
# wall-clock moment, and their records come back merged into one run.

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal

if TYPE_CHECKING:
    from modal_llm_serving.bench.options import BenchOptions
    from modal_llm_serving.bench.summary import LevelSummary

MINUTES = 60  # seconds

# ## Where the client runs

# Pin the client to the endpoint's region (a Modal region name, e.g. `us-east`, `us-west`,
# `eu-west`); pinning costs more per CPU-second than an unpinned function, and is what keeps the
# network out of the numbers. Set `MLS_BENCH_REGION` when you launch to change it.
BENCH_REGION = os.environ.get("MLS_BENCH_REGION", "us-east")

# Two physical cores keep the client far from its own bottleneck at a few hundred streams
# (see docs/PERFORMANCE.md); the harness warns loudly if it still is one.
BENCH_CPU = 4.0
BENCH_MEMORY_MB = 2048
BENCH_TIMEOUT = 60 * MINUTES  # how long may one whole sweep take?
MAX_CONTAINERS = 64
# From launch to the shared start: time for K containers to boot and open their pools. A part
# that starts later says so in its summary ("LATE START").
START_MARGIN_S = 30.0

# ## The container image

# Only the harness's own dependencies, pinned; the package itself travels as local source.
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("click==8.5.1", "httpx==0.28.1", "aiohttp==3.14.5", "uvloop==0.23.0",
                 "matplotlib==3.11.2", "tokenizers==0.23.3")
    .add_local_python_source("modal_llm_serving")
)

app = modal.App("mls-bench-client")


# ## The benchmark function

# It takes the options as one checked value, made by `parse_options` as `mls bench run` makes
# it (Modal pickles it across; the package travels with the image), and returns the summaries
# plus every file the run wrote, so nothing is left behind in the container.
@app.function(image=image, region=BENCH_REGION, cpu=BENCH_CPU,  # type: ignore[untyped-decorator]
              memory=BENCH_MEMORY_MB, timeout=BENCH_TIMEOUT)
def run_in_region(options: BenchOptions) -> dict[str, Any]:
    import tempfile

    # a fresh folder per call, gone once its files are in the answer: a warm container may run
    # the next level of a sweep
    with tempfile.TemporaryDirectory(prefix="mls-bench-") as folder:
        return run_here(options, out_dir=Path(folder))


def run_here(options: BenchOptions, *, out_dir: Path) -> dict[str, Any]:
    """The function's body, runnable anywhere (tests call it locally against the mock)."""
    from modal_llm_serving.bench.api import run_bench
    from modal_llm_serving.bench.report import render_report
    from modal_llm_serving.redact import register_headers, register_url

    # this process's start: what it will send is what its results must never show
    register_headers(options.request_headers())
    register_url(options.base_url)

    summaries = run_bench(options, out_dir=out_dir)
    render_report(out_dir)
    files = {str(path.relative_to(out_dir)): path.read_bytes()
             for path in sorted(out_dir.rglob("*")) if path.is_file()}
    return {"summaries": [summary.to_dict() for summary in summaries], "files": files,
            "region": os.environ.get("MODAL_REGION")}


# ## Run it

# ```bash
# MLS_BENCH_REGION=us-east modal run -m modal_llm_serving.bench.modal_app \
#     --url https://you--app.modal.run --concurrency 1,8,32 --num-requests 200
# modal run -m modal_llm_serving.bench.modal_app --url https://you--app.modal.run \
#     --concurrency 2048 --num-requests 8192 --containers 4     # one run from 4 containers
# ```
# An API key is read from `MLS_API_KEY` on the launching machine and passed to the function
# (it is never written into the results).
@app.local_entrypoint()  # type: ignore[untyped-decorator]
def main(url: str, model: str = "", concurrency: str = "1", rate: str = "",
         num_requests: int = 100, input_len: str = "128", output_len: str = "128",
         out: str = "results/in-region", containers: int = 1) -> None:
    from modal_llm_serving.bench.options import parse_options
    from modal_llm_serving.display import terminal_text
    from modal_llm_serving.redact import register_environment, register_url

    register_environment(os.environ)  # this process's start (a CLI of its own)
    register_url(url)

    # parsed and checked here, once: the containers get the value, not these strings
    options = parse_options(url, model=model or None,
                            concurrency=None if rate else concurrency or None, rate=rate or None,
                            num_requests=num_requests, input_len=input_len,
                            output_len=output_len, api_key=os.environ.get("MLS_API_KEY"))
    folder = Path(out)
    if containers > 1:
        run_split(options, containers, folder, run_parts=lambda parts: list(
            run_in_region.map(parts)))
        print(terminal_text(f"ran in {BENCH_REGION} on {containers} containers; results in "
                            f"{folder}"))
        return
    result = run_in_region.remote(options)
    save_files(result["files"], folder)
    print(terminal_text(f"ran in {result['region'] or BENCH_REGION}; results in {folder}"))


def save_files(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ## Many containers, one run

# Each level runs on its own: the parts of a level must start together, and a sweep's next
# level starts when the slowest container has finished this one. `run_parts` runs one options
# value per container and returns their results (Modal's `.map`; the tests pass a local
# stand-in).
def run_split(options: BenchOptions, containers: int, folder: Path, *,
              run_parts: Callable[[list[BenchOptions]], list[dict[str, Any]]],
              start_margin_s: float = START_MARGIN_S) -> list[LevelSummary]:
    from modal_llm_serving.bench.options import check_split
    from modal_llm_serving.bench.results import prepare_out_dir
    from modal_llm_serving.errors import UsageError

    if not 1 <= containers <= MAX_CONTAINERS:
        raise UsageError(f"--containers {containers}: give 1 to {MAX_CONTAINERS}")
    check_split(options, containers)  # every level: at least one stream per container
    with prepare_out_dir(folder):  # held until every part is merged and reported
        return _run_split(options, containers, folder, run_parts=run_parts,
                          start_margin_s=start_margin_s)


def _run_split(options: BenchOptions, containers: int, folder: Path, *,
               run_parts: Callable[[list[BenchOptions]], list[dict[str, Any]]],
               start_margin_s: float) -> list[LevelSummary]:
    from modal_llm_serving.bench.report import render_report
    from modal_llm_serving.bench.results import write_sweep
    from modal_llm_serving.bench.shards import merge_parts

    slugs = [level.slug for level in options.levels]
    summaries: list[LevelSummary] = []
    for level in options.levels:
        start = time.time() + start_margin_s
        parts = [dataclasses.replace(options, levels=(level,), part=((k, containers),),
                                     start_at_unix=start)
                 for k in range(containers)]
        level_dir = folder / level.slug if len(options.levels) > 1 else folder
        part_dirs = []
        for k, result in enumerate(run_parts(parts)):
            save_files(result["files"], level_dir / "parts" / str(k))
            part_dirs.append(level_dir / "parts" / str(k))
        summaries.append(merge_parts(dataclasses.replace(options, start_at_unix=start), level,
                                     part_dirs, level_dir))
        if len(options.levels) > 1:
            write_sweep(folder, slugs, summaries)
    render_report(folder)
    return summaries
