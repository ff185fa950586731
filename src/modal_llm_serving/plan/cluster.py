"""When no single host holds a model: the multi-node layout Modal's clustered containers would take.

Modal gangs whole 8-GPU hosts (`modal.experimental.clustered(size=N, rdma=True)`) and links them
with an RDMA fabric (the catalog's `fabric_gb_s`). Modal's Kimi-K2 example serves over 4 x
`H100:8` with tensor parallelism 8 within each host and pipeline parallelism across hosts, with
expert parallelism for the MoE layers (other layouts measured worse there), the usual layout
("TP = GPUs per node, PP = nodes", https://docs.nvidia.com/nim/large-language-models/2.0.13/
deployment/multi-node-deployment.html): tensor parallelism's all-reduces stay on NVLink, and
only each token's activations cross the fabric between stages. This module proposes that
layout with its numbers and, for the online pattern, settles it into a Plan for the clustered
recipe (`vllm_multi_node.py`); where the workload rules a cluster out (another pattern, an SLO
it misses, its budget) the plan refuses with the proposal attached (`NeedsCluster`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from modal_llm_serving.errors import PlanRefused
from modal_llm_serving.facts.gpus import GB, GPU, Platform, lacks_kernels
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.rules import (
    FABRIC_LATENCY_S,
    KV_HEADROOM,
    LINK_SHARE,
    MAX_NUM_SEQS_CAP,
    MIN_SEQUENCES,
    SLO_MARGIN,
)
from modal_llm_serving.plan.sizing import (
    Sizing,
    engine_bytes,
    largest_batch_within,
    sequences_held,
)
from modal_llm_serving.plan.types import Candidate, Layout, Prediction

__all__ = ["GPUS_PER_NODE", "MAX_NODES", "ClusterProposal", "NeedsCluster", "cluster_candidate",
           "cluster_step_seconds", "propose_cluster", "serving_predictions"]

GPUS_PER_NODE = 8  # a clustered container takes every GPU of its host
# "Up to 32 nodes and 256 GPUs per cluster", https://modal.com/docs/guide/multi-node-clusters
MAX_NODES = 32


@dataclasses.dataclass(frozen=True)
class ClusterProposal:
    """The cheapest multi-node layout that holds the model and the workload's minimum batch."""

    gpu: GPU
    layout: Layout
    weights_bytes: float
    usable_bytes: float  # what all nodes give the engine (weights + KV)
    sequences: int  # sequences of `context` tokens the KV cache holds
    context: int
    cost_per_hour: float  # one replica (every node), list price
    predictions: list[Prediction]

    def prediction(self, name: str) -> Prediction:
        return next(p for p in self.predictions if p.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu.name, "layout": dataclasses.asdict(self.layout),
                "weights_gb": round(self.weights_bytes / GB, 1),
                "usable_gb": round(self.usable_bytes / GB, 1), "sequences": self.sequences,
                "context": self.context, "cost_per_hour": round(self.cost_per_hour, 2),
                "predictions": [p.to_dict() for p in self.predictions]}


class NeedsCluster(PlanRefused):
    """Raised when only a multi-node cluster holds the model; `proposal` is that layout."""

    def __init__(self, message: str, *, proposal: ClusterProposal) -> None:
        super().__init__(message)
        self.proposal = proposal


def propose_cluster(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform, *,
                    max_model_len: int, util: float) -> ClusterProposal | None:
    """The cheapest (then fewest nodes) layout of TP 8 within a host x PP across hosts, on a
    GPU Modal clusters, holding the weights and min(concurrency, MIN_SEQUENCES) sequences of
    `max_model_len` tokens; None if even MAX_NODES hosts do not, or no GPU allows it."""
    if not s.facts.splits_over(GPUS_PER_NODE):
        return None
    wanted = min(w.concurrency, MIN_SEQUENCES)
    best: ClusterProposal | None = None
    for gpu in gpus.values():
        if (w.gpu and gpu.name != w.gpu) or not gpu.fabric_gb_s or lacks_kernels(
                gpu, s.precision):
            continue
        node = engine_bytes(gpu, GPUS_PER_NODE, util=util, platform=platform)
        for nodes in range(2, MAX_NODES + 1):
            held = sequences_held(s, nodes * node - s.weights_bytes, max_model_len)
            if held >= wanted:
                proposal = _proposal(s, gpu, nodes, platform, usable=nodes * node,
                                     sequences=held, context=max_model_len)
                if best is None or (proposal.cost_per_hour, nodes) < (
                        best.cost_per_hour, best.layout.nodes):
                    best = proposal
                break
    return best


def _proposal(s: Sizing, gpu: GPU, nodes: int, platform: Platform, *, usable: float,
              sequences: int, context: int) -> ClusterProposal:
    ep = GPUS_PER_NODE if s.facts.is_moe else 1
    layout = Layout(nodes=nodes, gpus_per_node=GPUS_PER_NODE, tp=GPUS_PER_NODE, pp=nodes, ep=ep)
    return ClusterProposal(
        gpu=gpu, layout=layout, weights_bytes=s.weights_bytes, usable_bytes=usable,
        sequences=sequences, context=context,
        cost_per_hour=gpu.price_per_hour * nodes * GPUS_PER_NODE,
        predictions=cluster_predictions(s, gpu, layout, platform))


def pipeline_hop_seconds(s: Sizing, gpu: GPU, batch: int) -> float:
    """One stage handing `batch` tokens' activations (hidden x 2 bytes) to the next host over
    the RDMA fabric (the host's fabric_gb_s times LINK_SHARE)."""
    return FABRIC_LATENCY_S + batch * s.facts.hidden * 2 / (gpu.fabric_gb_s * 1e9 * LINK_SHARE)


def cluster_step_seconds(s: Sizing, gpu: GPU, layout: Layout, batch: int, *,
                         prompt_per_output: float = 0.0) -> float:
    """One decode step of `batch` sequences through every stage in turn (a token passes the
    stages one after another, so PP adds memory, not speed): each stage reads its 1/pp of the
    touched weights over `tp` GPUs, plus the fixed per-layer cost, the TP all-reduces (and EP
    all-to-alls) within a host, and pp-1 hops between hosts. `prompt_per_output` adds each
    request's prefill, as `Sizing.full_load_seconds` does. vLLM keeps up to pp micro-batches in
    flight, so throughput may beat this; the floor on a token's time it is not."""
    memory = s.step_bytes(batch) / (layout.tp * gpu.hbm_bytes_s)
    compute = (2 * s.facts.active_params * batch * (1 + prompt_per_output)
               / (layout.tp * gpu.flops_s(fp8=s.precision == "fp8")))
    return (max(memory, compute) + s.fixed_step_seconds
            + s.allreduce_seconds(gpu, layout.tp, batch, ep=layout.ep)
            + (layout.pp - 1) * pipeline_hop_seconds(s, gpu, batch))


def cluster_predictions(s: Sizing, gpu: GPU, layout: Layout,
                        platform: Platform) -> list[Prediction]:
    """A sequence's decode step through every stage, and the cold start of a node, which reads
    only its own stage's weights from the Volume."""
    tp, pp, ep = layout.tp, layout.pp, layout.ep
    collectives = s.allreduce_seconds(gpu, tp, 1, ep=ep)
    hops = (pp - 1) * pipeline_hop_seconds(s, gpu, 1)
    per_node = s.weights_bytes / pp
    load = per_node / (platform.volume_read_gb_s * GB)
    cold = platform.container_start_s + load + platform.engine_init_s
    inputs = {"W_bytes": s.weights_bytes, "tp": tp, "pp": pp, "ep": ep,
              "hbm_bytes_s": gpu.hbm_bytes_s, "fixed_s": s.fixed_step_seconds,
              "collectives_s": collectives, "hops_s": hops,
              "fabric_bytes_s": gpu.fabric_gb_s * 1e9 * LINK_SHARE}
    return [
        Prediction("decode_tok_s_per_seq", 1 / cluster_step_seconds(s, gpu, layout, 1), "tok/s",
                   "1 / step(1); step(B) = max(W_touched(B)/(tp*hbm_bytes_s), "
                   "2*active_params*B/(tp*flops_s)) + fixed_s + collectives_s + hops_s; "
                   "stages run in turn for one token; collectives_s: TP all-reduces (and EP "
                   "all-to-alls) within a host; hops_s = (pp-1)*(5 us + hidden*2/fabric_bytes_s)",
                   inputs),
        Prediction("weights_per_node_gb", per_node / GB, "GB", "W_bytes / pp",
                   {"W_bytes": s.weights_bytes, "pp": pp}),
        Prediction("cold_start_weights_floor_s", load, "s",
                   "W_bytes / pp / volume_read_bytes_s: each node reads its own stage, at once",
                   {"volume_read_bytes_s": platform.volume_read_gb_s * GB}),
        Prediction("cold_start_without_snapshot_s", cold, "s",
                   "container_start + W_bytes/pp/volume_read_bytes_s + engine_init",
                   {"container_start": platform.container_start_s,
                    "engine_init": platform.engine_init_s}),
    ]


# --- the workload on copies of the cluster -------------------------------------------------------


def cluster_candidate(w: Workload, s: Sizing, c: ClusterProposal, *,
                      multiplier: float) -> Candidate | None:
    """How the workload lands on copies of the cluster `c`: the batch one copy decodes (its KV
    room, MAX_NUM_SEQS_CAP, the TPOT SLO) and the copies at peak, counted as containers (nodes
    per copy times copies); None where the cluster misses the workload's TTFT or TPOT SLO."""
    layout, gpu = c.layout, c.gpu
    prefill = s.prefill_seconds(gpu, layout.tp, w.input_tokens)  # stages in turn, as decode
    if w.ttft_ms is not None and prefill * 1e3 > w.ttft_ms * SLO_MARGIN:
        return None
    kv_tokens = int((c.usable_bytes - c.weights_bytes) * KV_HEADROOM / s.kv_bytes_per_token)
    cap = max(1, min(MAX_NUM_SEQS_CAP, kv_tokens // s.seq_tokens, w.concurrency))
    batch = cap
    if w.tpot_ms is not None:
        batch = largest_batch_within(
            lambda b: cluster_step_seconds(s, gpu, layout, b) * 1e3, w.tpot_ms * SLO_MARGIN, cap)
        if batch == 0:
            return None
    full = cluster_step_seconds(s, gpu, layout, batch,
                                prompt_per_output=w.input_tokens / w.output_tokens)
    copies = math.ceil(w.concurrency / batch)
    if w.throughput_tok_s:
        copies = max(copies, math.ceil(w.throughput_tok_s / (batch / full)))
    return Candidate(gpu=gpu, n_gpu=layout.gpus_per_node, weights_bytes=s.weights_bytes,
                     kv_capacity_tokens=kv_tokens, batch=batch,
                     containers=copies * layout.nodes,
                     step_s=cluster_step_seconds(s, gpu, layout, batch), full_step_s=full,
                     step1_s=cluster_step_seconds(s, gpu, layout, 1), prefill_s=prefill,
                     price_multiplier=multiplier)


def serving_predictions(w: Workload, s: Sizing, c: ClusterProposal,
                        chosen: Candidate) -> list[Prediction]:
    """The cluster's figures at the planned batch: TPOT, TTFT, tokens/s and cost per million
    tokens of one copy (all its nodes), then the proposal's own (per sequence, cold start)."""
    layout, b = c.layout, chosen.batch
    copy_price = chosen.gpu.price_per_hour * layout.nodes * layout.gpus_per_node
    full = b / chosen.full_step_s
    ratio = w.input_tokens / w.output_tokens
    return [
        c.prediction("decode_tok_s_per_seq"),
        Prediction("decode_tok_s_at_batch", b / chosen.step_s, "tok/s",
                   "B / step(B) per copy of the cluster; step(B) as for one sequence, with "
                   "W_touched(B) + B*ctx_avg*kv_bytes_per_token read, or 2*active_params*B "
                   "FLOPs over tp GPUs if slower", {"B": b}),
        Prediction("tpot_floor_ms", chosen.step_s * 1e3, "ms", "step(B) * 1000", {"B": b}),
        Prediction("ttft_prefill_floor_ms", chosen.prefill_s * 1e3, "ms",
                   "max((2*active_params*L_in + 2*layers*L_in^2*heads*head_dim) / "
                   "(tp*flops_s), (W_bytes - W_gathered) / (tp*hbm_bytes_s)) * 1000: the "
                   "stages prefill in turn; excludes queueing and network",
                   {"L_in": w.input_tokens, "tp": layout.tp}),
        Prediction("output_tok_s_full_load", full, "tok/s",
                   "B / step(B) with each request's prompt prefill (continuous batching), per "
                   "copy of the cluster", {"B": b, "prompt_per_output": ratio,
                                           "total_tok_s": full * (1 + ratio)}),
        Prediction("cost_per_mtok_output_usd",
                   copy_price * chosen.price_multiplier / (3600 * full) * 1e6, "USD/Mtok",
                   "price_per_hour*nodes*gpus_per_node*region_multiplier / (3600 * "
                   "output_tok_s_full_load) * 1e6, at full load",
                   {"price_per_hour": chosen.gpu.price_per_hour, "nodes": layout.nodes,
                    "gpus_per_node": layout.gpus_per_node,
                    "region_multiplier": chosen.price_multiplier,
                    "output_tok_s_full_load": full}),
        *(p for p in c.predictions if p.name != "decode_tok_s_per_seq"),
    ]
