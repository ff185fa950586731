"""A comparison written out: compare.json, compare.md and overlaid plots in a folder of its own.

The folder is new (`results/compare-<UTC time>`) or an empty one the user names, claimed for
this writer alone (`prepare_out_dir`: the same one-writer rule as a run's folder), so nothing
is ever overwritten. Strings from the runs (labels, model ids, folder names) enter the Markdown
through `markdown_text` and the whole file through `redact`, as in the run's own report; the
plots show only side letters and level keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.compare import Side
from modal_llm_serving.bench.report import _save_figure as save_figure  # one PNG writer
from modal_llm_serving.bench.results import new_out_dir, prepare_out_dir, write_json
from modal_llm_serving.display import markdown_text
from modal_llm_serving.files import cannot_write, write_atomic
from modal_llm_serving.redact import redact

__all__ = ["comparison_lines", "write_comparison"]

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def write_comparison(comparison: dict[str, Any], sides: list[Side], *,
                     out: Path | None) -> Path:
    """Write the comparison into `out` (or a new results/compare-<time>); return the folder."""
    created = out is None or not out.exists()
    folder = out if out is not None else new_out_dir(Path("results"), "compare")
    claim = prepare_out_dir(folder)
    try:
        write_json(folder / "compare.json", comparison)
        plots = _plots(folder, comparison, sides)
        path = folder / "compare.md"
        try:
            write_atomic(path, redact("\n".join(_markdown(comparison, plots)) + "\n"))
        except OSError as exc:
            raise cannot_write(path, exc) from None
    except BaseException:
        claim.release()
        if created:  # a folder this call made and left empty goes again
            for leftover in folder.iterdir():
                leftover.unlink()
            folder.rmdir()
        raise
    claim.release()
    return folder


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if unit in ("USD", "%") else f"{value:.2f}"


def _interval(row: dict[str, Any]) -> str:
    ci = row.get("ci95")
    return f"[{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else "–"


def _markdown(comparison: dict[str, Any], plots: dict[str, list[str]]) -> list[str]:
    method = comparison["method"]
    lines = ["# Benchmark comparison", ""]
    for name, folders in comparison["runs"].items():
        role = " (baseline)" if name == comparison["baseline"] else ""
        repeats = f", {len(folders)} repeats" if len(folders) > 1 else ""
        lines.append(f"- **{name}**{role}{repeats}: "
                     + ", ".join(f"`{markdown_text(folder)}`" for folder in folders))
    lines += ["", f"A difference counts when the {method['confidence']:.0%} bootstrap interval "
              f"of B − A ({method['resamples']} resamples of the per-request records; ITL by "
              "request) excludes 0, it exceeds the run-to-run spread of the repeats (where a "
              f"side was repeated), and it is at least {method['min_diff_pct']:g}% of A; "
              "otherwise it is within noise. Throughput, goodput and cost are one number per "
              "run: only repeats give their noise.", ""]
    lines += [f"> {markdown_text(note)}" for note in comparison["notes"]]
    for entry in comparison["comparisons"]:
        other, base = entry["side"], comparison["baseline"]
        for level in entry["levels"]:
            repeats = level["repeats"]
            lines += ["", f"## {other} vs {base}: {markdown_text(level['label'])}"
                      + (f" (runs {repeats[0]} and {repeats[1]})" if max(repeats) > 1 else ""),
                      "", f"| metric | {base} | {other} | {other} − {base} | % | 95% interval "
                      "| repeats' spread | verdict |", "|---|---|---|---|---|---|---|---|"]
            for row in level["rows"]:
                pct = "–" if row["diff_pct"] is None else f"{row['diff_pct']:+.1f}%"
                verdict = row["verdict"]
                if verdict not in ("within noise", "no noise estimate", "not in both"):
                    verdict = f"**{verdict}**"
                lines.append(f"| {row['metric']} ({row['unit']}) | {_fmt(row['a'], row['unit'])}"
                             f" | {_fmt(row['b'], row['unit'])} | "
                             f"{_fmt(row['diff'], row['unit'])} | {pct} | {_interval(row)} | "
                             f"{_fmt(row['repeat_spread'], row['unit'])} | {verdict} |")
            lines += [""] + [f"![{name}]({name})" for name in plots.get(level["level"], [])]
    if "curve" in plots:
        lines += ["", "## Latency–throughput, every side", "", "![curve](latency_throughput.png)"]
    return lines


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    """The terminal view: the notes, then each level's differences that count, or none."""
    lines = [f"note: {note}" for note in comparison["notes"]]
    base = comparison["baseline"]
    for entry in comparison["comparisons"]:
        for level in entry["levels"]:
            counted = [row for row in level["rows"]
                       if row["verdict"] not in ("within noise", "no noise estimate",
                                                 "not in both")]
            lines.append(f"{entry['side']} vs {base} at {level['label']}: "
                         + ("every difference within noise" if not counted else
                            f"{len(counted)} beyond noise"))
            for row in counted:
                lines.append(f"  {row['metric']:<22} {_fmt(row['a'], row['unit']):>10} -> "
                             f"{_fmt(row['b'], row['unit']):>10} {row['unit']:<5} "
                             f"({row['diff_pct'] or 0:+.1f}%)  {row['verdict']}")
    return lines


def _file_key(key: str) -> str:
    """A level key as part of a file name (keys come from saved summaries: input)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", key)[:40]


def _plots(folder: Path, comparison: dict[str, Any], sides: list[Side]) -> dict[str, list[str]]:
    """Per shared level: TTFT and TPOT CDFs of every side overlaid; over several levels, each
    side's latency–throughput curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [level["level"] for entry in comparison["comparisons"] for level in entry["levels"]]
    keys = list(dict.fromkeys(keys))
    made: dict[str, list[str]] = {}
    for key in keys:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for index, side in enumerate(sides):
            levels = [run[key] for run in side.runs if key in run]
            for axis, metric in ((axes[0], "ttft"), (axes[1], "tpot")):
                values = sorted(v for level in levels for v in level.samples[metric])
                if values:
                    axis.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                              color=COLORS[index % len(COLORS)], label=side.name,
                              drawstyle="steps-post")
        for axis, name in ((axes[0], "TTFT (ms)"), (axes[1], "TPOT (ms)")):
            axis.set_xlabel(name)
            axis.set_ylabel("CDF")
            axis.set_ylim(0, 1.02)
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(f"level {_file_key(key)}")
        figure.tight_layout()
        name = f"cdf_{_file_key(key)}.png"
        save_figure(figure, folder / name)
        plt.close(figure)
        made[key] = [name]
    if len(keys) > 1:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for index, side in enumerate(sides):
            points = [(run[key].summary, key) for key in keys for run in side.runs[:1]
                      if key in run]
            for axis, stat in ((axes[0], "p50_ttft_ms"), (axes[1], "p50_tpot_ms")):
                pairs = [(s["output_throughput"], s[stat]) for s, _key in points
                         if isinstance(s.get(stat), int | float)]
                axis.plot([x for x, _ in pairs], [y for _, y in pairs], marker="o",
                          color=COLORS[index % len(COLORS)], label=side.name)
        for axis, name in ((axes[0], "TTFT p50 (ms)"), (axes[1], "TPOT p50 (ms)")):
            axis.set_xlabel("output throughput (tok/s)")
            axis.set_ylabel(name)
            axis.set_xlim(left=0)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend()
        figure.tight_layout()
        save_figure(figure, folder / "latency_throughput.png")
        plt.close(figure)
        made["curve"] = ["latency_throughput.png"]
    return made
