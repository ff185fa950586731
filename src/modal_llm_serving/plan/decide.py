"""From a workload to a Plan value: pattern, recipe, GPU type and count, every setting.

The pattern follows the skill's rules exactly: online (vLLM + `@modal.web_server`) is the default;
cold-start (snapshots + sleep/wake) only when startup latency is a first-class requirement;
low-latency (SGLang + `http_server`) only when lowest latency is the explicit goal; throughput
(vLLM's `LLM` in a batch worker) only for offline work. The recipe is the recipe table's row for
that pattern (its Server form when the clients send Modal proxy-auth headers).

Sizing: weights + KV cache (context and concurrency) + per-GPU overhead must fit in the engine's
share of GPU memory; tensor parallelism is a power of two up to 8 per container; replicas cover
the rest of the concurrency. Among the GPU setups that fit and meet the SLOs, the cheapest at
peak wins (lowest latency wins for the low-latency goal; lowest cost per token for throughput).

Deciding writes no sentences: setups that lose carry the rule they broke and its numbers, and
`explain.py` words everything afterwards (a refusal's message too).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from modal_llm_serving.errors import PlanRefused, WorkloadError
from modal_llm_serving.facts.gpus import GB, GPU, Platform, lacks_kernels, load_gpu_catalog
from modal_llm_serving.facts.models import ModelFacts, builtin_models, model_facts
from modal_llm_serving.facts.workload import (
    NARROW_REGIONS,
    OUT_OF_SCOPE_TASKS,
    PRECISIONS,
    Workload,
)
from modal_llm_serving.plan.cluster import (
    ClusterProposal,
    NeedsCluster,
    cluster_candidate,
    propose_cluster,
    serving_predictions,
)
from modal_llm_serving.plan.explain import (
    context_too_long,
    nothing_fits,
    out_of_scope,
    over_budget,
    request_too_long,
    too_many_gpus,
    unknown_gpu,
)
from modal_llm_serving.plan.explain_cluster import cluster_refused
from modal_llm_serving.plan.rules import (
    KV_HEADROOM,
    LATENCY_TIE,
    MAX_NUM_SEQS_CAP,
    MAX_PLANNED_GPUS,
    MEMORY_SHARE,
    MIN_SEQUENCES,
    MINUTES,
    OFFLINE_NUM_SEQS_CAP,
    PINNED_PRIMITIVES,
    ROUTING_REGIONS,
    SLO_MARGIN,
    TP_SIZES,
    needs_hf_token,
)
from modal_llm_serving.plan.sizing import (
    Sizing,
    cold_start_seconds,
    engine_bytes,
    largest_batch_within,
    longest_sequence_bytes,
    longest_sequence_fits,
    predictions,
    sequences_held,
    size,
    weights_bytes_at,
)
from modal_llm_serving.plan.types import (
    Basis,
    Candidate,
    Fallback,
    Plan,
    PrecisionOption,
    Rejection,
    RejectionKind,
    TooBig,
)
from modal_llm_serving.recipes.table import Recipe, recipe_for

__all__ = ["latency_frontier", "make_plan", "price_multiplier", "routing_region"]


@dataclasses.dataclass(frozen=True)
class _Weighed:
    """Every GPU setup for one recipe: those that fit, those ruled out, and the context length
    and share of GPU memory they were sized with."""

    recipe: Recipe
    max_model_len: int
    util: float
    fits: list[Candidate]
    rejected: list[Rejection]


def make_plan(w: Workload, *, gpu_catalog: Path | None = None) -> Plan:
    """Plan `w`; raises PlanRefused (saying what would fit) when nothing can meet it."""
    if w.task in OUT_OF_SCOPE_TASKS:
        raise PlanRefused(out_of_scope(w.task))
    gpus, platform = load_gpu_catalog(gpu_catalog)
    if w.gpu and w.gpu not in gpus:
        raise WorkloadError(unknown_gpu(w.gpu, list(gpus)), field="gpu")
    facts = model_facts(w.model, revision=w.revision)
    if w.context_length and w.context_length > facts.max_position:
        raise PlanRefused(context_too_long(w, facts))
    if w.input_tokens + w.output_tokens > facts.max_position:
        raise PlanRefused(request_too_long(w, facts))
    s = size(w, facts)
    online_cold: float | None = None
    if w.goal is None and not w.offline and w.cold_start_s is not None:
        online_cold = cold_start_seconds(s, platform, 1)[1]
    pattern, basis = _pattern(w, online_cold)
    if recipe_for(pattern, proxy_auth=w.proxy_auth).proxy_auth and pattern == "low-latency":
        basis = "goal-proxy-auth"
    pattern, weighed, fallbacks = _weigh_recipes(w, s, gpus, platform, pattern)
    if not weighed.fits:  # only several hosts hold it: the clustered recipe serves it online
        plan = _settle_cluster(w, s, platform, weighed, _cluster_or_refuse(
            w, s, gpus, platform, pattern, weighed), basis=basis, fallbacks=fallbacks)
    else:
        chosen, ranked = _choose(w, pattern, weighed)
        plan = _settle(w, s, platform, weighed, chosen, ranked, pattern=pattern, basis=basis,
                       online_cold_start_s=online_cold, fallbacks=fallbacks)
    if plan.n_gpu > 1:  # over one GPU: what another precision of the checkpoint would take
        plan.precision_options = _precision_options(w, s, gpus, platform, pattern, weighed)
    return plan


def _precision_options(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform,
                       pattern: str, weighed: _Weighed) -> list[PrecisionOption]:
    """FP8 for a 16-bit checkpoint (its -FP8 sibling where the catalog knows one, else vLLM's
    online quantization), with the best setup the same workload gets at it. A checkpoint already
    in FP8 or MXFP4 gains nothing from 16 bits but cost, so it is given no option."""
    if s.precision not in ("bf16", "fp16"):
        return []
    sibling = f"{w.model}-FP8"
    w8 = dataclasses.replace(w, precision="fp8")
    s8 = size(w8, s.facts)
    fits = _weigh(w8, s8, gpus, platform, pattern, weighed.recipe).fits
    best = _rank(pattern, fits, has_slo=w.ttft_ms is not None or w.tpot_ms is not None)
    return [PrecisionOption("fp8", sibling if sibling in builtin_models() else None,
                            s8.weights_bytes, best[0] if best else None)]


def _weigh_recipes(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform,
                   pattern: str) -> tuple[str, _Weighed, tuple[Fallback, ...]]:
    """The pattern's recipe with its GPU setups, after any single-GPU fallback; refused when no
    setup fits, unless only several hosts would hold the model (then `fits` is empty)."""
    recipe = recipe_for(pattern, proxy_auth=w.proxy_auth)
    fallbacks: list[Fallback] = []
    weighed = _weigh(w, s, gpus, platform, pattern, recipe)
    if not weighed.fits and recipe.proxy_auth:
        # The Server form snapshots its engine, so one GPU; a bigger model keeps the pattern's
        # own recipe. If that one snapshots too, it rules out the same setups: no second weighing.
        fallbacks.append("server-one-gpu")
        own = recipe_for(pattern)
        weighed = (dataclasses.replace(weighed, recipe=own) if own.snapshots
                   else _weigh(w, s, gpus, platform, pattern, own))
    if (not weighed.fits and pattern == "cold-start" and w.goal is None
            and any(r.kind == "memory" for r in weighed.rejected)):
        # Snapshots need one GPU; a model that needs several keeps a warm container instead.
        fallbacks.append("snapshot-one-gpu")
        pattern = "online"
        weighed = _weigh(w, s, gpus, platform, pattern, recipe_for(pattern))
    if not weighed.fits and pattern != "online":  # the clustered recipe serves online only
        _cluster_or_refuse(w, s, gpus, platform, pattern, weighed)
    return pattern, weighed, tuple(fallbacks)


def _choose(w: Workload, pattern: str, weighed: _Weighed) -> tuple[Candidate, list[Candidate]]:
    """The best fitting setup within the budget, and every fitting setup in rank order."""
    ranked = _rank(pattern, weighed.fits, has_slo=w.ttft_ms is not None or w.tpot_ms is not None)
    chosen = ranked[0]
    if chosen.n_gpu * chosen.containers > MAX_PLANNED_GPUS:
        raise PlanRefused(too_many_gpus(w, chosen))
    if w.budget_per_hour is not None:
        affordable = [c for c in ranked if c.cost_per_hour <= w.budget_per_hour]
        if not affordable:
            cheapest = min(weighed.fits, key=lambda c: c.cost_per_hour)
            raise PlanRefused(over_budget(w.budget_per_hour, cheapest))
        chosen = affordable[0]
    return chosen, ranked


# --- the pattern, the context, the region --------------------------------------------------------


def _pattern(w: Workload, online_cold_start_s: float | None) -> tuple[str, Basis]:
    if w.goal:
        return w.goal, "goal"
    if w.offline:
        return "throughput", "offline"
    if (w.cold_start_s is not None and online_cold_start_s is not None
            and w.cold_start_s < online_cold_start_s):
        return "cold-start", "slow-cold-start"
    return "online", "default"


def _max_model_len(w: Workload, facts: ModelFacts, pattern: str, recipe: Recipe) -> int:
    """The engine's context length: the workload's context_length, else a lean default that
    still fits a typical request."""
    if w.context_length:
        return w.context_length
    need = w.input_tokens + w.output_tokens
    if pattern == "throughput":  # offline lengths are known: the next power of two
        want = max(1024, 1 << (need - 1).bit_length())
    elif recipe.snapshots:  # small KV reservations keep snapshots lean
        want = max(4096, need)
    else:
        want = max(8192, need)
    return min(facts.max_position, want)


def _region(w: Workload, recipe: Recipe) -> str | None:
    """The region to pin: the workload's, else us-east next to a proxy that sits in one."""
    return w.region or ("us-east" if recipe.primitive in PINNED_PRIMITIVES else None)


def routing_region(region: str | None) -> str:
    """The Server routing region nearest a compute region (us-east unless it is elsewhere)."""
    if not region:
        return "us-east"
    return next((routing for prefix, routing in ROUTING_REGIONS.items()
                 if region == prefix or region.startswith(prefix + "-")), "us-east")


def price_multiplier(region: str | None) -> float:
    """What pinning `region` multiplies a GPU's list price by: 1 unpinned, 1.75 for a narrow
    region (us-east), 1.5 for a broad one (us); the bench's measured cost uses it too."""
    if region is None:
        return 1.0
    return 1.75 if region in NARROW_REGIONS else 1.5


# --- the GPU setups ----------------------------------------------------------------------------


def _weigh(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform, pattern: str,
           recipe: Recipe) -> _Weighed:
    """Size every allowed GPU setup for `recipe`: fitting candidates and rejections."""
    util = MEMORY_SHARE[recipe.engine]
    max_model_len = _max_model_len(w, s.facts, pattern, recipe)
    multiplier = price_multiplier(_region(w, recipe))
    fits: list[Candidate] = []
    rejected: list[Rejection] = []
    for gpu in gpus.values():
        if w.gpu and gpu.name != w.gpu:
            continue
        if lacks := _card_lacks(w, s, gpu):  # no GPU count makes up for it
            rejected.append(Rejection(gpu.name, 1, lacks))
            continue
        for n in TP_SIZES:
            if n > w.max_gpus:
                continue
            setup = _setup(w, s, gpu, n, platform, pattern=pattern, recipe=recipe,
                           max_model_len=max_model_len, util=util, multiplier=multiplier)
            if isinstance(setup, Candidate):
                fits.append(setup)
            else:
                rejected.append(setup)
    return _Weighed(recipe, max_model_len, util, fits, rejected)


def _card_lacks(w: Workload, s: Sizing, gpu: GPU) -> RejectionKind | None:
    """What the card cannot do for this precision, if anything."""
    if lacks := lacks_kernels(gpu, s.precision):
        return lacks
    if s.precision == "bf16" and not gpu.bf16 and not w.allow_precision_fallback:
        return "precision"
    return None


def _setup(w: Workload, s: Sizing, gpu: GPU, n: int, platform: Platform, *, pattern: str,
           recipe: Recipe, max_model_len: int, util: float,
           multiplier: float) -> Candidate | Rejection:
    """`n` x `gpu` per container: how the workload lands on it, or the rule it breaks."""
    if recipe.snapshots and n > 1:
        return Rejection(gpu.name, n, "snapshot")
    if not s.facts.splits_over(n):
        return Rejection(gpu.name, n, "heads", heads=s.facts.heads, kv_heads=s.facts.kv_heads)
    kv_bytes = engine_bytes(gpu, n, util=util, platform=platform) - s.weights_bytes
    kv_tokens = int(kv_bytes * KV_HEADROOM / s.kv_bytes_per_token) if kv_bytes > 0 else 0
    # one sequence as long as the context length must fit (its own bytes per token)
    if not longest_sequence_fits(s, kv_bytes, max_model_len):
        need = (s.weights_bytes + longest_sequence_bytes(s, max_model_len)
                + n * platform.gpu_overhead_gb * GB) / GB
        return Rejection(gpu.name, n, "memory", need_gb=need, usable_gb=n * gpu.memory_gb * util)
    # ... and as many as the workload needs to batch at all (rules.MIN_SEQUENCES)
    held, wanted = sequences_held(s, kv_bytes, max_model_len), min(w.concurrency, MIN_SEQUENCES)
    if held < wanted:
        return Rejection(gpu.name, n, "kv", sequences=held, need_sequences=wanted,
                         context=max_model_len)
    prefill = s.prefill_seconds(gpu, n, w.input_tokens)
    if w.ttft_ms is not None and prefill * 1e3 > w.ttft_ms * SLO_MARGIN:
        return Rejection(gpu.name, n, "ttft", floor_ms=prefill * 1e3, slo_ms=w.ttft_ms)
    capacity = max(0, kv_tokens // s.seq_tokens)
    ceiling = OFFLINE_NUM_SEQS_CAP if pattern == "throughput" else MAX_NUM_SEQS_CAP
    step1 = s.step_seconds(gpu, n, 1)
    slo_batch = _max_batch_for_tpot(s, gpu, n, w.tpot_ms, min(ceiling, max(capacity, 1)))
    if w.tpot_ms is not None and slo_batch == 0:
        return Rejection(gpu.name, n, "tpot", floor_ms=step1 * 1e3, slo_ms=w.tpot_ms)
    batch = slo_batch if pattern == "throughput" else min(slo_batch, w.concurrency)
    containers = math.ceil(w.concurrency / batch) if pattern != "throughput" else 1
    full = s.full_load_seconds(gpu, n, batch, w.input_tokens / w.output_tokens)
    if w.throughput_tok_s:
        containers = max(containers, math.ceil(w.throughput_tok_s / (batch / full)))
    return Candidate(gpu=gpu, n_gpu=n, weights_bytes=s.weights_bytes,
                     kv_capacity_tokens=kv_tokens, batch=batch, containers=containers,
                     step_s=s.step_seconds(gpu, n, batch), full_step_s=full, step1_s=step1,
                     prefill_s=prefill, price_multiplier=multiplier)


def _max_batch_for_tpot(s: Sizing, gpu: GPU, n: int, tpot_ms: float | None, cap: int) -> int:
    """Largest batch whose decode step still meets the TPOT SLO (0 if even 1 misses)."""
    if tpot_ms is None:
        return cap
    return largest_batch_within(lambda batch: s.step_seconds(gpu, n, batch) * 1e3,
                                tpot_ms * SLO_MARGIN, cap)


def _too_big(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform,
             weighed: _Weighed, pattern: str) -> TooBig:
    """What one container can hold at most, against what the model needs, what would fit, and
    (where snapshots do not pin one GPU) the multi-node layout that would."""
    allowed = [g for g in gpus.values() if not w.gpu or g.name == w.gpu]
    biggest = max(allowed, key=lambda g: g.memory_gb)
    tp = 1 if weighed.recipe.snapshots else max(n for n in TP_SIZES if n <= w.max_gpus)
    # the weights and the fewest sequences of the context length a container must batch
    sequence = longest_sequence_bytes(s, weighed.max_model_len) * min(w.concurrency,
                                                                      MIN_SEQUENCES)
    need = s.weights_bytes + sequence
    node = engine_bytes(biggest, tp, util=weighed.util, platform=platform)
    smaller = []
    for precision in ("fp8", "int4"):
        if PRECISIONS[precision] < s.bytes_per_param:
            weights = weights_bytes_at(s.facts, precision)
            if weights + sequence < node:
                smaller.append((precision, weights))
    cluster = None
    if pattern != "cold-start" and w.max_gpus == 8:
        cluster = propose_cluster(w, s, gpus, platform, max_model_len=weighed.max_model_len,
                                  util=weighed.util)
    return TooBig(need_bytes=need, tp=tp, biggest=biggest, usable_bytes=node, smaller=smaller,
                  nodes=max(2, math.ceil(need / node)), cluster=cluster)


def _cluster_or_refuse(w: Workload, s: Sizing, gpus: dict[str, GPU], platform: Platform,
                       pattern: str, weighed: _Weighed) -> ClusterProposal:
    """The multi-node layout where only several hosts hold the model and the pattern is online;
    else raise why no setup fits: NeedsCluster (with the layout) or PlanRefused. A host that
    holds it but misses an SLO is refused so: a token passes a cluster's stages in turn."""
    too_small = any(r.kind in ("memory", "kv") for r in weighed.rejected)
    too_big = _too_big(w, s, gpus, platform, weighed, pattern) if too_small else None
    slow = any(r.kind in ("ttft", "tpot") for r in weighed.rejected)
    if too_big is not None and too_big.cluster is not None and pattern == "online" and not slow:
        return too_big.cluster
    message = nothing_fits(w, s, pattern=pattern, max_model_len=weighed.max_model_len,
                           rejected=weighed.rejected, too_big=too_big)
    if too_big is not None and too_big.cluster is not None:
        raise NeedsCluster(message, proposal=too_big.cluster)
    raise PlanRefused(message)


# --- ranking -----------------------------------------------------------------------------------


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


def _rank(pattern: str, candidates: list[Candidate], *, has_slo: bool) -> list[Candidate]:
    if pattern == "low-latency":
        pick = _latency_pick(latency_frontier(candidates), has_slo=has_slo)
        rest = sorted((c for c in candidates if c is not pick),
                      key=lambda c: (round(c.cost_per_hour, 4), c.step_s))
        return [pick, *rest]
    if pattern == "throughput":
        return sorted(candidates, key=lambda c: (c.cost_per_mtok, c.cost_per_hour))
    return sorted(candidates, key=lambda c: (round(c.cost_per_hour, 4), c.n_gpu * c.containers,
                                             c.step_s))


# --- every setting -----------------------------------------------------------------------------


def _engine_kv_cache_dtype(kv_cache_dtype: str, engine: str) -> str:
    """The KV cache format in the engine's own word ("fp8" in vLLM, "fp8_e4m3" in SGLang)."""
    if kv_cache_dtype != "fp8":
        return "auto"
    return "fp8_e4m3" if engine == "sglang" else "fp8"


def _settle(w: Workload, s: Sizing, platform: Platform, weighed: _Weighed, chosen: Candidate,
            ranked: list[Candidate], *, pattern: str, basis: Basis,
            online_cold_start_s: float | None, fallbacks: tuple[Fallback, ...]) -> Plan:
    """Every setting for the chosen setup, and its predictions."""
    recipe, f = weighed.recipe, s.facts
    # engine and concurrency knobs
    capacity = chosen.kv_capacity_tokens // s.seq_tokens
    cap = OFFLINE_NUM_SEQS_CAP if pattern == "throughput" else MAX_NUM_SEQS_CAP
    max_num_seqs = max(1, min(cap, capacity))
    if pattern != "throughput":
        # room above the planned batch for bursts, bounded so CUDA graphs stay small
        max_num_seqs = max(1, min(max_num_seqs, chosen.batch * 2))
    target = max(1, chosen.batch)
    max_inputs: int | None = max(target, min(max_num_seqs, math.ceil(target * 1.25)))
    if recipe.primitive == "http_server":  # it takes target_inputs only
        max_inputs = None
    # containers: one stays warm when even the best cold start is longer than allowed
    cold = cold_start_seconds(s, platform, chosen.n_gpu)
    predicted_cold = cold[2] if pattern == "cold-start" else cold[1]
    min_containers = 0
    if w.cold_start_s is not None and w.cold_start_s < predicted_cold:
        # within any budget: one container costs at most the chosen setup's affordable peak
        min_containers = 1
    region = _region(w, recipe)
    # the very first start also downloads the weights from the Hub: be generous, but bounded
    startup = min(60 * MINUTES, max(20 * MINUTES, math.ceil(cold[1] * 4 / MINUTES) * MINUTES))
    return Plan(
        workload=w, model=f, sizing=s, platform=platform, pattern=pattern, basis=basis,
        online_cold_start_s=online_cold_start_s, fallbacks=fallbacks, recipe_row=recipe,
        gpu=chosen.gpu, n_gpu=chosen.n_gpu, max_model_len=weighed.max_model_len,
        max_num_seqs=max_num_seqs, gpu_memory_utilization=weighed.util, target_inputs=target,
        max_inputs=max_inputs, min_containers=min_containers,
        max_containers=max(chosen.containers, min_containers), buffer_containers=0,
        region=region, routing_region=routing_region(region),
        proxy_regions=[region] if region else [],
        served_model_name=w.served_model_name or w.model,
        hf_secret="huggingface" if needs_hf_token(w.model, gated=f.gated) else None,
        engine_kv_cache_dtype=_engine_kv_cache_dtype(w.kv_cache_dtype, recipe.engine),
        startup_timeout_s=startup,
        quantization=("fp8" if w.precision == "fp8" and f.native_precision in ("bf16", "fp16")
                      else None),
        kv_cache_gib=math.ceil(max(max_num_seqs * s.seq_tokens * s.kv_bytes_per_token,
                                   weighed.max_model_len
                                   * s.kv_bytes_per_token_at(weighed.max_model_len)) / 2**30),
        predictions=predictions(w, s, chosen, platform, cold=cold),
        rejected=weighed.rejected, alternatives=[c for c in ranked if c is not chosen][:3],
        chosen=chosen, frontier=latency_frontier(ranked) if pattern == "low-latency" else [])


def _settle_cluster(w: Workload, s: Sizing, platform: Platform, weighed: _Weighed,
                    proposal: ClusterProposal, *, basis: Basis,
                    fallbacks: tuple[Fallback, ...]) -> Plan:
    """Every setting of the clustered recipe for `proposal`: container counts in whole clusters,
    one copy warm only where the workload's cold start asks for it, a startup limit that covers
    reading every weight off the Volume (as `mls check` MLS026 asks)."""
    recipe = recipe_for("multi-node")
    region = _region(w, recipe)
    chosen = cluster_candidate(w, s, proposal, multiplier=price_multiplier(region))
    message = cluster_refused(w, s, proposal, chosen)  # None: the cluster serves it
    if chosen is None or message:
        raise NeedsCluster(message or "", proposal=proposal)
    nodes = proposal.layout.nodes
    max_num_seqs = max(1, min(MAX_NUM_SEQS_CAP, chosen.kv_capacity_tokens // s.seq_tokens,
                              chosen.batch * 2))
    cold = proposal.prediction("cold_start_without_snapshot_s").value
    every_weight = s.weights_bytes / (platform.volume_read_gb_s * GB)
    startup = max(min(60 * MINUTES, max(20 * MINUTES, math.ceil(cold * 4 / MINUTES) * MINUTES)),
                  math.ceil(every_weight / MINUTES + 1) * MINUTES)
    min_containers = nodes if w.cold_start_s is not None and w.cold_start_s < cold else 0
    return Plan(
        workload=w, model=s.facts, sizing=s, platform=platform, pattern="multi-node",
        basis=basis, online_cold_start_s=None, fallbacks=fallbacks, recipe_row=recipe,
        gpu=chosen.gpu, n_gpu=chosen.n_gpu, max_model_len=weighed.max_model_len,
        max_num_seqs=max_num_seqs, gpu_memory_utilization=weighed.util, target_inputs=chosen.batch,
        max_inputs=max(chosen.batch, min(max_num_seqs, math.ceil(chosen.batch * 1.25))),
        min_containers=min_containers, max_containers=max(chosen.containers, min_containers),
        buffer_containers=0, region=region, routing_region=routing_region(region),
        proxy_regions=[region] if region else [], served_model_name=w.served_model_name or w.model,
        hf_secret="huggingface" if needs_hf_token(w.model, gated=s.facts.gated) else None,
        engine_kv_cache_dtype=_engine_kv_cache_dtype(w.kv_cache_dtype, recipe.engine),
        startup_timeout_s=startup,
        quantization=("fp8" if w.precision == "fp8" and s.facts.native_precision in (
            "bf16", "fp16") else None),
        kv_cache_gib=0,  # the clustered recipe does not snapshot: no reservation to keep lean
        predictions=serving_predictions(w, s, proposal, chosen), rejected=weighed.rejected,
        alternatives=[], chosen=chosen, cluster=proposal)
