"""`mls revision`, `mls plan` and `mls new`: from a model and a workload to an app file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modal_llm_serving.cli.check import render_findings
from modal_llm_serving.cli.options import P, R, echo_json, say
from modal_llm_serving.cli.params import LONGEST_WAIT_S, Finite
from modal_llm_serving.cli.root import cli

if TYPE_CHECKING:
    from modal_llm_serving.facts.workload import Workload


@cli.command("revision")
@click.argument("model")
@click.option("--ref", default="main", show_default=True, help="Branch or tag to resolve.")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=10.0,
              show_default=True, help="Seconds the Hub may take to answer, in all.")
def revision_command(model: str, ref: str, timeout: float) -> None:
    """Print the commit hash MODEL's REF points at on the Hub, to pin it (never guessed).

    Asks the Hub's API (HF_ENDPOINT if set; HF_TOKEN for gated models). Offline, or on any
    failure, it exits 1 with the reason and prints no hash.
    """
    from modal_llm_serving.facts.revision import resolve_revision

    say(resolve_revision(model, ref=ref, timeout=timeout))


def workload_options(command: Callable[P, R]) -> Callable[P, R]:
    """The workload: an optional TOML file, then `--set FIELD=VALUE`, then flags (last win)."""
    options = [
        click.argument("workload_file", required=False, metavar="[WORKLOAD.toml]",
                       type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--model", help="Hub id (org/name) or a local checkpoint folder."),
        click.option("--revision", help="Commit hash of a Hub model (required for Hub ids)."),
        click.option("--goal", metavar="GOAL",
                     help="online | cold-start | low-latency | throughput [default: inferred]."),
        click.option("--concurrency", type=int,
                     help="Requests in flight at peak [default: 8]."),
        click.option("--context-length", type=int, help="Max tokens per sequence."),
        click.option("--precision", help="bf16 | fp16 | fp8 | int8 | int4 | mxfp4."),
        click.option("--ttft-ms", type=Finite(0, min_open=True),
                     help="Time-to-first-token SLO, ms."),
        click.option("--tpot-ms", type=Finite(0, min_open=True),
                     help="Time-per-output-token SLO, ms."),
        click.option("--throughput", "throughput_tok_s", type=Finite(0, min_open=True),
                     help="Output tokens/s wanted across replicas."),
        click.option("--region", help="Modal region to pin, e.g. us-east [default: any]."),
        click.option("--cold-start-s", type=Finite(0), help="Longest acceptable cold start, s."),
        click.option("--budget", "budget_per_hour", type=Finite(0, min_open=True),
                     help="USD per hour at peak."),
        click.option("--offline", is_flag=True, help="Batch work with no per-request HTTP."),
        click.option("--gpu", help="Only this GPU type from the catalog, e.g. H100."),
        click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
                     help="Any other workload field (TOML value), e.g. --set input_tokens=2000."),
        click.option("--gpu-catalog", envvar="MLS_GPU_CATALOG",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="TOML file overriding GPU figures and prices [env MLS_GPU_CATALOG]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _workload(workload_file: Path | None, assignments: tuple[str, ...],
              flags: dict[str, Any]) -> Workload:
    from modal_llm_serving.facts.workload import workload_from_inputs

    return workload_from_inputs(workload_file, flags=flags, assignments=assignments)


@cli.command("plan")
@workload_options
@click.option("--json", "json_", is_flag=True, help="Print the plan as JSON.")
def plan_command(workload_file: Path | None, assignments: tuple[str, ...],
                 gpu_catalog: Path | None, json_: bool, **flags: Any) -> None:
    """Plan a deployment: pattern, GPU type and count, engine and Modal settings, predictions.

    \b
    mls plan workload.toml
    mls plan --model Qwen/Qwen3-8B --revision <commit> --concurrency 32 --tpot-ms 40
    Exit codes: 0 planned; 1 refused (out of scope, or nothing fits: the message says what
    would); 2 invalid workload (the message names the field).
    """
    from modal_llm_serving.errors import PlanRefused
    from modal_llm_serving.plan import explain, make_plan
    from modal_llm_serving.plan.cluster import NeedsCluster

    workload = _workload(workload_file, assignments, flags)
    try:
        result = make_plan(workload, gpu_catalog=gpu_catalog)
    except PlanRefused as exc:
        if not json_:
            raise
        refusal = {"refused": str(exc), "workload": workload.to_dict()}  # for tools and agents
        if isinstance(exc, NeedsCluster):  # the multi-node layout a clustered app would take
            refusal["cluster"] = exc.proposal.to_dict()
        echo_json(refusal)
        sys.exit(1)
    if json_:
        echo_json(result.to_dict())
    else:
        say(*explain(result).split("\n"))


@cli.command("new")
@workload_options
@click.option("-o", "--output", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The app file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "json_", is_flag=True, help="Print what was done as JSON.")
def new_command(workload_file: Path | None, assignments: tuple[str, ...],
                gpu_catalog: Path | None, output: Path, force: bool, json_: bool,
                **flags: Any) -> None:
    """Plan the workload, write the matching recipe with the plan's settings, check it.

    Only the recipe's UPPER_CASE settings constants change (a syntax-tree edit). Exit codes:
    0 written and `mls check` clean; 1 refused, or the written file has findings; 2 bad input.
    """
    from modal_llm_serving.recipes.new import new_app

    say("planning and writing the app; then importing it with the Modal SDK to check it",
        err=True)
    result = new_app(_workload(workload_file, assignments, flags), output, force=force,
                     gpu_catalog=gpu_catalog)
    if json_:
        echo_json(result.to_dict())
    else:
        plan = result.plan
        hosts = f"{plan.layout.nodes} x " if plan.cluster is not None else ""  # per copy
        say(f"wrote {output} from {result.recipe.name} ({plan.pattern} pattern, "
            f"{hosts}{plan.chosen.label()})")
        for name, (old, new) in result.render.changed.items():
            say(f"  {name}: {old} -> {new}")
        if result.render.missing:
            say("  not settings of this recipe (left to its defaults): "
                + ", ".join(result.render.missing))
        for warning in plan.warnings:
            say(f"  ! {warning}")
        render_findings(result.findings, files=1)
        if not result.findings:
            say(f"next: modal run {output}   (smoke test)   |   modal deploy {output}")
    if result.findings:
        sys.exit(1)
