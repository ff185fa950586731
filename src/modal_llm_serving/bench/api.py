"""`mls bench run` as one library call: resolve the model, build prompts, run each level, save.

>>> options = parse_options("http://127.0.0.1:8000", concurrency="1,8,32")  # doctest: +SKIP
>>> run_bench(options, out_dir=Path("results/x"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from modal_llm_serving.bench.data import (
    PREFLIGHT_S,
    LengthSpec,
    Prompt,
    Tokenizer,
    load_jsonl,
    load_sharegpt,
    make_tokenizer,
    shared_prefix_prompts,
    synthetic_prompts,
)
from modal_llm_serving.bench.engine import Scraper, engine_summary, write_timeline
from modal_llm_serving.bench.options import BenchOptions, Level
from modal_llm_serving.bench.results import (
    JsonlSink,
    new_out_dir,
    prepare_out_dir,
    rebuild_summary,
    write_summary,
    write_sweep,
)
from modal_llm_serving.bench.runner import Progress
from modal_llm_serving.bench.shards import choose_workers, run_level
from modal_llm_serving.bench.summary import Context, LevelSummary
from modal_llm_serving.bench.trace import load_trace, trace_prompts
from modal_llm_serving.endpoint.client import OpenAIClient, raise_if_client_side
from modal_llm_serving.errors import EndpointError, MlsError, UsageError
from modal_llm_serving.local.cpu_info import usable_cores
from modal_llm_serving.redact import redact_url

__all__ = ["prepare_prompts", "resolve_model", "run_bench", "run_benchmark"]


def resolve_model(base_url: str, model: str | None, *, headers: dict[str, str],
                  timeout_s: float = PREFLIGHT_S) -> tuple[str, list[str] | None]:
    """The model to send (given, or the only one served) and the served list, if it answered
    within `timeout_s` in all."""
    served: list[str] | None = None
    try:
        with OpenAIClient(base_url, headers=headers, timeout=timeout_s) as client:
            served = client.models()
    except EndpointError:  # an error status, an odd answer, or none by the deadline
        served = None
    except httpx.HTTPError as exc:
        raise_if_client_side(exc, base_url)
        served = None
    if model:
        return model, served
    if served is None:
        raise UsageError(f"could not list models at {redact_url(base_url)}/v1/models (is the URL "
                         "right and the server up?); pass --model to run anyway")
    if len(served) != 1:
        raise UsageError(f"{redact_url(base_url)} serves {len(served)} models "
                         f"({', '.join(served) or 'none'}); pick one with --model")
    return served[0], served


def prepare_prompts(options: BenchOptions, *, model: str, count: int) -> tuple[
        list[Prompt], dict[str, Any]]:
    """The prompt pool and a description of it (tokenizer used, exactness) for the summary."""
    tokenizer = make_tokenizer(base_url=options.base_url, model=model,
                               headers=options.request_headers(), tokenizer=options.tokenizer,
                               timeout_s=min(PREFLIGHT_S, options.timeout_s))
    try:
        return _prompt_pool(options, tokenizer, count=count)
    finally:
        tokenizer.close()  # the server tokenizer holds a connection pool


def _prompt_pool(options: BenchOptions, tokenizer: Tokenizer, *,
                 count: int) -> tuple[list[Prompt], dict[str, Any]]:
    info: dict[str, Any] = {"tokenizer_source": tokenizer.source,
                            "dataset": options.dataset_format}
    size = max(1, min(count, options.prompt_pool))
    if options.trace is not None:
        sessions = load_trace(options.trace)
        prompts, exact = trace_prompts(tokenizer, sessions, seed=options.seed)
        info.update(trace_path=str(options.trace), trace_sessions=len(sessions),
                    trace_duration_s=max(turns[-1].timestamp_s for turns in sessions),
                    output_len="from the trace", exact_input_fraction=exact)
    elif options.dataset_format == "synthetic":
        output_len = options.output_len or LengthSpec("fixed", 128)
        if options.shared_prefix is not None:
            prefixes, prefix_len = options.shared_prefix
            prompts, exact = shared_prefix_prompts(
                tokenizer, count=size, prefixes=prefixes, prefix_len=prefix_len,
                input_len=options.input_len, output_len=output_len, seed=options.seed)
            info.update(shared_prefixes=prefixes, shared_prefix_len=prefix_len,
                        shared_prefix_share=prefix_len / (prefix_len + options.input_len.mean))
        else:
            prompts, exact = synthetic_prompts(tokenizer, count=size,
                                               input_len=options.input_len,
                                               output_len=output_len, seed=options.seed)
        info.update(input_len=str(options.input_len), output_len=str(output_len),
                    exact_input_fraction=exact)
    else:
        assert options.dataset is not None
        if options.dataset_format == "jsonl":
            prompts = load_jsonl(options.dataset, tokenizer=tokenizer,
                                 output_len=options.output_len, seed=options.seed)
        else:
            prompts = load_sharegpt(options.dataset, tokenizer=tokenizer,
                                    output_len=options.output_len, seed=options.seed,
                                    limit=size)
        info.update(dataset_path=str(options.dataset),
                    output_len=str(options.output_len) if options.output_len else "from data")
    info["prompt_pool"] = len(prompts)
    info["mean_input_len"] = sum(p.input_len for p in prompts) / len(prompts)
    info["mean_output_len"] = sum(p.output_len for p in prompts) / len(prompts)
    return prompts, info


def run_bench(options: BenchOptions, *, out_dir: Path | None = None, overwrite: bool = False,
              on_out_dir: Callable[[Path], None] | None = None,
              progress: Callable[[Level, Progress], None] | None = None,
              on_level: Callable[[Level, LevelSummary], None] | None = None,
              on_info: Callable[[str], None] | None = None) -> list[LevelSummary]:
    """`mls bench run` as one call: claim the output folder (`out_dir`, or a new
    `results/bench-<time>`; told to `on_out_dir`) before any work, so no other run writes
    there while this one does; then run every level and save it. A run that fails before
    writing anything leaves no folder behind."""
    created = out_dir is None or not out_dir.is_dir()
    if out_dir is None:
        out_dir = new_out_dir(Path("results"), "bench")
    claim = prepare_out_dir(out_dir, overwrite=overwrite)
    try:
        if on_out_dir:
            on_out_dir(out_dir)
        return run_benchmark(options, out_dir=out_dir, progress=progress, on_level=on_level,
                             on_info=on_info)
    except BaseException:
        claim.release()
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if still empty: whatever finished stays
        raise
    finally:
        claim.release()


def run_benchmark(options: BenchOptions, *, out_dir: Path,
                  progress: Callable[[Level, Progress], None] | None = None,
                  on_level: Callable[[Level, LevelSummary], None] | None = None,
                  on_info: Callable[[str], None] | None = None) -> list[LevelSummary]:
    """Run every level (each to its bounds), or the capacity search of `options.search`, and
    save results; return the level summaries."""
    model, served = resolve_model(options.base_url, options.model,
                                  headers=options.request_headers(),
                                  timeout_s=min(PREFLIGHT_S, options.timeout_s))
    say = on_info or (lambda _m: None)
    if served is not None and model not in served:
        say(f"warning: {model!r} is not among the served models ({', '.join(served)}); "
            "requests will likely fail with 404")
    options = dataclasses.replace(options, model=model)
    prompts, data_info = prepare_prompts(options, model=model,
                                         count=options.num_requests or options.prompt_pool)
    say(f"prompts: {len(prompts)} ({data_info['tokenizer_source']})")
    out_dir.mkdir(parents=True, exist_ok=True)

    def run_one(level: Level, folder: Path) -> LevelSummary:
        summary = _run_level(options, level, folder, prompts, data_info, progress=progress)
        if on_level:
            on_level(level, summary)
        return summary

    if options.search is not None:
        from modal_llm_serving.bench.search import run_search

        return run_search(options, out_dir=out_dir, run_one=run_one, on_info=say)
    levels = options.levels
    summaries: list[LevelSummary] = []
    slugs = [level.slug for level in levels]
    if len(levels) > 1:  # from the start: an interrupted sweep still names its levels
        write_sweep(out_dir, slugs, summaries)
    for level in levels:
        summaries.append(run_one(level, out_dir / level.slug if len(levels) > 1 else out_dir))
        if len(levels) > 1:
            write_sweep(out_dir, slugs, summaries)
    return summaries


def _run_level(options: BenchOptions, level: Level, folder: Path, prompts: list[Prompt],
               data_info: dict[str, Any], *,
               progress: Callable[[Level, Progress], None] | None) -> LevelSummary:
    """One level to its bounds, the engine's /metrics scraped meanwhile; its records, engine
    timeline and summary saved in `folder`."""
    level_progress = None
    if progress is not None:
        level_progress = functools.partial(progress, level)
    workers = choose_workers(options, level, cores=usable_cores())
    level_options = dataclasses.replace(options, workers=workers)
    scraper = _start_scraper(options)
    try:
        with JsonlSink(folder / "requests.jsonl") as sink:
            try:
                summary = run_level(level_options, level, prompts, sink=sink,
                                    progress=level_progress)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: keep and summarize what ended
                _save_interrupted(sink, folder)
                raise
    except BaseException:
        with contextlib.suppress(MlsError):  # the first failure is the one to tell
            _stop_scraper(scraper, folder)
        raise
    engine = _stop_scraper(scraper, folder)
    summary = dataclasses.replace(summary, engine=engine, context=Context(
        date=dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"), data=data_info,
        python=platform.python_version(), platform=sys.platform))
    write_summary(folder, summary)
    return summary


def _start_scraper(options: BenchOptions) -> Scraper | None:
    """The engine's /metrics scraped while a level runs (engine.py): by one part of a load only
    (the first container of the in-region app), and not when --scrape-interval is 0."""
    if not options.scrape_interval_s or any(k for k, _n in options.part):
        return None
    scraper = Scraper(options.base_url, options.request_headers(),
                      interval_s=options.scrape_interval_s)
    scraper.start()
    return scraper


def _stop_scraper(scraper: Scraper | None, folder: Path) -> dict[str, Any] | None:
    """Stop scraping; the timeline saved beside the records, and the level's engine view."""
    if scraper is None:
        return None
    scraper.stop()
    if scraper.snapshots:
        write_timeline(folder / "engine_metrics.jsonl", scraper.snapshots)
    return engine_summary(scraper.snapshots, unavailable=scraper.unavailable,
                          failed=scraper.failed, interval_s=scraper.interval_s)


def _save_interrupted(sink: JsonlSink, folder: Path) -> None:
    """An interrupted level's records on disk and its summary rebuilt from them (marked so)."""
    with contextlib.suppress(MlsError, OSError):  # the interrupt is what the user hears of
        sink.close()
        if sink.count:
            rebuild_summary(folder, why="interrupted")
