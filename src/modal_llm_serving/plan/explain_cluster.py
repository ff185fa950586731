"""The multi-node plan in plain words: why no single host, why this layout, what it costs and how
long a cold start takes; and why a cluster that would hold the model still cannot serve the
workload. Written from the Plan (or the proposal) alone, as `explain.py` does for one host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modal_llm_serving.facts.gpus import GB
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.explain import (
    _context,
    _excluded,
    _memory,
    _model,
    _rejection,
    cluster_summary,
)
from modal_llm_serving.plan.rules import KV_HEADROOM, MAX_PLANNED_GPUS, MIN_SEQUENCES, SLO_MARGIN

if TYPE_CHECKING:
    from modal_llm_serving.plan.cluster import ClusterProposal
    from modal_llm_serving.plan.sizing import Sizing
    from modal_llm_serving.plan.types import Candidate, Plan

__all__ = ["cluster_reasons", "cluster_refused"]


def _copies(plan: Plan) -> int:
    return plan.chosen.containers // plan.layout.nodes


def _why_not_one_host(plan: Plan) -> str:
    """What the biggest hosts hold against what the model needs (their rejections)."""
    most = max((r.n_gpu for r in plan.rejected), default=0)
    full = [r for r in plan.rejected if r.n_gpu == most and r.kind in ("memory", "kv")]
    need = min(plan.workload.concurrency, MIN_SEQUENCES)
    return (f"no single host holds {plan.sizing.weights_bytes / GB:.0f} GB of weights with KV "
            f"room for {need} sequences of {plan.max_model_len} tokens: "
            + "; ".join(f"{r.n_gpu}x {r.gpu} {_rejection(r)}" for r in full[:5]))


def _layout(plan: Plan) -> str:
    c = plan.cluster
    assert c is not None
    lay, gpu = c.layout, c.gpu
    text = (f"{lay.nodes} nodes of {lay.gpus_per_node}x {gpu.name}, the fewest of the cheapest "
            f"GPU that hold the weights and that KV room ({c.usable_bytes / GB:.0f} GB for the "
            f"engine): tensor parallelism {lay.tp} within each host over {gpu.link}, where the "
            f"per-layer all-reduces stay; pipeline parallelism {lay.pp} across the hosts over "
            f"Modal's RDMA fabric ({gpu.fabric_gb_s * 8:,.0f} Gbps per host), which only each "
            "stage's activations cross (Modal's Kimi-K2 example measured TP 8 x PP across nodes "
            "best)")
    if lay.ep > 1:
        text += (f"; expert parallelism {lay.ep}: the {plan.model.experts} routed experts are "
                 "spread over a host's GPUs, not sliced by TP (ENABLE_EXPERT_PARALLEL)")
    return text


def _cost(plan: Plan) -> str:
    c, lay, copies = plan.chosen, plan.layout, _copies(plan)
    pinned = (f", {c.price_multiplier:g}x for the pinned region {plan.region}" if plan.region
              else "")
    one = (f"${c.cost_per_hour / copies:.2f}/h for one copy ({lay.nodes} x "
           f"{lay.gpus_per_node}x {c.gpu.name}{pinned})")
    counted = (f"{copies} cop{'y' if copies == 1 else 'ies'} at peak = {c.containers} "
               "containers (MIN/MAX_CONTAINERS count containers: multiples of N_NODES = "
               f"{lay.nodes})")
    return f"{one}, {counted}, ${c.cost_per_hour:.2f}/h at peak"


def _concurrency(plan: Plan) -> str:
    c, w = plan.chosen, plan.workload
    parts = [f"the KV cache holds ~{c.kv_capacity_tokens:,} tokens over a copy's nodes after a "
             f"{1 - KV_HEADROOM:.0%} margin", f"max_num_seqs {plan.max_num_seqs}",
             f"TARGET_CONCURRENCY {plan.target_inputs}, MAX_CONCURRENCY {plan.max_inputs} on "
             "rank 0", f"{w.concurrency} requests in flight / {c.batch} per copy = "
             f"{_copies(plan)} at peak"]
    if w.tpot_ms:
        parts.append(f"capped so the decode floor stays within {SLO_MARGIN:.0%} of the TPOT SLO "
                     f"({w.tpot_ms:g} ms)")
    return "; ".join(parts) + ". Conservative start: benchmark (`mls bench`) before raising them"


def _startup(plan: Plan) -> str:
    per_node = plan.prediction("weights_per_node_gb").value
    load = plan.prediction("cold_start_weights_floor_s").value
    cold = plan.prediction("cold_start_without_snapshot_s").value
    return (f"each node reads its own stage, {per_node:.0f} GB, off the Volume (>= {load:.0f} s), "
            f"about {cold:.0f} s to a cold copy; STARTUP_TIMEOUT {plan.startup_timeout_s} s "
            f"also covers reading all {plan.sizing.weights_bytes / GB:.0f} GB at once "
            "(the first start, or a slow Volume)")


def _warm(plan: Plan) -> str:
    lay = plan.layout
    per_copy = plan.chosen.cost_per_hour / _copies(plan)
    if plan.min_containers:
        cold = plan.prediction("cold_start_without_snapshot_s").value
        return (f"a cold copy takes about {cold:.0f} s (> {plan.workload.cold_start_s:g} s "
                "allowed), so one copy stays warm "
                f"(MIN_CONTAINERS = {lay.nodes}): a standing bill of ${per_copy:.2f}/h")
    return (f"MIN_CONTAINERS = 0: nothing runs while idle; MIN_CONTAINERS = {lay.nodes} would "
            f"keep one copy warm at ${per_copy:.2f}/h")


def _one_host_instead(plan: Plan) -> str | None:
    """Where another precision of the checkpoint fits one host: that host, beside the cluster."""
    fits = [o for o in plan.precision_options if o.best is not None]
    if not fits:
        return None
    parts = [f"at {o.precision}" + (f" ({o.checkpoint})" if o.checkpoint else "")
             + f" the weights take {o.weights_bytes / GB:.0f} GB and one host holds them: "
             f"{o.best.label()} (${o.best.cost_per_hour:.2f}/h at peak)"
             for o in fits if o.best is not None]
    return ("; ".join(parts) + f", against ${plan.chosen.cost_per_hour:.2f}/h for this cluster "
            f"at {plan.precision}; FP8 halves weight memory and the bytes each decode step reads,"
            " usually within a point or two of bf16 on benchmarks: check on your own evals "
            "before switching (precision = 'fp8')")


def cluster_reasons(plan: Plan) -> list[tuple[str, str]]:
    """(topic, plain-words explanation) for each decision of a multi-node plan."""
    out = [("pattern", "multi-node: " + _why_not_one_host(plan)
            + "; so vLLM across hosts on Modal's clustered containers (vllm_multi_node.py)")]
    if "snapshot-one-gpu" in plan.fallbacks:
        out.append(("cold start", "GPU snapshots need a single GPU and this model needs "
                    "several hosts, so no snapshots"))
    out.append(("primitive", f"@app.server with @modal.clustered(size={plan.layout.nodes}, "
                f"rdma={plan.rdma}): the SDK's only serving primitive for clustered apps; "
                "requests go to rank 0, so clients send Modal proxy-auth headers and the API key"))
    if excluded := _excluded(plan.rejected):
        out.append(("excluded", excluded))
    out += [("model", _model(plan.model)), ("memory", _memory(plan)),
            ("layout", _layout(plan)), ("cost", _cost(plan))]
    if trade := _one_host_instead(plan):
        out.append(("precision trade", trade))
    if plan.hf_secret:
        out.append(("access", f"{plan.workload.model} is gated on the Hub: HF_SECRET names a "
                    "Modal Secret holding HF_TOKEN, after accepting the license"))
    out += [("context", _context(plan)), ("concurrency", _concurrency(plan)),
            ("startup", _startup(plan)), ("scale to zero", _warm(plan))]
    if plan.region:
        out.append(("region", f"pinned to {plan.region} beside its proxy (ROUTING_REGION "
                    f"{plan.routing_region}): GPU-hours cost {plan.chosen.price_multiplier:g}x"))
    return out


def cluster_refused(w: Workload, s: Sizing, c: ClusterProposal,
                    chosen: Candidate | None) -> str | None:
    """Why a cluster that holds the model cannot serve this workload (an SLO it misses, the
    budget, the planner's GPU bound), or None when it can."""
    head = f"{s.facts.name} at {s.precision} needs {cluster_summary(c)}; "
    if chosen is None:
        return head + ("even one sequence misses your SLOs there (a token passes every stage "
                       "in turn): relax ttft_ms/tpot_ms, or a smaller precision may fit one host")
    if w.budget_per_hour is not None and chosen.cost_per_hour > w.budget_per_hour:
        return head + (f"{chosen.containers} containers cost ${chosen.cost_per_hour:.2f}/h at "
                       f"peak, over budget_per_hour ${w.budget_per_hour:g}: raise the budget or "
                       "lower concurrency")
    if chosen.n_gpu * chosen.containers > MAX_PLANNED_GPUS:
        return head + (f"concurrency {w.concurrency} needs "
                       f"{chosen.n_gpu * chosen.containers} GPUs at peak; this planner stops at "
                       f"{MAX_PLANNED_GPUS}: check the number, or split the workload")
    return None
