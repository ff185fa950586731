"""A load level's summary as one typed value, and the one place it becomes JSON (`to_dict`).

summary.json keeps `vllm bench serve`'s key names where the meaning is the same (duration,
completed, request_throughput, mean_ttft_ms, p99_itl_ms, max_concurrency, request_rate, ...),
ours otherwise. The value is built by `runner.summarize` (for a run), `shards.merge_parts` (for
a run merged from the in-region app's containers) and `results.rebuild_summary` (for an
interrupted run's JSONL). Readers (the report, `mls bench report`) read the saved JSON, so
summaries written by older versions still render.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from modal_llm_serving.bench.metrics import FORMULAS, Measured
from modal_llm_serving.bench.options import RETRY_STATUSES, BenchOptions, Level
from modal_llm_serving.redact import redact_headers, redact_url

__all__ = ["Context", "LevelRun", "LevelSummary"]


@dataclasses.dataclass(frozen=True)
class LevelRun:
    """What ran: the options (model resolved, workers chosen), the level, and how it went out."""

    options: BenchOptions
    level: Level
    num_prompts: int  # requests sent
    workers: int  # processes (of all containers, for a merged run)
    # the JSONL's stamps count from this perf_counter_ns() reading (CLOCK_MONOTONIC on Linux:
    # comparable with another local process's stamps, as the calibration does); None for a
    # merged run, whose containers each counted from their own clock's zero
    t0_perf_counter_ns: int | None
    containers: int | None = None  # a run merged from the in-region app's containers


@dataclasses.dataclass(frozen=True)
class Context:
    """Where the numbers come from, beyond the options: when, which prompts, which client."""

    date: str  # UTC, YYYYmmdd-HHMMSS
    data: dict[str, Any]  # the prompt pool, as api.prepare_prompts describes it
    python: str
    platform: str


@dataclasses.dataclass(frozen=True)
class LevelSummary:
    """One load level: its numbers, the client's health, and what ran."""

    measured: Measured
    harness: dict[str, Any]  # the client's own health and its warnings (health.py)
    label: str
    run: LevelRun | None  # None: rebuilt from requests.jsonl alone
    context: Context | None = None  # set when the level is saved
    engine: dict[str, Any] | None = None  # the engine's own view (engine.py), if scraped
    skipped_lines: int | None = None  # rebuilt: JSONL lines that were not records

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content (NaN and inf are made JSON by results.write_json)."""
        out = _measured(self.measured)
        out["harness"] = self.harness
        run = self.run
        if run is not None:
            options, level = run.options, run.level
            if run.t0_perf_counter_ns is not None:
                out["t0_perf_counter_ns"] = run.t0_perf_counter_ns
            out["max_concurrency"] = level.concurrency or options.max_concurrency
            out["request_rate"] = (None if level.rate is None else
                                   "inf" if math.isinf(level.rate) else level.rate)
            out["burstiness"] = options.burstiness
            out["num_prompts"] = run.num_prompts
            out["model_id"] = options.model or ""
            out["endpoint_type"] = _endpoint_type(options)
        out["label"] = self.label
        if run is not None:
            out["workers"] = run.workers
        if run is not None and self.context is not None:
            out.update(_context(run, self.context))
        if run is not None and run.containers is not None:
            out["containers"] = run.containers
        if self.engine is not None:
            out["engine"] = self.engine
        if self.skipped_lines is not None:
            out.update(rebuilt_from_jsonl=True, skipped_lines=self.skipped_lines,
                       formulas=FORMULAS)
        return out


def _measured(measured: Measured) -> dict[str, Any]:
    m = measured
    out: dict[str, Any] = {
        "duration": m.duration,
        "completed": m.completed,
        "failed": m.failed,
        "total_input_tokens": m.total_input_tokens,
        "total_output_tokens": m.total_output_tokens,
        "request_throughput": m.request_throughput,
        "output_throughput": m.output_throughput,
        "total_token_throughput": m.total_token_throughput,
    }
    for metric, distribution in m.latencies.items():
        # vLLM's names: n_ttft, mean_ttft_ms, median_ttft_ms, std_ttft_ms, p99_ttft_ms, ...
        for stat, value in dataclasses.asdict(distribution).items():
            out[f"n_{metric}" if stat == "n" else f"{stat}_{metric}_ms"] = value
    out.update(achieved_concurrency=m.achieved_concurrency, error_counts=dict(m.error_counts),
               error_examples=dict(m.error_examples), requests_total=m.requests_total,
               excluded_by_window=m.excluded_by_window, window_ms=list(m.window_ms),
               n_out_source=m.n_out_source, tpot_undefined=m.tpot_undefined,
               total_cached_tokens=m.total_cached_tokens,
               cached_token_share=m.cached_token_share)
    if m.goodput is None:
        out["request_goodput"] = None
    else:
        out.update(request_goodput=m.goodput.per_s, goodput_config=m.goodput.slo.as_dict(),
                   slo_good=m.goodput.good, slo_attainment=m.goodput.attainment)
    return out


def _context(run: LevelRun, context: Context) -> dict[str, Any]:
    options, level = run.options, run.level
    return {
        "date": context.date,
        "backend": _endpoint_type(options),
        "base_url": redact_url(options.base_url),
        "level": {"kind": level.kind, "value": level.value, "slug": level.slug},
        "config": _saved_options(options, level),
        "data": context.data,
        "formulas": FORMULAS,
        "client": {"python": context.python, "platform": context.platform,
                   "transport": options.transport},
    }


def _saved_options(options: BenchOptions, level: Level) -> dict[str, Any]:
    """The options as saved with results: no API key, header values that look secret masked,
    the level's concurrency or rate; the prompt options are saved under "data"."""
    o = options
    return {
        "base_url": redact_url(o.base_url), "model": o.model or "", "endpoint": o.endpoint,
        "headers": redact_headers(dict(o.headers)), "concurrency": level.concurrency,
        "rate": level.rate, "arrival": o.arrival, "burstiness": o.burstiness,
        "max_concurrency": o.max_concurrency, "num_requests": o.num_requests,
        "duration_s": o.duration_s, "warmup_s": o.warmup_s, "cooldown_s": o.cooldown_s,
        "turns": o.turns, "shared_prefix": o.shared_prefix,
        "trace": str(o.trace) if o.trace else None, "trace_speed":
            level.value if level.kind == "trace" else None,
        "scrape_interval_s": o.scrape_interval_s, "session_header": o.session_header,
        "ignore_eos": o.ignore_eos,
        "min_tokens": o.min_tokens, "timeout_s": o.timeout_s,
        "stall_timeout_s": o.stall_timeout_s, "retries": o.retries,
        "retry_statuses": RETRY_STATUSES, "slo": o.slo.as_dict() if o.slo else None,
        "seed": o.seed, "transport": o.transport, "prewarm": o.prewarm,
        "extra_body": {},  # requests carry no extra body fields; the key keeps its place
        "workers": o.workers, "part": o.part, "start_at_unix": o.start_at_unix,
        "api_key_set": bool(o.api_key),
    }


def _endpoint_type(options: BenchOptions) -> str:
    return "openai-chat" if options.endpoint == "chat" else "openai"
