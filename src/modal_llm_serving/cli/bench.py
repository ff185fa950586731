"""`mls bench run|report|cold-start`: benchmark an OpenAI-compatible streaming endpoint."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from modal_llm_serving.cli.options import (
    P,
    R,
    echo_json,
    header_option,
    proxy_auth_options,
    request_headers,
    say,
    say_over,
)
from modal_llm_serving.cli.params import LONGEST_WAIT_S, SECRET, URL, Finite
from modal_llm_serving.cli.root import cli, interrupted
from modal_llm_serving.errors import MlsError


@cli.group()
def bench() -> None:
    """Benchmark an OpenAI-compatible streaming endpoint (TTFT, TPOT, ITL, E2EL, throughput).

    \b
    mls bench run URL --concurrency 1,8,32 -n 200     closed-loop sweep
    mls bench run URL --rate 2,4 --duration 60         open loop (Poisson), from the schedule
    mls bench run URL --trace trace.jsonl              replay a trace on its own clock
    mls bench run URL --search concurrency --slo ttft:p95:500ms   capacity at an SLO
    mls bench report results/bench-...                 re-render a saved run
    mls bench compare results/before results/after     side by side, with the noise
    mls bench cold-start URL --repeat 3 --wait 900     time to first token from zero
    """


def _bench_common(command: Callable[P, R]) -> Callable[P, R]:
    """Options every bench command shares: who to talk to and how."""
    options: list[Callable[[Any], Any]] = [
        click.option("--model", help="Model id [default: the only served model]."),
        click.option("--api-key", envvar="MLS_API_KEY", type=SECRET,
                     help="Bearer key for /v1 routes [env MLS_API_KEY]."),
        header_option("Extra header on every request (repeatable)."),
        proxy_auth_options,
        click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat",
                     show_default=True, help="/v1/chat/completions or /v1/completions."),
        click.option("--json", "json_", is_flag=True, help="Print the summary as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cost_options(command: Callable[P, R]) -> Callable[P, R]:
    """Which GPUs served the endpoint, for the measured cost per million tokens."""
    existing = click.Path(exists=True, dir_okay=False, path_type=Path)
    options: list[Callable[[Any], Any]] = [
        click.option("--gpu", "cost_gpu", metavar="TYPE",
                     help="Cost: the GPU type one container holds, e.g. H100 (catalog price)."),
        click.option("--gpus", "cost_gpus", type=click.IntRange(1, 64), metavar="N",
                     help="Cost: GPUs per container [default: 1]."),
        click.option("--region", "cost_region",
                     help="Cost: the region the app is pinned to (the price multiplier)."),
        click.option("--app", "cost_app", type=existing,
                     help="Cost: read GPU type, count and region from this app file."),
        click.option("--plan", "cost_plan", type=existing,
                     help="Cost: GPUs and price from `mls plan --json` output, and its "
                          "predicted $/M output tokens beside the measured."),
        click.option("--gpu-catalog", "cost_catalog", envvar="MLS_GPU_CATALOG", type=existing,
                     help="Cost: TOML file overriding GPU prices [env MLS_GPU_CATALOG]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _pricing(options: dict[str, Any]) -> Any:
    """The Pricing the cost options give (None without any); they leave `options`."""
    from modal_llm_serving.bench.cost import choose_pricing

    return choose_pricing(gpu=options.pop("cost_gpu"), n_gpu=options.pop("cost_gpus"),
                          region=options.pop("cost_region"), app=options.pop("cost_app"),
                          plan=options.pop("cost_plan"), gpu_catalog=options.pop("cost_catalog"))


@bench.command("run")
@click.argument("url", type=URL)
@_bench_common
@click.option("--concurrency", "-c", metavar="N[,N...]",
              help="Closed loop: requests in flight; a comma list sweeps [default: 1].")
@click.option("--rate", "-r", metavar="R[,R...]",
              help="Open loop: requests/s (inf = all at once); a comma list sweeps.")
@click.option("--arrival", type=click.Choice(["poisson", "constant", "gamma"]),
              default="poisson", show_default=True, help="Open-loop arrival process.")
@click.option("--burstiness", type=Finite(0, 1e6, min_open=True), default=1.0, show_default=True,
              help="Gamma shape (1 = Poisson, < 1 burstier).")
@click.option("--max-concurrency", type=click.IntRange(1, 100_000),
              help="Open loop: cap on requests in flight.")
@click.option("--num-requests", "-n", type=click.IntRange(1, 1_000_000_000),
              help="Requests per level [default: 100 unless --duration].")
@click.option("--duration", type=Finite(0, LONGEST_WAIT_S, min_open=True),
              help="Seconds per level; no new request starts after it.")
@click.option("--warmup", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds at the start excluded from the measurement window.")
@click.option("--cooldown", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds at the end excluded from the measurement window.")
@click.option("--input-len", default="128", show_default=True, metavar="SPEC",
              help="Prompt tokens: N, uniform:MIN:MAX or normal:MEAN:STD.")
@click.option("--output-len", metavar="SPEC",
              help="Output tokens (same forms) [default: 128, or from the dataset].")
@click.option("--dataset", type=click.Path(dir_okay=False, path_type=Path),
              help="Prompts: JSONL ({prompt, output_tokens} or {messages}) or ShareGPT JSON.")
@click.option("--tokenizer", help="Local tokenizer folder or Hub id [default: the server's "
                                  "/tokenize].")
@click.option("--turns", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Turns per conversation (multi-turn sessions reuse their prefix).")
@click.option("--session-header", default="Modal-Session-ID", show_default=True,
              help="Header carrying one id per conversation (sticky routing) when --turns > 1.")
@click.option("--shared-prefix", metavar="N:LEN",
              help="Prompts open with one of N shared system prompts of LEN tokens (a prefix "
                   "the server can cache), then their own --input-len tokens.")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path),
              help="Replay a JSONL trace ({timestamp, input_len, output_len, session_id?} "
                   "per line) on its own clock, an open loop.")
@click.option("--trace-speed", metavar="X[,X...]",
              help="Replay --trace X times as fast; a comma list sweeps [default: 1].")
@click.option("--scrape-interval", type=Finite(0, 3600), default=1.0, show_default=True,
              help="Seconds between scrapes of the engine's /metrics while a level runs "
                   "(0: none).")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Ask for exactly the output length (vLLM/SGLang ignore_eos).")
@click.option("--min-tokens", is_flag=True,
              help="Also send min_tokens = output length (servers without ignore_eos).")
@click.option("--slo", "slos", multiple=True, metavar="METRIC:PCT:LIMIT",
              help="SLO for goodput and --search, e.g. --slo ttft:p95:500ms --slo tpot:p50:50ms "
                   "(ttft, tpot, e2el; p50, p90, p95, p99; ms or s); vLLM's ttft:500 counts "
                   "toward goodput only.")
@click.option("--search", type=click.Choice(["concurrency", "rate"]),
              help="Find the highest concurrency (closed loop) or rate (open loop) at which "
                   "every --slo holds, from --concurrency/--rate (one value) or 1.")
@click.option("--max-level", type=Finite(0, 1e9, min_open=True), metavar="V",
              help="--search: the highest concurrency or rate to try.")
@click.option("--search-levels", type=click.IntRange(2, 64), default=12, show_default=True,
              help="--search: at most this many levels.")
@click.option("--search-time", type=Finite(0, LONGEST_WAIT_S, min_open=True), metavar="S",
              help="--search: start no level after S seconds.")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=600.0,
              show_default=True, help="Seconds a request may take in all.")
@click.option("--stall-timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True),
              default=120.0,
              show_default=True, help="Seconds a stream may go without a byte.")
@click.option("--retries", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Retries of a 429/503 answer (each attempt counted in the record).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Prompts and arrivals.")
@click.option("--transport", type=click.Choice(["raw", "aiohttp", "httpx"]), default="raw",
              show_default=True, help="HTTP client (raw measured lowest overhead).")
@click.option("--workers", type=click.IntRange(1, 256), metavar="N",
              help="Processes the streams are split over, each with its own event loop "
                   "[default: one per 128 streams, at most one per core].")
@click.option("--prewarm/--no-prewarm", default=True, show_default=True,
              help="Open the pool's connections before the clock starts (raw transport); "
                   "--no-prewarm counts first-request handshakes, as vllm bench serve does.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder [default: results/bench-<UTC time>].")
@click.option("--overwrite", is_flag=True,
              help="Replace the results already in --out (without it, a used folder is refused).")
@click.option("--no-report", is_flag=True, help="Skip the Markdown report and plots.")
@_cost_options
def bench_run(url: str, headers: tuple[str, ...], proxy_token_id: str | None,
              proxy_token_secret: str | None, json_: bool, out: Path | None, overwrite: bool,
              no_report: bool, **options: Any) -> None:
    """Benchmark the endpoint at URL; write per-request JSONL, summary JSON and a report.

    Each level of a sweep runs to its bounds (--num-requests and/or --duration). Progress shows
    on stderr; results are written as requests finish, so Ctrl-C keeps what finished. With
    --search, the levels are chosen one by one until the capacity at the SLOs is bracketed
    (sweep.json's "capacity"; exit 1 if no level held them).
    """
    from modal_llm_serving.bench.api import run_bench
    from modal_llm_serving.bench.cost import attach_cost, level_cost
    from modal_llm_serving.bench.options import parse_options
    from modal_llm_serving.bench.report import render_report, summary_lines
    from modal_llm_serving.bench.summary import LevelSummary

    pricing = _pricing(options)  # before any request: a bad app file or plan is one line
    bench_options = parse_options(
        url, headers=request_headers(headers, proxy_token_id, proxy_token_secret), **options)
    chosen: list[Path] = []

    def saved(summary: LevelSummary) -> dict[str, Any]:
        data = summary.to_dict()
        if pricing is not None:
            data["cost"] = level_cost(data, pricing)
        return data

    def on_level(level: Any, summary: LevelSummary) -> None:
        if not json_:
            say("", *summary_lines(saved(summary)))

    try:
        summaries = run_bench(
            bench_options, out_dir=out, overwrite=overwrite, on_out_dir=chosen.append,
            progress=_bench_progress(), on_info=lambda message: say(message, err=True),
            on_level=on_level)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (cli/root.py)
        words, code = interrupted()
        if pricing is not None and chosen and chosen[0].is_dir():
            with contextlib.suppress(MlsError, OSError):  # the interrupt is what is told
                attach_cost(chosen[0], pricing)
        if chosen and chosen[0].is_dir():
            say("", f"{words}: finished requests and their summary are in {chosen[0]} "
                f"(`mls bench report {chosen[0]}` renders the report)", err=True)
        else:
            say("", f"{words} before any request finished", err=True)
        sys.exit(code)
    out = chosen[0]
    if pricing is not None:
        attach_cost(out, pricing)
    if not no_report:
        say(f"report: {render_report(out)}", err=True)
    say(f"results: {out}", err=True)
    if bench_options.search is not None:
        _capacity_outcome(out, json_=json_)
        return
    if json_:
        dicts = [saved(summary) for summary in summaries]
        echo_json(dicts[0] if len(dicts) == 1 else dicts)
    if any(summary.measured.completed == 0 for summary in summaries):
        say("no request succeeded at some level; see the errors above", err=True)
        sys.exit(1)


def _capacity_outcome(out: Path, *, json_: bool) -> None:
    """A search's result: its sweep.json with --json; exit 1 when no level held the SLOs (the
    levels that failed on the way are the search working, not a failed run)."""
    from modal_llm_serving.bench.cost import capacity_cost_line
    from modal_llm_serving.bench.results import read_sweep

    sweep = read_sweep(out)
    if json_:
        echo_json(sweep)
    elif (cost := capacity_cost_line(sweep["capacity"], out)) is not None:
        say(cost)
    if sweep["capacity"]["capacity"] is None:
        say("no level held every SLO; see the levels above", err=True)
        sys.exit(1)


def _bench_progress() -> Callable[[Any, Any], None]:
    interactive = sys.stderr.isatty()
    last = [0.0]

    def show(level: Any, snap: Any) -> None:
        target = (f"/{snap.target}" if snap.target else
                  f" of {snap.duration_s:g} s" if snap.duration_s else "")
        line = (f"{level.slug}: {snap.elapsed_s:6.1f} s  done {snap.done}{target}  failed "
                f"{snap.failed}  in flight {snap.in_flight}  {snap.output_tok_s:8.1f} tok/s")
        if interactive:
            say_over(f"{line:<90}")
        elif snap.elapsed_s - last[0] >= 10:
            last[0] = snap.elapsed_s
            say(line, err=True)

    return show


@bench.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_", is_flag=True, help="Print the saved summary as JSON.")
@_cost_options
def bench_report(folder: Path, json_: bool, **options: Any) -> None:
    """Re-render report.md and plots of a saved run (or sweep) FOLDER.

    With --gpu/--gpus, --app or --plan, the cost per million tokens is added to its summaries.
    """
    from modal_llm_serving.bench.cost import attach_cost
    from modal_llm_serving.bench.report import render_report, summary_lines
    from modal_llm_serving.bench.results import read_summary, read_sweep

    def read_results() -> Any:
        return read_sweep(folder) if (folder / "sweep.json").is_file() else read_summary(folder)

    pricing = _pricing(options)
    if json_:
        read_results()  # what --json prints must be readable before anything is written
    if pricing is not None:
        attach_cost(folder, pricing)
    path = render_report(folder)
    if json_:
        echo_json(read_results())  # again: with the cost just attached
        return
    from modal_llm_serving.bench.capacity import capacity_lines, read_capacity
    from modal_llm_serving.bench.cost import capacity_cost_line

    if (capacity := read_capacity(folder)) is not None:
        say(*capacity_lines(capacity))
        if (cost := capacity_cost_line(capacity, folder)) is not None:
            say(cost)
    if not (folder / "sweep.json").is_file():
        summary = read_summary(folder)
        say(*summary_lines(summary))
        if skipped := summary.get("skipped_lines"):  # a run cut off mid-write, or an edit
            one = skipped == 1
            say(f"note: {skipped} line{'' if one else 's'} of requests.jsonl "
                f"{'is' if one else 'are'} not a whole record; left out of the summary")
    say(f"report: {path}")


@bench.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RUN RUN [RUN...]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for compare.md, compare.json and plots [default: "
                   "results/compare-<UTC time>]; a new or empty one.")
@click.option("--min-diff", type=Finite(0, 1000), default=5.0, show_default=True,
              metavar="PCT", help="Smallest change (percent of the baseline) that counts.")
@click.option("--json", "json_", is_flag=True, help="Print the comparison as JSON.")
def bench_compare(runs: tuple[str, ...], out: Path | None, min_diff: float,
                  json_: bool) -> None:
    """Compare saved runs (or sweeps) level by level against the first, with each difference's
    noise (bootstrap interval from the per-request records, and repeats).

    \b
    mls bench compare results/before results/after
    mls bench compare before-1,before-2 after-1,after-2    repeats of each setting
    """
    from modal_llm_serving.bench.compare import compare_sides, read_side
    from modal_llm_serving.bench.compare_report import comparison_lines, write_comparison

    if len(runs) < 2:
        raise click.UsageError("give two or more results folders to compare")
    if len(runs) > 26:
        raise click.UsageError(f"{len(runs)} runs; compare at most 26 at once")
    sides = [read_side(chr(ord("A") + index), [Path(part) for part in run.split(",") if part])
             for index, run in enumerate(runs)]
    comparison = compare_sides(sides, min_diff_pct=min_diff)
    folder = write_comparison(comparison, sides, out=out)
    if json_:
        echo_json(comparison)
    else:
        say(*comparison_lines(comparison))
    say(f"comparison: {folder / 'compare.md'}", err=True)


@bench.command("cold-start")
@click.argument("url", type=URL)
@_bench_common
@click.option("--repeat", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Trials.")
@click.option("--wait", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds between trials (let the endpoint scale back to zero).")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=900.0,
              show_default=True, help="Seconds a trial may wait for its first token.")
@click.option("--since", type=Finite(0, 1e11), metavar="UNIX_SECONDS",
              help="Start the first trial's clock at this past moment (e.g. `date +%s.%N` "
                   "taken when the deploy returned) [default: now].")
def bench_cold_start(url: str, model: str | None, api_key: str | None, headers: tuple[str, ...],
                     proxy_token_id: str | None, proxy_token_secret: str | None,
                     endpoint: str, json_: bool, repeat: int, wait: float,
                     timeout: float, since: float | None) -> None:
    """Time from now to the first token at URL, retrying 503s and connection errors."""
    from modal_llm_serving.bench.coldstart import run_cold_start
    from modal_llm_serving.endpoint.client import normalize_base_url

    base_url = normalize_base_url(url)
    if model is None:
        raise click.UsageError("--model is required: a scaled-to-zero endpoint cannot list its "
                               "models before it is up")
    result = run_cold_start(base_url=base_url, model=model, api_key=api_key,
                            headers=request_headers(headers, proxy_token_id,
                                                    proxy_token_secret),
                            endpoint=endpoint, repeat=repeat,
                            wait_s=wait, timeout_s=timeout, since_epoch_s=since,
                            on_event=lambda message: say(message, err=True))
    if json_:
        echo_json(result)
    else:
        seconds = result["seconds_to_first_token"]
        if seconds["n"]:
            say(f"time to first token (n={seconds['n']}): median {seconds['median']:.2f} s,"
                f" min {seconds['min']:.2f} s, max {seconds['max']:.2f} s "
                f"({result['definition']})")
    if result["failed"]:
        sys.exit(1)
