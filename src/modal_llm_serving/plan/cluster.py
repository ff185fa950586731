"""When no single host holds a model: the multi-node layout Modal's clustered containers would take.

Modal gangs whole 8-GPU hosts (`modal.experimental.clustered(size=N, rdma=True)`) and links them
with an RDMA fabric (the catalog's `fabric_gb_s`). Modal's Kimi-K2 example serves over 4 x
`H100:8` with tensor parallelism 8 within each host and pipeline parallelism across hosts, with
expert parallelism for the MoE layers (other layouts measured worse there), the usual layout
("TP = GPUs per node, PP = nodes", https://docs.nvidia.com/nim/large-language-models/2.0.13/
deployment/multi-node-deployment.html): tensor parallelism's all-reduces stay on NVLink, and
only each token's activations cross the fabric between stages. This module proposes that
layout with its numbers; no recipe writes it yet, so the plan refuses with the proposal attached
(`NeedsCluster`), for `mls plan --json` and for the clustered recipe to take up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modal_llm_serving.errors import PlanRefused
from modal_llm_serving.facts.gpus import GB, GPU, Platform, lacks_kernels
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.rules import FABRIC_LATENCY_S, LINK_SHARE, MIN_SEQUENCES
from modal_llm_serving.plan.sizing import Sizing, engine_bytes, sequences_held
from modal_llm_serving.plan.types import Layout, Prediction

__all__ = ["GPUS_PER_NODE", "MAX_NODES", "ClusterProposal", "NeedsCluster", "propose_cluster"]

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


def cluster_predictions(s: Sizing, gpu: GPU, layout: Layout,
                        platform: Platform) -> list[Prediction]:
    """A sequence's decode step through every stage in turn (pipeline stages run one after
    another for one token, so PP adds memory, not speed), and the cold start of a node, which
    reads only its own stage's weights from the Volume."""
    tp, pp, ep = layout.tp, layout.pp, layout.ep
    memory = s.step_bytes(1) / (tp * gpu.hbm_bytes_s)  # pp stages of 1/pp each, one after another
    collectives = s.allreduce_seconds(gpu, tp, 1, ep=ep)
    hops = (pp - 1) * pipeline_hop_seconds(s, gpu, 1)
    step = memory + s.fixed_step_seconds + collectives + hops
    per_node = s.weights_bytes / pp
    load = per_node / (platform.volume_read_gb_s * GB)
    cold = platform.container_start_s + load + platform.engine_init_s
    inputs = {"W_bytes": s.weights_bytes, "tp": tp, "pp": pp, "ep": ep,
              "hbm_bytes_s": gpu.hbm_bytes_s, "fixed_s": s.fixed_step_seconds,
              "collectives_s": collectives, "hops_s": hops,
              "fabric_bytes_s": gpu.fabric_gb_s * 1e9 * LINK_SHARE}
    return [
        Prediction("decode_tok_s_per_seq", 1 / step, "tok/s",
                   "1 / (W_touched(1)/(tp*hbm_bytes_s) + fixed_s + collectives_s + hops_s); "
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
