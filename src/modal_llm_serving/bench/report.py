"""Render a run (or a sweep) as Markdown with PNG plots, from its saved summary and JSONL.

Every number sits beside its formula (peers disagree on names: vLLM's TPOT is AIPerf's ITL).
A saved summary is input (a server named the model and wrote the errors; anyone may edit the
file): each of its strings enters the report through `markdown_text`, inert and masked.
Plots: TTFT and TPOT distributions per level (histogram + CDF), the engine's requests running
and waiting and its KV-cache usage over time (from engine_metrics.jsonl, when it was scraped)
and, for a sweep, the latency–throughput curve.
matplotlib is imported lazily and drawn with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.cost import capacity_cost_line, cost_lines, cost_markdown
from modal_llm_serving.bench.metrics import FORMULAS
from modal_llm_serving.bench.results import read_records, read_summary, sweep_levels
from modal_llm_serving.display import markdown_text
from modal_llm_serving.endpoint.wire import one_line
from modal_llm_serving.errors import UsageError
from modal_llm_serving.files import cannot_write, write_atomic
from modal_llm_serving.redact import redact

__all__ = ["render_report", "summary_lines"]

_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"),
            ("sched_ttft", "TTFT from schedule"), ("sched_e2el", "E2EL from schedule"),
            ("dispatch_lag", "dispatch lag"))


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}"


def _md(value: Any) -> str:
    """A value of the summary as inert Markdown text."""
    return markdown_text(str(value))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A compact text view (terminal): throughput, latency percentiles, errors, health."""
    lines = [f"{summary.get('label', '')}: {summary['completed']} ok, {summary['failed']} failed"
             f" in {summary['duration']:.2f} s (n={summary['completed'] + summary['failed']})"]
    for key, unit in (("output_throughput", "tok/s"), ("total_token_throughput", "tok/s"),
                      ("request_throughput", "req/s")):
        lines.append(f"  {key:<24} {summary[key]:>10.2f} {unit:<6} {FORMULAS[key]}")
    if summary.get("request_goodput") is not None:
        lines.append(f"  {'request_goodput':<24} {summary['request_goodput']:>10.2f} req/s  "
                     f"SLO attainment {summary['slo_attainment']:.1%} "
                     f"({summary['goodput_config']})")
    lines.append(f"  {'achieved_concurrency':<24} {summary['achieved_concurrency']:>10.2f}")
    lines += cost_lines(summary)
    if summary.get("cached_token_share") is not None:
        lines.append(f"  {'cached_token_share':<24} {summary['cached_token_share']:>10.1%}        "
                     f"{summary.get('total_cached_tokens')} cached prompt tokens "
                     "(usage.prompt_tokens_details)")
    lines += [f"  {line}" for line in engine_lines(summary.get("engine"))]
    lines.append(f"  {'metric (ms)':<20} {'n':>6} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9}")
    for key, name in _METRICS:
        if f"n_{key}" not in summary:
            continue
        lines.append(f"  {name:<20} {summary[f'n_{key}']:>6} {_ms(summary[f'mean_{key}_ms']):>9} "
                     f"{_ms(summary[f'p50_{key}_ms']):>9} {_ms(summary[f'p90_{key}_ms']):>9} "
                     f"{_ms(summary[f'p99_{key}_ms']):>9}  {FORMULAS[key]}")
    if summary.get("error_counts"):
        errors = ", ".join(f"{kind} ×{count}" for kind, count in summary["error_counts"].items())
        lines.append(f"  errors: {errors}")
        for kind, example in summary.get("error_examples", {}).items():
            if example:
                lines.append(f"    {kind}: {one_line(example, 150)}")
    harness = summary.get("harness", {})
    lines.append(f"  client: {_workers(harness)}CPU "
                 f"{harness.get('client_cpu_fraction_of_one_core') or 0:.0%} of a "
                 f"core, loop lag p99 {_ms(harness.get('loop_lag_p99_ms'))} ms, peak RSS "
                 f"{harness.get('peak_rss_mb') or 0:.0f} MB")
    lines.extend(f"  !! {warning}" for warning in harness.get("warnings", []))
    return lines


def engine_lines(engine: dict[str, Any] | None) -> list[str]:
    """The engine's own view of a level (engine.py), in words; nothing if it was not scraped."""
    if not engine:
        return []
    if engine.get("unavailable"):
        return [f"engine view: none ({engine['unavailable']})"]

    def e(key: str) -> str:
        spec = (".1%" if key.endswith(("usage_max", "hit_rate")) else
                ".2f" if key.startswith("mean") else ".3g")
        return _number(engine.get(key), spec)

    return [f"engine ({engine.get('source', '?')} /metrics, {e('scrapes')} scrapes): running "
            f"mean {e('running_mean')} max {e('running_max')}, waiting mean {e('waiting_mean')} "
            f"max {e('waiting_max')}, KV cache max {e('kv_cache_usage_max')}",
            f"engine: prefix-cache hit rate {e('prefix_cache_hit_rate')}, preemptions "
            f"{e('preemptions')}, mean queue time {e('mean_queue_time_ms')} ms, mean engine "
            f"TTFT {e('mean_ttft_ms')} ms"]


def _number(value: Any, spec: str) -> str:
    """A number of the summary in `spec`'s format; – when there is none."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return format(value, spec)


def render_report(folder: Path) -> Path:
    """Write folder/report.md (+ PNGs) for a run or a sweep folder; return the report's path."""
    slugs = sweep_levels(folder)
    if slugs == []:
        raise UsageError(f"{folder} is a sweep whose levels hold no results yet (interrupted "
                         "before the first request finished); nothing to report")
    if slugs:
        levels = [(slug, read_summary(folder / slug), folder / slug) for slug in slugs]
    else:
        levels = [("", read_summary(folder), folder)]
    parts = [f"# Benchmark of {_md(levels[0][1].get('model_id', '?'))} at "
             f"{_md(levels[0][1].get('base_url', '?'))}", ""]
    parts += _context_section(levels[0][1])
    plots = _plots(folder, levels)
    if len(levels) > 1:
        parts += _sweep_table(levels)
        if "curve" in plots:
            parts += ["![latency–throughput](latency_throughput.png)", ""]
    parts += _capacity_section(folder)
    parts += cost_markdown([(slug, summary) for slug, summary, _path in levels])
    for slug, summary, _path in levels:
        parts += _level_section(slug, summary, plots.get(slug, []))
    parts += ["## Definitions", ""] + [f"- **{key}**: {text}" for key, text in FORMULAS.items()]
    parts += ["", "Percentiles: linear interpolation between closest ranks; std is the "
                  "population standard deviation (as `vllm bench serve`).", ""]
    path = folder / "report.md"
    try:  # a reader never sees half a report; a full disk is one line, exit 2
        write_atomic(path, redact("\n".join(parts) + "\n"))
    except OSError as exc:
        raise cannot_write(path, exc) from None
    return path


def _context_section(summary: dict[str, Any]) -> list[str]:
    data = summary.get("data", {})
    config = summary.get("config", {})
    return [
        f"- date (UTC): {_md(summary.get('date', '?'))}; endpoint: "
        f"{_md(summary.get('backend', '?'))}; transport: "
        f"{_md(summary.get('client', {}).get('transport', '?'))}",
        f"- prompts: {_md(data.get('dataset', '?'))}, input "
        f"{_md(data.get('input_len', 'from data'))} tokens, output "
        f"{_md(data.get('output_len', '?'))} tokens; tokenizer: "
        f"{_md(data.get('tokenizer_source', '?'))}; exact input length for "
        f"{data.get('exact_input_fraction') or 1:.0%} of prompts",
        f"- bounds: {_md(config.get('num_requests') or 'no request limit')}"
        f"{' requests' if config.get('num_requests') else ''}, "
        f"{_md(config.get('duration_s')) + ' s' if config.get('duration_s') else 'no time limit'};"
        f" warm-up {_md(config.get('warmup_s'))} s and cool-down {_md(config.get('cooldown_s'))} s"
        f" excluded; ignore_eos={_md(config.get('ignore_eos'))}; turns per session "
        f"{_md(config.get('turns'))}",
        "",
    ]


def _sweep_table(levels: list[tuple[str, dict[str, Any], Path]]) -> list[str]:
    rows = ["## Sweep", "",
            "| level | n ok | failed | output tok/s | req/s | TTFT p50 | TTFT p99 | TPOT p50 | "
            "TPOT p99 | E2EL p50 | client CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _slug, s, _path in levels:
        rows.append(
            f"| {_md(s.get('label'))} | {s['completed']} | {s['failed']} | "
            f"{s['output_throughput']:.1f} | {s['request_throughput']:.2f} | "
            f"{_ms(s.get('p50_ttft_ms'))} | {_ms(s.get('p99_ttft_ms'))} | "
            f"{_ms(s.get('p50_tpot_ms'))} | {_ms(s.get('p99_tpot_ms'))} | "
            f"{_ms(s.get('p50_e2el_ms'))} | "
            f"{s.get('harness', {}).get('client_cpu_fraction_of_one_core') or 0:.0%} |")
    return [*rows, "", "Latencies in ms. " + FORMULAS["ttft"] + "; " + FORMULAS["tpot"] + ".", ""]


def _capacity_section(folder: Path) -> list[str]:
    """A capacity search's outcome (sweep.json's `capacity`): each level in the order tried,
    its verdict and each SLO's value, then the capacity, the bracket and why it stopped."""
    from modal_llm_serving.bench.capacity import outcome_lines, read_capacity

    capacity = read_capacity(folder)
    if capacity is None:
        return []
    rows = ["## Capacity at the SLOs", "",
            f"SLOs: {_md(', '.join(capacity['slos']))} (a level holds one when that percentile "
            "is within the limit and no more requests failed than the percentile leaves).", "",
            "| # | level | verdict | SLO values (ms) | failed | goodput (req/s) |",
            "|---|---|---|---|---|---|"]
    for number, row in enumerate(capacity["levels"], 1):
        if row["passed"] is None:
            rows.append(f"| {number} | {_md(row['slug'])} | interrupted | – | – | – |")
            continue
        values = ", ".join(f"{_md(v['slo'])}: {_ms(v['value_ms'])}" for v in row["slos"])
        rows.append(f"| {number} | {_md(row['slug'])} | "
                    f"{'held' if row['passed'] else '**failed**'} | {values} | "
                    f"{row['failed_share']:.1%} | {_ms(row['goodput'])} |")
    outcome = outcome_lines(capacity)
    if (cost := capacity_cost_line(capacity, folder)) is not None:
        outcome.append(cost)
    return [*rows, "", *(f"- {_md(line.strip())}" for line in outcome), ""]


def _level_section(slug: str, summary: dict[str, Any], plots: list[str]) -> list[str]:
    title = summary.get("label") or slug or "run"
    rows = [f"## {_md(title)}", ""]
    warnings = summary.get("harness", {}).get("warnings", [])
    rows += [f"> **{_md(warning)}**" for warning in warnings] + ([""] if warnings else [])
    rows += ["| throughput | value | formula |", "|---|---|---|"]
    for key, unit in (("output_throughput", "tok/s"), ("total_token_throughput", "tok/s"),
                      ("request_throughput", "req/s")):
        rows.append(f"| {key} | {summary[key]:.2f} {unit} | {FORMULAS[key]} |")
    if summary.get("request_goodput") is not None:
        rows.append(f"| request_goodput | {summary['request_goodput']:.2f} req/s "
                    f"({summary['slo_attainment']:.1%} attainment, SLOs "
                    f"{_md(summary['goodput_config'])} ms) | {FORMULAS['request_goodput']} |")
    rows.append(f"| achieved_concurrency | {summary['achieved_concurrency']:.2f} | "
                f"{FORMULAS['achieved_concurrency']} |")
    rows.append(f"| duration | {summary['duration']:.2f} s ({summary['completed']} ok, "
                f"{summary['failed']} failed, {summary.get('excluded_by_window', 0)} outside "
                f"the window) | {FORMULAS['duration']} |")
    rows += ["", "| latency (ms) | n | mean | p50 | p90 | p95 | p99 | max | formula |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, name in _METRICS:
        if f"n_{key}" not in summary:
            continue
        rows.append(f"| {name} | {summary[f'n_{key}']} | {_ms(summary[f'mean_{key}_ms'])} | "
                    f"{_ms(summary[f'p50_{key}_ms'])} | {_ms(summary[f'p90_{key}_ms'])} | "
                    f"{_ms(summary[f'p95_{key}_ms'])} | {_ms(summary[f'p99_{key}_ms'])} | "
                    f"{_ms(summary[f'max_{key}_ms'])} | {FORMULAS[key]} |")
    if summary.get("error_counts"):
        rows += ["", "| error | count | example |", "|---|---|---|"]
        for kind, count in summary["error_counts"].items():
            example = markdown_text(one_line(summary.get("error_examples", {}).get(kind, "")),
                                    120)
            rows.append(f"| {_md(kind)} | {count} | {example} |")
    if summary.get("cached_token_share") is not None:
        rows += ["", f"Cached prompt tokens: {summary.get('total_cached_tokens')} "
                     f"({summary['cached_token_share']:.1%}; {FORMULAS['cached_token_share']})."]
    if summary.get("engine"):
        rows += [""] + [f"{_md(line)}  " for line in engine_lines(summary["engine"])]
        rows += ["(engine TTFT is counted from the request's arrival in the server: client TTFT "
                 "minus it is the time outside, network and any proxy's queue; the engine's "
                 "queue time is part of both)"]
    harness = summary.get("harness", {})
    rows += ["", f"Harness health: {_workers(harness)}client CPU "
                 f"{harness.get('client_cpu_fraction_of_one_core') or 0:.0%} of one core, "
                 f"event-loop lag p50/p99/max {_ms(harness.get('loop_lag_p50_ms'))}/"
                 f"{_ms(harness.get('loop_lag_p99_ms'))}/{_ms(harness.get('loop_lag_max_ms'))} ms,"
                 f" peak RSS {harness.get('peak_rss_mb') or 0:.0f} MB.", ""]
    rows += [f"![{name}]({name})" for name in plots]
    return [*rows, ""]


def _workers(harness: dict[str, Any]) -> str:
    """"2 workers, the busiest: " when the load was split over processes, else nothing."""
    workers = harness.get("workers")
    return f"{workers:g} workers, the busiest: " if workers and workers > 1 else ""


def _plots(folder: Path, levels: list[tuple[str, dict[str, Any], Path]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made: dict[str, Any] = {}
    for slug, summary, path in levels:
        ttft, tpot = [], []
        for record in read_records(path / "requests.jsonl"):
            if record.get("ok") and record.get("ttft_ms") is not None:
                ttft.append(record["ttft_ms"])
                if record.get("tpot_ms") is not None:
                    tpot.append(record["tpot_ms"])
        if not ttft:
            continue
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for axis, values, name in ((axes[0], ttft, "TTFT"), (axes[1], tpot, "TPOT")):
            if not values:
                axis.set_title(f"{name}: no values")
                continue
            axis.hist(values, bins=min(60, max(10, len(values) // 5)), color="#4c72b0")
            twin = axis.twinx()
            ordered = sorted(values)
            twin.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))],
                      color="#dd8452")
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("CDF")
            axis.xaxis.set_major_locator(MaxNLocator(6))
            axis.ticklabel_format(axis="x", useOffset=False, style="plain")
            axis.set_xlabel(f"{name} (ms)")
            axis.set_ylabel("requests")
            axis.set_title(f"{name} (n={len(values)}) {redact(str(summary.get('label', '')))}")
        figure.tight_layout()
        name = f"latency_{slug}.png" if slug else "latency.png"
        _save_figure(figure, folder / name)
        plt.close(figure)
        made[slug] = [name]
        if (engine := _engine_plot(plt, folder, slug, summary, path)) is not None:
            made[slug].append(engine)
    if len(levels) > 1:
        points = [(s["output_throughput"], s.get("p50_ttft_ms"), s.get("p50_tpot_ms"),
                   s.get("label", slug)) for slug, s, _p in levels]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for axis, index, name in ((axes[0], 1, "TTFT p50 (ms)"), (axes[1], 2, "TPOT p50 (ms)")):
            pairs = [(float(point[0]), float(value)) for point in points
                     if (value := point[index]) is not None]
            xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
            axis.plot(xs, ys, marker="o")
            for point in points:
                if point[index] is not None:
                    axis.annotate(redact(str(point[3])), (point[0], point[index]), fontsize=7)
            # Both axes from zero: a curve that barely moves should look flat, not dramatic.
            # All zeros (TPOT of streams read in one piece) still get an axis: 0 to 0 is none.
            axis.set_xlim(left=0, right=(max(xs, default=0) or 1) * 1.1)
            axis.set_ylim(bottom=0, top=(max(ys, default=0) or 1) * 1.15)
            axis.ticklabel_format(useOffset=False, style="plain")
            axis.set_xlabel("output throughput (tok/s)")
            axis.set_ylabel(name)
            axis.grid(alpha=0.3)
        figure.suptitle("latency–throughput over the sweep")
        figure.tight_layout()
        _save_figure(figure, folder / "latency_throughput.png")
        plt.close(figure)
        made["curve"] = ["latency_throughput.png"]
    return made


def _engine_plot(plt: Any, folder: Path, slug: str, summary: dict[str, Any],
                 path: Path) -> str | None:
    """Requests running and waiting in the engine, and its KV-cache usage, over the level."""
    points = [line for line in read_records(path / "engine_metrics.jsonl")
              if isinstance(line.get("t_ns"), int)]
    if len(points) < 2:
        return None
    zero = summary.get("t0_perf_counter_ns")
    zero = zero if isinstance(zero, int) else points[0]["t_ns"]
    seconds = [(line["t_ns"] - zero) / 1e9 for line in points]

    def series(key: str) -> list[float]:
        return [float(value) if isinstance(value := line.get(key), int | float) else math.nan
                for line in points]

    figure, axis = plt.subplots(figsize=(11, 3.5))
    axis.step(seconds, series("running"), where="post", label="running")
    axis.step(seconds, series("waiting"), where="post", label="waiting")
    axis.set_xlabel("time since the level's start (s)")
    axis.set_ylabel("requests in the engine")
    axis.set_ylim(bottom=0)
    twin = axis.twinx()
    twin.plot(seconds, [value * 100 for value in series("kv_cache_usage")], color="#55a868",
              label="KV cache used (%)")
    twin.set_ylim(0, 105)
    twin.set_ylabel("KV cache used (%)")
    figure.legend(loc="upper right", fontsize=8)
    axis.set_title(f"engine /metrics {redact(str(summary.get('label', '')))}")
    figure.tight_layout()
    name = f"engine_{slug}.png" if slug else "engine.png"
    _save_figure(figure, folder / name)
    plt.close(figure)
    return name


def _save_figure(figure: Any, path: Path) -> None:
    """A PNG written whole (through a unique temp file), never through a link of that name."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise cannot_write(path, exc) from None
