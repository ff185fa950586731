"""`mls tune APP --from RESULTS`: an app's concurrency knobs set from its measured SLO capacity."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modal_llm_serving.cli.check import render_findings
from modal_llm_serving.cli.options import echo_json, say
from modal_llm_serving.cli.params import Finite
from modal_llm_serving.cli.root import cli
from modal_llm_serving.errors import UsageError

if TYPE_CHECKING:
    from modal_llm_serving.recipes.tune import Tuning


@cli.command("tune")
@click.argument("app_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--from", "results", required=True, metavar="RESULTS",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A results folder of `mls bench run` (a sweep of load levels).")
@click.option("--slo", "slos", multiple=True, metavar="METRIC:PCT:LIMIT",
              help="SLO the capacity must hold (one or more), e.g. ttft:p95:500ms, "
                   "tpot:p50:50ms, e2el:p99:10s [default: a capacity search's own].")
@click.option("--headroom", type=Finite(1, 100), default=90.0, show_default=True,
              metavar="PCT", help="Target this percentage of the capacity per container.")
@click.option("--peak-rps", type=Finite(0, 1e9, min_open=True), metavar="R",
              help="Peak requests/s to size MAX_CONTAINERS for.")
@click.option("--peak-concurrency", type=click.IntRange(1, 10_000_000), metavar="N",
              help="Peak requests in flight to size MAX_CONTAINERS for.")
@click.option("--idle-min", type=click.IntRange(0, 10_000), metavar="N",
              help="Containers kept warm with no traffic (MIN_CONTAINERS; each bills all day).")
@click.option("--replicas", type=click.IntRange(1, 10_000), default=1, show_default=True,
              metavar="N",
              help="Containers that served the benchmark (the capacity is split among them).")
@click.option("--write", is_flag=True, help="Write the tuned file (else only show the diff).")
@click.option("--no-import", is_flag=True,
              help="Check the result statically only (no import with the Modal SDK).")
@click.option("--json", "json_", is_flag=True, help="Print what was worked out as JSON.")
def tune_command(app_file: Path, results: Path, slos: tuple[str, ...], headroom: float,
                 peak_rps: float | None, peak_concurrency: int | None, idle_min: int | None,
                 replicas: int, write: bool, no_import: bool, json_: bool) -> None:
    """Set APP_FILE's concurrency knobs from the SLO capacity measured in RESULTS.

    \b
    The capacity is the one `mls bench run --search` saved in RESULTS; for a plain sweep, the
    same rule picks it from the levels (each percentile within its limit, failures within what
    the percentile leaves; the highest such level below the first that failed). From it:
    target_inputs / target_concurrency (the capacity less the headroom), max_inputs /
    max_concurrency (the next level tried if no request failed there, else the capacity), the
    engine's --max-num-seqs (at least the max) and, for a stated peak, MAX_CONTAINERS. Only
    those UPPER_CASE constants change; the diff shows each change with the numbers behind it,
    and `mls check` judges the result.
    Exit codes: 0 tuned (written with --write); 1 no level met the SLO, or the result breaks a
    rule the file did not break (then nothing is written); 2 bad input.
    """
    from modal_llm_serving.bench.slo import parse_slos
    from modal_llm_serving.recipes.tune import Load, tune_app

    if peak_rps is not None and peak_concurrency is not None:
        raise UsageError("give --peak-rps or --peak-concurrency, not both")
    load = Load(headroom=headroom / 100, peak_rps=peak_rps, peak_concurrency=peak_concurrency,
                idle_min=idle_min, replicas=replicas)
    tuning = tune_app(app_file, results, parse_slos(slos), load, write=write,
                      import_check=not no_import)
    if json_:
        echo_json(tuning.to_dict())
    else:
        _render(tuning)
    if tuning.added:
        sys.exit(1)


def _render(tuning: Tuning) -> None:
    from modal_llm_serving.bench.capacity import capacity_lines

    say(*capacity_lines(tuning.capacity))
    for change in tuning.changes:
        moved = f"{change.old} -> {change.new}" if change.old != change.new else \
            f"{change.new} (kept)"
        say(f"  {change.constant}: {moved}  ({change.reason})")
    for note in tuning.notes:
        say(f"  note: {note}")
    say(*tuning.diff())
    render_findings(list(tuning.findings), files=1)
    if tuning.added:
        say(f"not written: the tuned file breaks {len(tuning.added)} rule(s) the original did "
            "not; set those knobs by hand")
    elif tuning.written:
        say(f"wrote {tuning.path}")
    elif tuning.text == tuning.old_text:
        say("nothing to change: the knobs already match the measurement")
    else:
        say(f"not written: pass --write to save it to {tuning.path}")
