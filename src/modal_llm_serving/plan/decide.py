"""From a workload to a plan: serving pattern, GPU type and count, engine and Modal settings,
and predicted ceilings, each with its formula and a plain-words reason.

The pattern follows the skill's rules exactly: online (vLLM + `@modal.web_server`) is the default;
cold-start (snapshots + sleep/wake) only when startup latency is a first-class requirement;
low-latency (SGLang + `http_server`) only when lowest latency is the explicit goal; throughput
(vLLM's `LLM` in a batch worker) only for offline work. Requests outside self-hosted text
generation are refused with the sibling skill to use.

Sizing: weights + KV cache (context and concurrency) + per-GPU overhead must fit in the engine's
share of GPU memory; tensor parallelism is a power of two up to 8 per container; replicas cover
the rest of the concurrency. Among the GPU setups that fit and meet the SLOs, the cheapest at
peak wins (lowest latency wins for the low-latency goal; lowest cost per token for throughput).

Predictions are rooflines, so they are ceilings (floors for times) that real engines approach but
do not reach: decode reads all touched weights and the KV cache once per step at the card's HBM
bandwidth, or is bound by tensor-core FLOP/s, whichever is slower.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import PlanRefused, WorkloadError
from modal_llm_serving.facts.gpus import GB, GPU, Platform, load_gpu_catalog
from modal_llm_serving.facts.models import ModelFacts, experts_touched_fraction, model_facts
from modal_llm_serving.facts.workload import (
    NARROW_REGIONS,
    OUT_OF_SCOPE_TASKS,
    PRECISIONS,
    Workload,
)

__all__ = ["Candidate", "Plan", "Prediction", "make_plan"]

# Past this many GPUs at peak a plan is a capacity negotiation with Modal, not a recipe setting.
MAX_PLANNED_GPUS = 2000

TP_SIZES = (1, 2, 4, 8)
MAX_NUM_SEQS_CAP = 256  # vLLM's default max_num_seqs: a sane ceiling before benchmarking
OFFLINE_NUM_SEQS_CAP = 512  # offline batches gain from larger batches while KV allows
# Hub organisations whose models are gated: the app needs a Secret holding HF_TOKEN.
GATED_ORGS = ("meta-llama/", "google/", "mistralai/")
KV_HEADROOM = 0.9  # plan on 90% of the computed KV capacity (fragmentation, prefix blocks)
# Tensor parallelism all-reduces activations twice per layer per step; each costs a latency
# however small the message (which caps what TP buys at batch 1: without it the roofline would
# call 8 GPUs 8x faster, which no engine reaches) plus the message over the link. Estimates:
# NVLink ~10 us and ~300 GB/s per GPU; PCIe ~25 us and ~25 GB/s.
ALLREDUCE = {True: (10e-6, 300e9), False: (25e-6, 25e9)}  # nvlink -> (latency s, bytes/s)
# low-latency: among setups whose decode floor is within 2x of the fastest, the cheapest
# (each doubling of GPUs buys less as all-reduce latency dominates; 8 B200s for an 8B model
# would be "fastest" and absurd)
# Without latency SLOs, a low-latency plan takes the cheapest setup whose decode floor is within
# this factor of the fastest single-GPU setup: near the best one card can do, without paying
# 2-8x the price for tensor parallelism's last milliseconds (give SLOs to ask for those).
LATENCY_TIE = 2.0
# Rooflines are floors; engines reach ~70-80% of peak HBM bandwidth in decode and add
# scheduling, sampling and network time. A latency SLO counts as met only when the floor
# stays within 70% of it.
SLO_MARGIN = 0.7
RECIPES = {
    "online": "vllm_online.py",
    "cold-start": "vllm_cold_start.py",
    "low-latency": "sglang_low_latency.py",
    "throughput": "qwen3_throughput.py",
}
ENGINES = {"online": "vllm", "cold-start": "vllm", "low-latency": "sglang",
           "throughput": "vllm"}
PRIMITIVES = {"online": "web_server", "cold-start": "web_server", "low-latency": "http_server",
              "throughput": None}
SERVER_RECIPE = "vllm_server.py"  # the Server form of the low-latency and cold-start patterns
# A Server's proxy routes in one of these; pick the one in the compute region's part of the world.
ROUTING_REGIONS = {"us-west": "us-west", "eu": "eu-west", "uk": "eu-west", "ap": "ap-south",
                   "jp": "ap-south", "au": "ap-south"}
MINUTES = 60
# Modal's routing regions; the published http_server examples use the first two as proxies.
PROXY_REGIONS_SEEN = ("us-east", "us-west", "eu-west", "ap-south")


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


@dataclasses.dataclass
class Plan:
    """Everything `mls plan` decided, why, and what it predicts."""

    workload: Workload
    model: ModelFacts
    pattern: str
    engine: str
    recipe: str
    primitive: str | None  # web_server | http_server | app.server; None for a batch job
    precision: str
    kv_cache_dtype: str
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
    startup_timeout_s: int
    quantization: str | None  # vLLM --quantization for online quantization, else None
    kv_cache_gib: int  # KV cache the cold-start recipe reserves (keeps snapshots lean)
    predictions: list[Prediction]
    reasons: list[tuple[str, str]]  # (topic, plain-words explanation)
    warnings: list[str]
    alternatives: list[Candidate]
    chosen: Candidate
    frontier: list[Candidate] = dataclasses.field(default_factory=list)  # low latency only

    def prediction(self, name: str) -> Prediction:
        return next(p for p in self.predictions if p.name == name)

    def kv_cache_flag_value(self) -> str:
        """The KV cache format in the engine's own word ("fp8" in vLLM, "fp8_e4m3" in SGLang)."""
        if self.kv_cache_dtype != "fp8":
            return "auto"
        return "fp8_e4m3" if self.engine == "sglang" else "fp8"

    def recipe_settings(self) -> dict[str, Any]:
        """Values for the recipe's UPPER_CASE constants: every one is a setting the recipe
        defines, in the recipe's (and the engine's) own words."""
        settings: dict[str, Any] = {
            "MODEL_NAME": self.workload.model,
            "MODEL_REVISION": self.workload.revision,
            "SERVED_MODEL_NAME": self.workload.served_model_name or self.workload.model,
            "GPU_TYPE": self.gpu.name,
            "N_GPU": self.n_gpu,
            "REGION": self.region,
            "MAX_MODEL_LEN": self.max_model_len,
            "MAX_NUM_SEQS": self.max_num_seqs,
            "GPU_MEMORY_UTILIZATION": self.gpu_memory_utilization,
            "KV_CACHE_DTYPE": self.kv_cache_flag_value(),
            "STARTUP_TIMEOUT": self.startup_timeout_s,
            "HF_SECRET": "huggingface" if self.workload.model.startswith(GATED_ORGS) else None,
        }
        if self.primitive == "app.server":  # the Server form's own knob names
            return settings | {"REGION": self.region, "ROUTING_REGION": routing_region(
                self.region), "TARGET_CONCURRENCY": self.target_inputs,
                "MAX_CONCURRENCY": self.max_inputs or self.target_inputs,
                "MIN_CONTAINERS": self.min_containers, "MAX_CONTAINERS": self.max_containers,
                "BUFFER_CONTAINERS": self.buffer_containers, "KV_CACHE_GIB": self.kv_cache_gib}
        if self.pattern != "throughput":  # HTTP autoscaling knobs; a batch job has none
            settings |= {"TARGET_INPUTS": self.target_inputs,
                         "MIN_CONTAINERS": self.min_containers,
                         "MAX_CONTAINERS": self.max_containers,
                         "BUFFER_CONTAINERS": self.buffer_containers}
        if self.max_inputs is not None and self.pattern != "throughput":
            settings["MAX_INPUTS"] = self.max_inputs
        if self.pattern == "low-latency" and self.region:
            settings["PROXY_REGIONS"] = [self.region]
        if self.pattern == "cold-start":
            settings["KV_CACHE_GIB"] = self.kv_cache_gib
        if self.pattern == "throughput":
            del settings["SERVED_MODEL_NAME"]  # no server, no served name
            settings |= {"GPU_PRICE_PER_HOUR": self.gpu.price_per_hour,  # for tokens per $
                         "N_CONTAINERS": self.max_containers,
                         "INPUT_LEN": self.workload.input_tokens,
                         "OUTPUT_LEN": self.workload.output_tokens}
        return settings

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
            "containers_at_peak": self.chosen.containers,
            "cost_per_hour_at_peak": round(self.chosen.cost_per_hour, 4),
            "recipe_settings": self.recipe_settings(),
            "predictions": [p.to_dict() for p in self.predictions],
            "reasons": [{"topic": t, "text": x} for t, x in self.reasons],
            "warnings": self.warnings,
            "frontier": [_frontier_entry(c, chosen=c is self.chosen) for c in self.frontier],
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


# --- the arithmetic ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sizing:
    facts: ModelFacts
    precision: str
    kv_bytes_per_elem: float
    weights_bytes: float
    expert_params: float  # all routed experts (0 for dense)
    common_params: float  # everything else
    ctx_avg: float  # average context a decoding sequence attends to
    seq_tokens: int  # KV tokens one typical request holds at its end
    max_model_len: int

    @property
    def kv_bytes_per_token(self) -> float:
        return self.facts.kv_elements_per_token() * self.kv_bytes_per_elem

    @property
    def bytes_per_param(self) -> float:
        return self.weights_bytes / self.facts.total_params

    def step_bytes(self, batch: int) -> float:
        touched = experts_touched_fraction(self.facts, batch)
        weights = (self.common_params + self.expert_params * touched) * self.bytes_per_param
        return weights + batch * self.ctx_avg * self.kv_bytes_per_token

    def step_seconds(self, gpu: GPU, n: int, batch: int) -> float:
        memory = self.step_bytes(batch) / (n * gpu.hbm_tb_s * 1e12)
        compute = 2 * self.facts.active_params * batch / (n * self._tflops(gpu) * 1e12)
        return max(memory, compute) + self.allreduce_seconds(gpu, n, batch)

    def full_load_seconds(self, gpu: GPU, n: int, batch: int, prompt_per_output: float) -> float:
        """A decode step at `batch` plus the prefill of `prompt_per_output` prompt tokens per
        output token (continuous batching mixes them), whichever bound is slower."""
        memory = self.step_bytes(batch) / (n * gpu.hbm_tb_s * 1e12)
        compute = (2 * self.facts.active_params * batch * (1 + prompt_per_output)
                   / (n * self._tflops(gpu) * 1e12))
        return max(memory, compute) + self.allreduce_seconds(gpu, n, batch)

    def allreduce_seconds(self, gpu: GPU, n: int, batch: int) -> float:
        """2 all-reduces per layer of `batch` x hidden activations (2 bytes), ring algorithm."""
        if n == 1:
            return 0.0
        latency, bandwidth = ALLREDUCE[gpu.nvlink]
        message = batch * self.facts.hidden * 2
        return 2 * self.facts.layers * (latency + 2 * (n - 1) / n * message / bandwidth)

    def prefill_seconds(self, gpu: GPU, n: int, prompt: int) -> float:
        f = self.facts
        flops = (2 * f.active_params * prompt
                 + 2 * f.layers * prompt * prompt * f.heads * min(f.head_dim, 192))
        return max(flops / (n * self._tflops(gpu) * 1e12),
                   self.weights_bytes / (n * gpu.hbm_tb_s * 1e12))

    def _tflops(self, gpu: GPU) -> float:
        return gpu.tflops(fp8=self.precision == "fp8")


def _default_context(w: Workload, facts: ModelFacts, pattern: str) -> int:
    """Context length when the workload names none: lean, but room for a typical request."""
    need = w.input_tokens + w.output_tokens
    if pattern == "throughput":  # offline lengths are known: the next power of two
        want = max(1024, 1 << (need - 1).bit_length())
    elif pattern == "cold-start":  # small KV reservations keep snapshots lean
        want = max(4096, need)
    else:
        want = max(8192, need)
    return min(facts.max_position, want)


def _sizing(w: Workload, facts: ModelFacts, pattern: str = "online") -> _Sizing:
    precision = w.precision or facts.native_precision
    if precision not in PRECISIONS:
        precision = "bf16"
    if precision == facts.native_precision and facts.checkpoint_bytes:
        weights = facts.checkpoint_bytes
    else:
        weights = facts.total_params * PRECISIONS[precision]
    expert = 0.0
    if facts.is_moe and facts.experts > facts.experts_per_token:
        e, k = facts.experts, facts.experts_per_token
        expert = (facts.total_params - facts.active_params) * e / (e - k)
    max_len = w.context_length or _default_context(w, facts, pattern)
    return _Sizing(facts=facts, precision=precision,
                   kv_bytes_per_elem=1.0 if w.kv_cache_dtype == "fp8" else 2.0,
                   weights_bytes=weights, expert_params=expert,
                   common_params=facts.total_params - expert,
                   ctx_avg=w.input_tokens + w.output_tokens / 2,
                   seq_tokens=w.input_tokens + w.output_tokens, max_model_len=max_len)


def _region(w: Workload, pattern: str, *, server: bool = False) -> str | None:
    """The region to pin: the workload's, else us-east for low latency or a Server (next to
    its proxy)."""
    return w.region or ("us-east" if pattern == "low-latency" or server else None)


def routing_region(region: str | None) -> str:
    """The Server routing region nearest a compute region (us-east unless it is elsewhere)."""
    if not region:
        return "us-east"
    return next((routing for prefix, routing in ROUTING_REGIONS.items()
                 if region == prefix or region.startswith(prefix + "-")), "us-east")


def _region_multiplier(region: str | None) -> float:
    if region is None:
        return 1.0
    return 1.75 if region in NARROW_REGIONS else 1.5


def _max_batch_for_tpot(s: _Sizing, gpu: GPU, n: int, tpot_ms: float | None, cap: int) -> int:
    """Largest batch whose decode step still meets the TPOT SLO (0 if even 1 misses)."""
    if tpot_ms is None:
        return cap
    budget_ms = tpot_ms * SLO_MARGIN
    if s.step_seconds(gpu, n, 1) * 1e3 > budget_ms:
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if s.step_seconds(gpu, n, mid) * 1e3 <= budget_ms:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclasses.dataclass(frozen=True)
class _Rejection:
    gpu: str
    n_gpu: int
    kind: str  # snapshot | fp8 | precision | heads | memory | ttft | tpot
    why: str
    floor_ms: float = 0.0  # for ttft/tpot: the floor that missed the SLO


def _candidates(w: Workload, s: _Sizing, gpus: dict[str, GPU], platform: Platform,
                pattern: str, util: float, *, server: bool = False
                ) -> tuple[list[Candidate], list[_Rejection]]:
    fits: list[Candidate] = []
    rejected: list[_Rejection] = []
    multiplier = _region_multiplier(_region(w, pattern, server=server))
    for gpu in gpus.values():
        if w.gpu and gpu.name != w.gpu:
            continue
        for n in TP_SIZES:
            if n > w.max_gpus:
                continue
            if (pattern == "cold-start" or server) and n > 1:
                rejected.append(_Rejection(gpu.name, n, "snapshot", "GPU snapshots do not support "
                                           "several GPUs"))
                continue
            if s.precision == "fp8" and not gpu.fp8:
                rejected.append(_Rejection(gpu.name, n, "fp8", "has no FP8 tensor cores for fp8 "
                                           "weights"))
                break
            if s.precision == "bf16" and not gpu.bf16 and not w.allow_precision_fallback:
                rejected.append(_Rejection(gpu.name, n, "precision", "has no native bf16 (it "
                                           "would run fp16); set allow_precision_fallback = "
                                           "true to allow it"))
                break
            if s.precision == "mxfp4" and gpu.name == "T4":
                rejected.append(_Rejection(gpu.name, n, "fp8", "(Turing) has no MXFP4 kernels"))
                break
            if s.facts.heads % n:
                rejected.append(_Rejection(gpu.name, n, "heads", f"{s.facts.heads} attention "
                                           f"heads do not split over {n} GPUs"))
                continue
            usable = n * (gpu.memory_gb * GB * util - platform.gpu_overhead_gb * GB)
            kv_bytes = usable - s.weights_bytes
            kv_tokens = int(kv_bytes * KV_HEADROOM / s.kv_bytes_per_token) if kv_bytes > 0 else 0
            if kv_tokens < s.max_model_len:
                need = (s.weights_bytes + s.max_model_len * s.kv_bytes_per_token / KV_HEADROOM
                        + n * platform.gpu_overhead_gb * GB) / GB
                rejected.append(_Rejection(gpu.name, n, "memory", f"needs {need:.1f} GB, has "
                                           f"{n * gpu.memory_gb * util:.1f} GB usable"))
                continue
            if w.ttft_ms is not None:
                prefill = s.prefill_seconds(gpu, n, w.input_tokens)
                if prefill * 1e3 > w.ttft_ms * SLO_MARGIN:
                    rejected.append(_Rejection(gpu.name, n, "ttft", f"prefill floor "
                                               f"{prefill * 1e3:.0f} ms > {SLO_MARGIN:.0%} of "
                                               f"ttft_ms {w.ttft_ms:g}", prefill * 1e3))
                    continue
            capacity = max(0, kv_tokens // s.seq_tokens)
            ceiling = OFFLINE_NUM_SEQS_CAP if pattern == "throughput" else MAX_NUM_SEQS_CAP
            cap = min(ceiling, max(capacity, 1))
            slo_batch = _max_batch_for_tpot(s, gpu, n, w.tpot_ms, cap)
            if slo_batch == 0:
                step = s.step_seconds(gpu, n, 1)
                rejected.append(_Rejection(gpu.name, n, "tpot", f"decode floor "
                                           f"{step * 1e3:.1f} ms/token > {SLO_MARGIN:.0%} of "
                                           f"tpot_ms {w.tpot_ms:g}", step * 1e3))
                continue
            batch = slo_batch if pattern == "throughput" else min(slo_batch, w.concurrency)
            containers = math.ceil(w.concurrency / batch) if pattern != "throughput" else 1
            step = s.step_seconds(gpu, n, batch)
            full = s.full_load_seconds(gpu, n, batch, w.input_tokens / w.output_tokens)
            if w.throughput_tok_s:
                containers = max(containers, math.ceil(w.throughput_tok_s / (batch / full)))
            fits.append(Candidate(
                gpu=gpu, n_gpu=n, weights_bytes=s.weights_bytes, kv_capacity_tokens=kv_tokens,
                batch=batch, containers=containers, step_s=step, full_step_s=full,
                step1_s=s.step_seconds(gpu, n, 1),
                prefill_s=s.prefill_seconds(gpu, n, w.input_tokens),
                price_multiplier=multiplier))
    return fits, rejected


def latency_frontier(candidates: list[Candidate]) -> list[Candidate]:
    """The setups no other beats on both price and decode floor, cheapest (slowest) first."""
    frontier: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (round(c.cost_per_hour, 4), c.step_s)):
        if not frontier or candidate.step_s < frontier[-1].step_s:
            frontier.append(candidate)
    return frontier


def _latency_pick(frontier: list[Candidate], *, has_slo: bool) -> Candidate:
    """With SLOs: the cheapest that meets them (every candidate does). Without: the cheapest
    whose decode floor is within LATENCY_TIE of the fastest single-GPU setup."""
    if has_slo:
        return frontier[0]
    single = [c for c in frontier if c.n_gpu == 1] or frontier
    best = min(c.step_s for c in single)
    return next(c for c in frontier if c.step_s <= best * LATENCY_TIE)


def _rank(pattern: str, candidates: list[Candidate], *, has_slo: bool = False
          ) -> list[Candidate]:
    if pattern == "low-latency":
        pick = _latency_pick(latency_frontier(candidates), has_slo=has_slo)
        rest = sorted((c for c in candidates if c is not pick),
                      key=lambda c: (round(c.cost_per_hour, 4), c.step_s))
        return [pick, *rest]
    if pattern == "throughput":
        return sorted(candidates, key=lambda c: (c.cost_per_mtok, c.cost_per_hour))
    return sorted(candidates, key=lambda c: (round(c.cost_per_hour, 4), c.n_gpu * c.containers,
                                             c.step_s))


def _cold_start(s: _Sizing, platform: Platform, n: int) -> tuple[float, float, float]:
    """(weights floor, without snapshots, with snapshots) in seconds."""
    load = s.weights_bytes / (platform.volume_read_gb_s * GB)
    without = platform.container_start_s + load + platform.engine_init_s
    wake = s.weights_bytes / (n * platform.host_to_device_gb_s * GB)
    with_snap = platform.container_start_s + platform.snapshot_restore_s + load + wake
    return load, without, with_snap


# --- the decisions ------------------------------------------------------------------------------


def _pattern(w: Workload, online_cold_start_s: float | None) -> tuple[str, str]:
    if w.task in OUT_OF_SCOPE_TASKS:
        raise PlanRefused(f"out of scope: {OUT_OF_SCOPE_TASKS[w.task]}")
    if w.goal:
        why = {
            "online": "you asked for a standard online API: vLLM's OpenAI server behind "
                      "@modal.web_server",
            "cold-start": "you made startup latency the goal: vLLM with memory snapshots and "
                          "sleep/wake, worth its extra moving parts only for that",
            "low-latency": "you made lowest latency the explicit goal: SGLang behind "
                           "modal.experimental.http_server with a pinned region and sticky "
                           "sessions (the only case where SGLang's extra setup is justified)",
            "throughput": "you made tokens/s or tokens/$ the goal: vLLM's offline LLM "
                          "interface in a batch worker, no per-request HTTP",
        }[w.goal]
        return w.goal, why
    if w.offline:
        return "throughput", ("the work is offline (no per-request HTTP), so vLLM's LLM "
                              "interface in a batch worker; throughput is what counts")
    if (w.cold_start_s is not None and online_cold_start_s is not None
            and w.cold_start_s < online_cold_start_s):
        return "cold-start", (f"a cold start may take at most {w.cold_start_s:g} s but the "
                              f"default online app needs about {online_cold_start_s:.0f} s, so "
                              "startup latency is first-class: memory snapshots + sleep/wake")
    why = "online is the default: vLLM's OpenAI server behind @modal.web_server"
    if w.ttft_ms is not None or w.tpot_ms is not None:
        why += ("; latency SLOs alone do not switch to SGLang (set goal = 'low-latency' if "
                "lowest latency is the explicit objective)")
    return "online", why


def make_plan(w: Workload, *, gpu_catalog: Path | None = None) -> Plan:
    """Plan `w`; raises PlanRefused (saying what would fit) when nothing can meet it."""
    if w.task in OUT_OF_SCOPE_TASKS:
        raise PlanRefused(f"out of scope: {OUT_OF_SCOPE_TASKS[w.task]}")
    gpus, platform = load_gpu_catalog(gpu_catalog)
    if w.gpu and w.gpu not in gpus:
        raise WorkloadError(f"workload field 'gpu': {w.gpu!r} is not in the GPU catalog "
                            f"({', '.join(gpus)}); add it with --gpu-catalog", field="gpu")
    facts = model_facts(w.model, revision=w.revision)
    s = _sizing(w, facts)
    if w.context_length and w.context_length > facts.max_position:
        raise PlanRefused(f"context_length {w.context_length} exceeds what {facts.name} supports "
                          f"({facts.max_position} tokens): use at most {facts.max_position}")
    if (request := w.input_tokens + w.output_tokens) > facts.max_position:
        raise PlanRefused(f"a request of input_tokens {w.input_tokens} + output_tokens "
                          f"{w.output_tokens} = {request} tokens exceeds {facts.name}'s maximum "
                          f"context of {facts.max_position} tokens; shorten the requests")
    online_cold: float | None = None
    if w.goal is None and not w.offline and w.cold_start_s is not None:
        online_cold = _cold_start(s, platform, 1)[1]
    pattern, pattern_why = _pattern(w, online_cold)
    server = w.proxy_auth and pattern in ("low-latency", "cold-start")
    if server and pattern == "low-latency":
        pattern_why = ("you made lowest latency the explicit goal and your clients can send "
                       "Modal proxy-auth headers: vLLM on a Modal Server with a pinned region "
                       "(the Server form; without proxy_auth it would be SGLang behind "
                       "modal.experimental.http_server)")
    util = 0.85 if pattern == "low-latency" and not server else 0.90
    s = _sizing(w, facts, "cold-start" if server else pattern)
    fits, rejected = _candidates(w, s, gpus, platform, pattern, util, server=server)
    if server and not fits:
        # The Server form snapshots its engine, so one GPU; a bigger model keeps the pattern's
        # own recipe.
        server = False
        pattern_why += ("; the Server form (proxy_auth) snapshots one GPU and this model needs "
                        "more, so the pattern's own recipe")
        util = 0.85 if pattern == "low-latency" else 0.90
        s = _sizing(w, facts, pattern)
        fits, rejected = _candidates(w, s, gpus, platform, pattern, util)
    if (not fits and pattern == "cold-start" and w.goal is None
            and any(r.kind == "memory" for r in rejected)):
        # Snapshots need one GPU; a model that needs several keeps a warm container instead.
        pattern = "online"
        pattern_why += ("; but GPU snapshots need a single GPU and this model needs more, so "
                        "online with a warm container instead")
        s = _sizing(w, facts, pattern)
        fits, rejected = _candidates(w, s, gpus, platform, pattern, util)
    if not fits:
        raise PlanRefused(_why_nothing_fits(w, s, gpus, platform, rejected, util, pattern))
    ranked = _rank(pattern, fits, has_slo=w.ttft_ms is not None or w.tpot_ms is not None)
    chosen = ranked[0]
    if (gpus_needed := chosen.n_gpu * chosen.containers) > MAX_PLANNED_GPUS:
        raise PlanRefused(
            f"serving concurrency {w.concurrency} needs {gpus_needed} GPUs at peak even on the "
            f"best fit ({chosen.label()}, {chosen.batch} sequences per container); this planner "
            f"stops at {MAX_PLANNED_GPUS} GPUs, beyond the capacity a Modal workspace gets "
            "without arranging it with Modal: check the number, or split the workload")
    if w.budget_per_hour is not None:
        affordable = [c for c in ranked if c.cost_per_hour <= w.budget_per_hour]
        if not affordable:
            cheapest = min(fits, key=lambda c: c.cost_per_hour)
            per_container = cheapest.cost_per_hour / cheapest.containers
            seqs = int(w.budget_per_hour // per_container) * cheapest.batch
            hint = (f"raise the budget or lower concurrency to {seqs}" if seqs >= 1 else
                    f"raise the budget to at least ${per_container:.2f}/h (one container)")
            raise PlanRefused(
                f"no plan fits budget_per_hour ${w.budget_per_hour:g}: the cheapest, "
                f"{cheapest.label()} ({_containers(cheapest.containers)}), costs "
                f"${cheapest.cost_per_hour:.2f}/h at peak; {hint}")
        chosen = affordable[0]
    return _build(w, s, platform, pattern, pattern_why, chosen, ranked, util,
                  excluded=_excluded(rejected), server=server)


def _why_nothing_fits(w: Workload, s: _Sizing, gpus: dict[str, GPU], platform: Platform,
                      rejected: list[_Rejection], util: float, pattern: str) -> str:
    """Why no setup fits, from the rejections, and what would."""
    slo = [r for r in rejected if r.kind in ("ttft", "tpot")]  # these fit in memory
    if slo:
        parts = []
        for kind, field in (("ttft", "ttft_ms"), ("tpot", "tpot_ms")):
            misses = [r for r in slo if r.kind == kind]
            if misses:
                best = min(misses, key=lambda r: r.floor_ms)
                parts.append(f"the best {'prefill' if kind == 'ttft' else 'decode'} floor is "
                             f"{best.floor_ms:.1f} ms ({best.n_gpu}x {best.gpu}); {field} needs "
                             f">= {math.ceil(best.floor_ms / SLO_MARGIN)} (a {1 - SLO_MARGIN:.0%} "
                             "margin over the floor)")
        text = (f"no GPU setup meets these SLOs for {s.facts.name} ({s.precision}, "
                f"{w.input_tokens} prompt tokens): " + "; ".join(parts)
                + "; relax the SLO, shorten prompts, or pick a smaller model or fp8 precision")
        if pattern == "cold-start":
            text += ("; cold-start snapshots also limit a container to one GPU (drop goal = "
                     "'cold-start' to allow tensor parallelism)")
        return text
    allowed = [g for g in gpus.values() if not w.gpu or g.name == w.gpu]
    biggest = max(allowed, key=lambda g: g.memory_gb)
    tp = 1 if pattern == "cold-start" else max(n for n in TP_SIZES if n <= w.max_gpus)
    need = s.weights_bytes + s.max_model_len * s.kv_bytes_per_token / KV_HEADROOM
    node = tp * (biggest.memory_gb * GB * util - platform.gpu_overhead_gb * GB)
    if not any(r.kind == "memory" for r in rejected):
        return "no GPU setup fits: " + "; ".join(
            f"{r.n_gpu}x {r.gpu}: {r.why}" for r in rejected[:6])
    text = (f"{s.facts.name} at {s.precision} needs about {need / GB:.0f} GB for weights and "
            f"one {s.max_model_len}-token sequence, more than {tp}x {biggest.name} "
            f"({node / GB:.0f} GB usable) in one container")
    options = []
    for precision in ("fp8", "int4"):
        if PRECISIONS[precision] < s.bytes_per_param:
            smaller = s.facts.total_params * PRECISIONS[precision]
            if smaller + s.max_model_len * s.kv_bytes_per_token / KV_HEADROOM < node:
                options.append(f"precision = '{precision}' ({smaller / GB:.0f} GB of weights)")
    if options:
        text += "; it would fit with " + " or ".join(options)
    if pattern == "cold-start":
        return text + ("; GPU snapshots need a single GPU: drop goal = 'cold-start' to use "
                       "tensor parallelism (with a warm container for fast first requests)")
    nodes = max(2, math.ceil(need / node))
    text += (f"; otherwise it needs multi-node serving (about {nodes} nodes of {tp}x "
             f"{biggest.name}, modal.experimental.clustered with pipeline parallelism across "
             "nodes), which this tool does not plan")
    if w.gpu or w.max_gpus < 8:
        text += "; you also restricted gpu/max_gpus: lift that to see more options"
    return text


def _excluded(rejected: list[_Rejection]) -> str | None:
    """GPUs ruled out by what they cannot do (not by size or SLO), once each, with the reason."""
    seen: dict[str, str] = {}
    for rejection in rejected:
        if rejection.kind in ("precision", "fp8") and rejection.gpu not in seen:
            seen[rejection.gpu] = rejection.why
    return "; ".join(f"{gpu} {why}" for gpu, why in seen.items()) or None


def _build(w: Workload, s: _Sizing, platform: Platform, pattern: str, pattern_why: str,
           chosen: Candidate, ranked: list[Candidate], util: float, *,
           excluded: str | None = None, server: bool = False) -> Plan:
    gpu, n = chosen.gpu, chosen.n_gpu
    reasons: list[tuple[str, str]] = [("pattern", pattern_why)]
    if server:
        reasons.append(("primitive", "@app.server (the Server form, scripts/vllm_server.py): "
                        "your clients can send Modal proxy-auth headers, so Modal's Server "
                        "primitive fits: proxy auth on by default, routing and compute region "
                        "together, vLLM with CPU+GPU snapshots and sleep/wake on one GPU"))
    elif PRIMITIVES[pattern]:
        reasons.append(("primitive", {
            "web_server": "@modal.web_server: a standard HTTPS endpoint any client can call "
                          "with the engine's API key (set proxy_auth = true if your clients "
                          "can send Modal proxy-auth headers and latency matters)",
            "http_server": "modal.experimental.http_server, as the SGLang recipe uses it (set "
                           "proxy_auth = true for the @app.server form with vLLM instead)",
        }[str(PRIMITIVES[pattern])]))
    if excluded:
        reasons.append(("excluded", excluded))
    warnings: list[str] = []
    f = s.facts
    reasons.append(("model", f"{f.name}: {f.total_params / 1e9:.1f}B parameters"
                    + (f" ({f.active_params / 1e9:.1f}B active per token, {f.experts} experts, "
                       f"{f.experts_per_token} per token)" if f.is_moe else "")
                    + f", {f.layers} layers, {f.kv_heads} KV heads x {f.head_dim}; facts from "
                    f"{f.source}"))
    quantization = None
    if w.precision and w.precision != f.native_precision:
        if w.precision == "fp8" and f.native_precision in ("bf16", "fp16"):
            quantization = "fp8"
            reasons.append(("precision", "fp8 from a 16-bit checkpoint: vLLM quantizes the "
                            "weights at load (--quantization fp8), halving weight memory and "
                            "the bytes read per decode step"))
            warnings.append("the recipes have no quantization setting: serve an fp8 "
                            "checkpoint (e.g. a -FP8 repo), or add '--quantization', 'fp8' to "
                            "engine_command() by hand")
        else:
            warnings.append(f"precision {w.precision} differs from the checkpoint's "
                            f"{f.native_precision}: serve a checkpoint stored in "
                            f"{w.precision} (for int4, an AWQ/GPTQ repo) so the weights match "
                            "this plan")
    reasons.append(("memory", f"weights {s.weights_bytes / GB:.1f} GB at {s.precision}; KV "
                    f"cache {s.kv_bytes_per_token / 1024:.0f} KiB per token "
                    f"({f.kv_elements_per_token()} values x {s.kv_bytes_per_elem:g} B); a "
                    f"{s.seq_tokens}-token request holds "
                    f"{s.seq_tokens * s.kv_bytes_per_token / GB:.2f} GB; the engine takes "
                    f"{util:.0%} of each GPU and {platform.gpu_overhead_gb:g} GB per GPU go to "
                    "CUDA context, activations and graphs"))
    runner_up = [c for c in ranked if c is not chosen][:3]
    latency_basis = (
        "is the cheapest that meets your latency SLOs (faster setups cost more and buy nothing "
        "the SLOs ask for)" if w.ttft_ms is not None or w.tpot_ms is not None else
        f"is the cheapest whose decode floor is within {LATENCY_TIE:g}x of the fastest "
        "single-GPU setup; tensor parallelism would cut the last milliseconds at several "
        "times the price (give ttft_ms/tpot_ms to pick by your SLOs; the frontier is below)")
    basis = {"low-latency": latency_basis,
             "throughput": "has the lowest cost per million output tokens"}.get(
        pattern, "has the lowest cost at peak")
    reasons.append(("gpu", f"{chosen.label()} per container {basis}, of the setups that fit "
                    f"with headroom and meet your SLOs: ${chosen.cost_per_hour:.2f}/h for "
                    f"{_containers(chosen.containers)} at peak"
                    + ("; next: " + ", ".join(f"{c.label()} ({_containers(c.containers)}) "
                                              f"${c.cost_per_hour:.2f}/h" for c in runner_up)
                       if runner_up else "")))
    if n > 1:
        reasons.append(("tensor parallelism", f"{n} GPUs split the {f.heads} attention heads "
                        "evenly; TP is a power of two and at most 8 per container on Modal"))
    if w.model.startswith(GATED_ORGS):
        reasons.append(("access", f"{w.model} is gated on the Hub: HF_SECRET names a Modal "
                        "Secret holding HF_TOKEN (`modal secret create huggingface "
                        "HF_TOKEN=...`), after accepting the license on the model page"))
    if not gpu.price_verified:
        warnings.append(f"the {gpu.name} price (${gpu.price_per_hour}/h) is not verified: "
                        "check https://modal.com/pricing or override it with --gpu-catalog")
    if gpu.name == "T4":
        warnings.append("T4 (Turing) has no bf16 and no FlashAttention: vLLM runs it in fp16 "
                        "with slower attention kernels; check your engine version supports it")
    if s.kv_bytes_per_elem == 1.0 and not gpu.fp8:
        warnings.append(f"{gpu.name} has no fp8 tensor cores; fp8 KV cache still halves "
                        "memory but costs conversion time")
    # engine and concurrency knobs
    max_len = s.max_model_len
    capacity = chosen.kv_capacity_tokens // s.seq_tokens
    cap = OFFLINE_NUM_SEQS_CAP if pattern == "throughput" else MAX_NUM_SEQS_CAP
    max_num_seqs = max(1, min(cap, capacity))
    if pattern != "throughput":
        # room above the planned batch for bursts, bounded so CUDA graphs stay small
        max_num_seqs = max(1, min(max_num_seqs, chosen.batch * 2))
    target = max(1, chosen.batch)
    max_inputs: int | None = max(target, min(max_num_seqs, math.ceil(target * 1.25)))
    if pattern == "low-latency" and not server:
        max_inputs = None
    reasons.append(("context", f"max model len {max_len} tokens"
                    + (" (you asked for it)" if w.context_length else
                       f" (the model allows {f.max_position}; a shorter default keeps KV "
                       "reservations, snapshots and startup lean while fitting a typical "
                       "request; raise context_length if prompts need more)")))
    kv_text = (f"KV cache holds ~{chosen.kv_capacity_tokens:,} tokens per container after a "
               f"{1 - KV_HEADROOM:.0%} margin = {capacity} typical requests")
    if pattern == "throughput":
        reasons.append(("batch", f"{kv_text}; max_num_seqs {max_num_seqs} sequences decode "
                        "together (offline batches fill the KV cache); benchmark before raising"))
    else:
        reasons.append(("concurrency", f"{kv_text}; max_num_seqs {max_num_seqs}; target_inputs "
                    f"{target}"
                    + (f", max_inputs {max_inputs}" if max_inputs is not None else
                       " (http_server takes target_inputs only)")
                    + (f"; capped so the decode floor stays within {SLO_MARGIN:.0%} of the "
                       f"TPOT SLO ({w.tpot_ms:g} ms)" if w.tpot_ms else "")
                    + ". Conservative start: benchmark (`mls bench`) before raising them"))
    # containers and region
    containers = chosen.containers
    load_s, cold_without, cold_with = _cold_start(s, platform, n)
    predicted_cold = cold_with if pattern == "cold-start" else cold_without
    min_containers = 0
    if w.cold_start_s is not None and w.cold_start_s < predicted_cold:
        min_containers = 1
        reasons.append(("warm container", f"even the best cold start here is about "
                        f"{predicted_cold:.0f} s (> {w.cold_start_s:g} s allowed), so one "
                        "container stays warm (MIN_CONTAINERS = 1): a standing bill of "
                        f"${chosen.cost_per_hour / containers:.2f}/h"))
        if w.budget_per_hour is not None and chosen.cost_per_hour / containers > w.budget_per_hour:
            raise PlanRefused("a warm container is needed for the cold-start tolerance but "
                              "exceeds budget_per_hour; raise cold_start_s or the budget")
    elif pattern != "throughput":
        reasons.append(("scale to zero", "MIN_CONTAINERS = 0: nothing runs (or bills) while "
                        "idle; set it to 1 if the first request after idle must be fast"))
    max_containers = max(containers, min_containers)
    if pattern == "throughput":
        reasons.append(("workers", f"{_containers(containers)} (N_CONTAINERS)"
                        + (f" to reach {w.throughput_tok_s:g} output tok/s at "
                           f"{chosen.container_tok_s:,.0f} tok/s each" if w.throughput_tok_s
                           else "; raise N_CONTAINERS to finish a batch sooner at the same cost "
                           "per token")))
    else:
        reasons.append(("replicas", f"{w.concurrency} requests in flight / {chosen.batch} per "
                        f"container = {_containers(containers)} at peak"
                        + (f"; throughput target {w.throughput_tok_s:g} tok/s counted"
                           if w.throughput_tok_s else "")))
    region = _region(w, pattern, server=server)
    if (pattern == "low-latency" or server) and w.region is None:
        reasons.append(("region", "low latency pins the GPU near its proxy and clients: "
                        "us-east by default (set region to where your users are); pinning costs "
                        "1.75x per GPU-hour for a narrow region, counted in every cost here"))
    elif region:
        reasons.append(("region", f"pinned to {region}: GPU-hours cost "
                        f"{_region_multiplier(region):g}x there"))
    if pattern == "low-latency" and not server and region not in PROXY_REGIONS_SEEN:
        warnings.append(f"PROXY_REGIONS = ['{region}']: http_server proxies are documented for "
                        f"{', '.join(PROXY_REGIONS_SEEN)}; check that {region} has one, or pin a "
                        "region with a proxy near your users")
    # the very first start also downloads the weights from the Hub: be generous, but bounded
    startup = min(60 * MINUTES,
                  max(20 * MINUTES, math.ceil(cold_without * 4 / MINUTES) * MINUTES))
    predictions = _predictions(w, s, chosen, platform, load_s, cold_without, cold_with)
    return Plan(
        workload=w, model=f, pattern=pattern, engine="vllm" if server else ENGINES[pattern],
        recipe=SERVER_RECIPE if server else RECIPES[pattern],
        primitive="app.server" if server else PRIMITIVES[pattern],
        precision=s.precision, kv_cache_dtype=w.kv_cache_dtype, gpu=gpu, n_gpu=n,
        max_model_len=max_len, max_num_seqs=max_num_seqs, gpu_memory_utilization=util,
        target_inputs=target, max_inputs=max_inputs, min_containers=min_containers,
        max_containers=max_containers, buffer_containers=0, region=region,
        startup_timeout_s=startup, quantization=quantization,
        kv_cache_gib=math.ceil(max(max_num_seqs * s.seq_tokens, max_len)
                               * s.kv_bytes_per_token / 2**30),
        predictions=predictions,
        reasons=reasons, warnings=warnings, alternatives=runner_up, chosen=chosen,
        frontier=latency_frontier(ranked) if pattern == "low-latency" else [])


def _containers(n: int) -> str:
    return f"{n} container" + ("s" if n != 1 else "")


def _predictions(w: Workload, s: _Sizing, c: Candidate, platform: Platform, load_s: float,
                 cold_without: float, cold_with: float) -> list[Prediction]:
    gpu, n, b = c.gpu, c.n_gpu, c.batch
    bw = gpu.hbm_tb_s * 1e12
    tf = gpu.tflops(fp8=s.precision == "fp8") * 1e12
    price = gpu.price_per_hour * n * c.price_multiplier
    decode_inputs = {"W_bytes": s.weights_bytes, "kv_bytes_per_token": s.kv_bytes_per_token,
                     "ctx_avg": s.ctx_avg, "n_gpu": n, "hbm_bytes_s": bw,
                     "active_params": s.facts.active_params, "flops_s": tf}
    decode_inputs["allreduce_s"] = s.allreduce_seconds(gpu, n, b)
    step_formula = ("step(B) = max((W_touched(B) + B*ctx_avg*kv_bytes_per_token) / "
                    "(n_gpu*hbm_bytes_s), 2*active_params*B / (n_gpu*flops_s)) + allreduce_s; "
                    "allreduce_s = 2*layers*(latency + 2*(n_gpu-1)/n_gpu*B*hidden*2/link_bytes_s)"
                    " when n_gpu > 1 (NVLink 10 us, 300 GB/s; PCIe 25 us, 25 GB/s)"
                    + ("; MoE: W_touched(B) = W_common + W_experts*(1-(1-k/E)^B)"
                       if s.facts.is_moe else "; W_touched = W_bytes"))
    agg = b / c.step_s
    full = c.container_tok_s
    ratio = w.input_tokens / w.output_tokens
    return [
        Prediction("decode_tok_s_per_seq", 1 / c.step1_s, "tok/s",
                   "1 / step(1); " + step_formula, {**decode_inputs, "B": 1}),
        Prediction("decode_tok_s_at_batch", agg, "tok/s", "B / step(B) per container; "
                   + step_formula, {**decode_inputs, "B": b}),
        Prediction("tpot_floor_ms", c.step_s * 1e3, "ms", "step(B) * 1000", {"B": b}),
        Prediction("ttft_prefill_floor_ms", c.prefill_s * 1e3, "ms",
                   "max((2*active_params*L_in + 2*layers*L_in^2*heads*head_dim) / "
                   "(n_gpu*flops_s), W_bytes / (n_gpu*hbm_bytes_s)) * 1000; excludes queueing "
                   "and network", {"L_in": w.input_tokens, "active_params":
                                   s.facts.active_params, "n_gpu": n, "flops_s": tf,
                                   "W_bytes": s.weights_bytes, "hbm_bytes_s": bw}),
        Prediction("output_tok_s_full_load", full, "tok/s",
                   "B / max(step_memory(B), 2*active_params*B*(1 + L_in/L_out) / "
                   "(n_gpu*flops_s)) + allreduce_s: decode plus each request's prompt prefill "
                   "(continuous batching), per container; total tok/s = this * (1 + L_in/L_out)",
                   {"B": b, "L_in": w.input_tokens, "L_out": w.output_tokens,
                    "prompt_per_output": ratio, "total_tok_s": full * (1 + ratio)}),
        Prediction("cost_per_mtok_output_usd", price / (3600 * full) * 1e6, "USD/Mtok",
                   "price_per_hour*n_gpu*region_multiplier / (3600 * output_tok_s_full_load) "
                   "* 1e6, at full load", {"price_per_hour": gpu.price_per_hour, "n_gpu": n,
                                           "region_multiplier": c.price_multiplier,
                                           "output_tok_s_full_load": full}),
        Prediction("cold_start_weights_floor_s", load_s, "s",
                   "W_bytes / volume_read_bytes_s", {"W_bytes": s.weights_bytes,
                                                     "volume_read_bytes_s":
                                                     platform.volume_read_gb_s * GB}),
        Prediction("cold_start_without_snapshot_s", cold_without, "s",
                   "container_start + W_bytes/volume_read_bytes_s + engine_init",
                   {"container_start": platform.container_start_s,
                    "engine_init": platform.engine_init_s}),
        Prediction("cold_start_with_snapshot_s", cold_with, "s",
                   "container_start + snapshot_restore + W_bytes/volume_read_bytes_s + "
                   "W_bytes/(n_gpu*host_to_device_bytes_s)",
                   {"container_start": platform.container_start_s,
                    "snapshot_restore": platform.snapshot_restore_s,
                    "host_to_device_bytes_s": platform.host_to_device_gb_s * GB}),
    ]


# --- plain words ------------------------------------------------------------------------------

_PREDICTION_LABELS = {
    "decode_tok_s_per_seq": "decode ceiling, one sequence",
    "decode_tok_s_at_batch": "decode ceiling at the planned batch",
    "tpot_floor_ms": "time per output token, floor",
    "ttft_prefill_floor_ms": "time to first token, prefill floor",
    "output_tok_s_full_load": "output tokens/s at full load, prefill included",
    "cost_per_mtok_output_usd": "cost per million output tokens, full load",
    "cold_start_weights_floor_s": "cold start floor: weights off the Volume",
    "cold_start_without_snapshot_s": "cold start without snapshots",
    "cold_start_with_snapshot_s": "cold start with snapshots",
}


def explain(plan: Plan) -> str:
    """The plan in plain words: the choice, every reason, the predictions with formulas."""
    w, c = plan.workload, plan.chosen
    out = [f"plan for {w.model}@{(w.revision or 'local')[:12]}: {plan.pattern} pattern, "
           f"{plan.engine}, recipe {plan.recipe}",
           f"  {c.label()} per container, {_containers(c.containers)} at peak, "
           f"${c.cost_per_hour:.2f}/h at peak"
           + (f", region {plan.region}" if plan.region else ""),
           "", "why:"]
    out += [f"  - {topic}: {text}" for topic, text in plan.reasons]
    if plan.frontier:
        out += ["", "latency frontier (no setup is both cheaper and faster than these; "
                "floors are rooflines at the planned batch):"]
        out += [f"  {'>' if f is c else ' '} {f.label():<14} {_containers(f.containers):<14} "
                f"${f.cost_per_hour:8.2f}/h   TPOT floor {f.step_s * 1e3:6.2f} ms   "
                f"TTFT floor {f.prefill_s * 1e3:7.1f} ms"
                + ("   (fastest)" if f is plan.frontier[-1] else "")
                for f in plan.frontier]
    out += ["", "settings (recipe constants):"]
    out += [f"  {name} = {value!r}" for name, value in plan.recipe_settings().items()]
    batch = c.batch
    out += ["", f"predictions (roofline ceilings/floors on {c.label()}, batch {batch}; real "
            "engines land below ceilings and above floors: benchmark with `mls bench`):"]
    for p in plan.predictions:
        label = _PREDICTION_LABELS.get(p.name, p.name)
        value = f"{p.value:,.4f}" if p.value < 1 else f"{p.value:,.1f}"
        out.append(f"  {label}: {value} {p.unit}")
        out.append(f"      {p.formula}")
    if plan.warnings:
        out += ["", "warnings:"] + [f"  ! {text}" for text in plan.warnings]
    return "\n".join(out)
