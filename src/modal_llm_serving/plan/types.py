"""The plan as a value: what was decided, the setups weighed and why each lost, the predictions.

Deciding (`decide.py`) fills these; nothing here holds a sentence. The words (`reasons`,
`warnings`, the `mls plan` text) are written from a Plan alone by `explain.py`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from modal_llm_serving.facts.gpus import GPU, Platform
from modal_llm_serving.facts.models import ModelFacts
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.explain import reasons_for, warnings_for
from modal_llm_serving.plan.explain_cluster import cluster_reasons
from modal_llm_serving.recipes.table import Recipe, settings_from

if TYPE_CHECKING:
    from modal_llm_serving.plan.cluster import ClusterProposal
    from modal_llm_serving.plan.sizing import Sizing

__all__ = [
    "Basis",
    "Candidate",
    "Fallback",
    "Layout",
    "Plan",
    "PrecisionOption",
    "Prediction",
    "Rejection",
    "RejectionKind",
    "TooBig",
]

# Why the pattern: the workload's goal (with proxy-auth clients, for low latency: the Server
# form), offline work, a cold start the online app cannot meet, or the default.
Basis = Literal["goal", "goal-proxy-auth", "offline", "slow-cold-start", "default"]
# A recipe given up for a single-GPU limit: the Server form (then the pattern's own recipe), or
# cold-start snapshots (then online with a warm container).
Fallback = Literal["server-one-gpu", "snapshot-one-gpu"]
# What ruled a GPU setup out before ranking.
RejectionKind = Literal["snapshot", "fp8", "mxfp4", "precision", "heads", "memory", "kv",
                        "ttft", "tpot"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One predicted figure with the formula that produced it and the inputs plugged in."""

    name: str
    value: float
    unit: str
    formula: str
    inputs: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one replica of the model spreads over GPUs: `nodes` hosts of `gpus_per_node` GPUs
    each, tensor parallelism `tp` within a host, pipeline parallelism `pp` across hosts, expert
    parallelism `ep` (GPUs the routed experts spread over; 1: tensor parallelism shards them)
    and data parallelism `dp` (replicas inside the engine). tp x pp x dp = nodes x
    gpus_per_node. Every plan that fits one container is 1 node, tp = n_gpu; a model no host
    holds gets a multi-node layout (`plan/cluster.py`), served by the clustered recipe."""

    nodes: int
    gpus_per_node: int
    tp: int
    pp: int = 1
    ep: int = 1
    dp: int = 1

    def label(self) -> str:
        text = f"{self.nodes} nodes of {self.gpus_per_node} GPUs, TP {self.tp} x PP {self.pp}"
        return text + (f", EP {self.ep}" if self.ep > 1 else "")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One GPU setup per container and how the workload lands on it."""

    gpu: GPU
    n_gpu: int
    weights_bytes: float
    kv_capacity_tokens: int  # after headroom
    batch: int  # sequences one container decodes together at peak
    containers: int  # replicas at peak
    step_s: float  # decode step at `batch`
    full_step_s: float  # a step at `batch` that also prefills each request's share of prompt
    step1_s: float  # decode step at batch 1
    prefill_s: float  # prefill floor for one typical prompt
    price_multiplier: float

    @property
    def cost_per_hour(self) -> float:
        """USD per hour at peak (all replicas)."""
        return self.gpu.price_per_hour * self.n_gpu * self.containers * self.price_multiplier

    @property
    def container_tok_s(self) -> float:
        """Output tokens/s of one container at full load, prompt prefill included."""
        return self.batch / self.full_step_s

    @property
    def cost_per_mtok(self) -> float:
        per_container_hour = self.gpu.price_per_hour * self.n_gpu * self.price_multiplier
        return per_container_hour / (3600 * self.container_tok_s) * 1e6

    def label(self) -> str:
        return f"{self.n_gpu}x {self.gpu.name}" if self.n_gpu > 1 else self.gpu.name


@dataclasses.dataclass(frozen=True)
class PrecisionOption:
    """Another precision the checkpoint (or a sibling checkpoint) offers, and the best setup the
    same workload gets with it: weighed before a model is spread over more GPUs."""

    precision: str
    checkpoint: str | None  # a sibling repo stored in that precision (e.g. "...-FP8"), if known
    weights_bytes: float
    best: Candidate | None  # None: no single container holds it at that precision either


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One GPU setup ruled out before ranking: the rule it broke and the numbers that broke it."""

    gpu: str
    n_gpu: int
    kind: RejectionKind
    floor_ms: float = 0.0  # ttft/tpot: the floor that missed the SLO
    slo_ms: float = 0.0  # ttft/tpot: the SLO it missed
    need_gb: float = 0.0  # memory: weights + one longest sequence + per-GPU overhead
    usable_gb: float = 0.0  # memory: what the engine's share of the GPUs holds
    heads: int = 0  # heads: attention heads that do not split over n_gpu
    kv_heads: int = 0  # heads: the KV heads beside them
    sequences: int = 0  # kv: sequences of the context length the KV cache holds
    need_sequences: int = 0  # kv: what the workload asks of one container
    context: int = 0  # kv: that context length, tokens


@dataclasses.dataclass(frozen=True)
class TooBig:
    """Why a model fits no container, and what would: the figures behind that refusal."""

    need_bytes: float  # weights + one longest sequence's KV cache
    tp: int  # the most GPUs one container may have here
    biggest: GPU  # the largest card allowed
    usable_bytes: float  # what `tp` of them give the engine
    smaller: list[tuple[str, float]]  # (precision, weight bytes) that would fit instead
    nodes: int  # containers of `tp` cards multi-node serving would take
    cluster: ClusterProposal | None = None  # the multi-node layout, where Modal offers one


@dataclasses.dataclass
class Plan:
    """Everything `mls plan` decided: pattern, recipe, GPU setup, every setting, predictions, and
    the setups weighed (ranked, or rejected with the rule each broke)."""

    workload: Workload
    model: ModelFacts
    sizing: Sizing
    platform: Platform
    pattern: str
    basis: Basis
    online_cold_start_s: float | None  # the default app's cold start, when it was weighed
    fallbacks: tuple[Fallback, ...]
    recipe_row: Recipe  # the recipe table's row this plan fills
    gpu: GPU
    n_gpu: int
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    target_inputs: int
    max_inputs: int | None  # None: http_server takes target_inputs only
    min_containers: int
    max_containers: int
    buffer_containers: int
    region: str | None
    routing_region: str  # where a Server's proxy takes requests
    proxy_regions: list[str]  # where an http_server's proxy takes requests
    served_model_name: str
    hf_secret: str | None  # the Modal Secret holding HF_TOKEN, for gated models
    engine_kv_cache_dtype: str  # the KV cache format in the engine's own word
    startup_timeout_s: int
    quantization: str | None  # vLLM --quantization for online quantization, else None
    kv_cache_gib: int  # KV cache a snapshotting recipe reserves (keeps snapshots lean)
    predictions: list[Prediction]
    rejected: list[Rejection]
    alternatives: list[Candidate]  # the next setups in rank order
    chosen: Candidate
    frontier: list[Candidate] = dataclasses.field(default_factory=list)  # low latency only
    # other precisions weighed for a model over one GPU (the trade is explained, not taken)
    precision_options: list[PrecisionOption] = dataclasses.field(default_factory=list)
    # several hosts per copy of the model (pattern "multi-node"): the layout and its figures;
    # then n_gpu is the GPUs of one host and the container counts are whole clusters
    cluster: ClusterProposal | None = None

    @property
    def layout(self) -> Layout:
        """The cluster's layout; else one container: 1 node, tensor parallelism over its GPUs
        (the single-node recipes shard experts by tensor parallelism too)."""
        if self.cluster is not None:
            return self.cluster.layout
        return Layout(nodes=1, gpus_per_node=self.n_gpu, tp=self.n_gpu)

    @property
    def rdma(self) -> bool:
        """Whether the hosts of this GPU are linked by Modal's RDMA fabric (the catalog's
        fabric_gb_s): a cluster asks for it where it exists."""
        return bool(self.gpu.fabric_gb_s)

    @property
    def expert_parallel(self) -> bool:
        """Whether the layout spreads a MoE model's routed experts over GPUs (EP > 1)."""
        return self.layout.ep > 1

    @property
    def recipe(self) -> str:
        return self.recipe_row.file_name

    @property
    def engine(self) -> str:
        return self.recipe_row.engine

    @property
    def primitive(self) -> str | None:
        return self.recipe_row.primitive

    @property
    def precision(self) -> str:
        return self.sizing.precision

    @property
    def kv_cache_dtype(self) -> str:
        return self.workload.kv_cache_dtype

    @property
    def reasons(self) -> list[tuple[str, str]]:
        """(topic, plain-words explanation) for each decision."""
        return cluster_reasons(self) if self.cluster is not None else reasons_for(self)

    @property
    def warnings(self) -> list[str]:
        return warnings_for(self)

    def prediction(self, name: str) -> Prediction:
        return next(p for p in self.predictions if p.name == name)

    def recipe_settings(self) -> dict[str, Any]:
        """Values for the recipe's UPPER_CASE constants, as the recipe table maps them."""
        return settings_from(self.recipe_row, self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload.to_dict(),
            "model": self.model.to_dict(),
            "pattern": self.pattern,
            "engine": self.engine,
            "recipe": self.recipe,
            "primitive": self.primitive,
            "precision": self.precision,
            "kv_cache_dtype": self.kv_cache_dtype,
            "gpu": dataclasses.asdict(self.gpu),
            "n_gpu": self.n_gpu,
            "layout": dataclasses.asdict(self.layout),
            "cluster": self.cluster.to_dict() if self.cluster is not None else None,
            "containers_at_peak": self.chosen.containers,
            "cost_per_hour_at_peak": round(self.chosen.cost_per_hour, 4),
            "recipe_settings": self.recipe_settings(),
            "predictions": [p.to_dict() for p in self.predictions],
            "reasons": [{"topic": t, "text": x} for t, x in self.reasons],
            "warnings": self.warnings,
            "frontier": [_frontier_entry(c, chosen=c is self.chosen) for c in self.frontier],
            "rejected": [{k: v for k, v in dataclasses.asdict(r).items() if v}
                         for r in self.rejected],  # each setup ruled out, its rule and numbers
            "precision_options": [
                {"precision": o.precision, "checkpoint": o.checkpoint,
                 "weights_gb": round(o.weights_bytes / 1e9, 1),
                 "gpu": o.best.gpu.name if o.best else None,
                 "n_gpu": o.best.n_gpu if o.best else None,
                 "cost_per_hour": round(o.best.cost_per_hour, 4) if o.best else None}
                for o in self.precision_options],
            "alternatives": [
                {"gpu": c.gpu.name, "n_gpu": c.n_gpu, "containers": c.containers,
                 "cost_per_hour": round(c.cost_per_hour, 4),
                 "tpot_floor_ms": round(c.step_s * 1e3, 3),
                 "cost_per_mtok": round(c.cost_per_mtok, 4)}
                for c in self.alternatives],
        }


def _frontier_entry(c: Candidate, *, chosen: bool) -> dict[str, Any]:
    return {"gpu": c.gpu.name, "n_gpu": c.n_gpu, "containers": c.containers,
            "cost_per_hour": round(c.cost_per_hour, 4),
            "tpot_floor_ms": round(c.step_s * 1e3, 3),
            "ttft_floor_ms": round(c.prefill_s * 1e3, 3), "chosen": chosen}
