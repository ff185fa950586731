"""The plan in plain words: every reason, warning and refusal, written from the decided values.

Nothing here decides: each sentence reads a Plan (or, for a refusal, the figures that refused it)
and says what it holds. `explain` is the text `mls plan` prints; `reasons_for` and
`warnings_for` are also in `mls plan --json`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from modal_llm_serving.facts.gpus import GB
from modal_llm_serving.facts.models import ModelFacts
from modal_llm_serving.facts.workload import OUT_OF_SCOPE_TASKS, Workload
from modal_llm_serving.plan.rules import (
    KV_HEADROOM,
    LATENCY_TIE,
    MAX_PLANNED_GPUS,
    MIN_SEQUENCES,
    PINNED_PRIMITIVES,
    PROXY_REGIONS_SEEN,
    SLO_MARGIN,
)

if TYPE_CHECKING:
    from modal_llm_serving.plan.cluster import ClusterProposal
    from modal_llm_serving.plan.sizing import Sizing
    from modal_llm_serving.plan.types import Candidate, Plan, Rejection, TooBig

__all__ = ["explain", "reasons_for", "warnings_for"]

_GOALS = {
    "online": "you asked for a standard online API: vLLM's OpenAI server behind "
              "@modal.web_server",
    "cold-start": "you made startup latency the goal: vLLM with memory snapshots and "
                  "sleep/wake, worth its extra moving parts only for that",
    "low-latency": "you made lowest latency the explicit goal: SGLang behind "
                   "modal.experimental.http_server with a pinned region and sticky "
                   "sessions (the only case where SGLang's extra setup is justified)",
    "throughput": "you made tokens/s or tokens/$ the goal: vLLM's offline LLM "
                  "interface in a batch worker, no per-request HTTP",
}
_PRIMITIVES = {
    "app.server": "@app.server (the Server form, scripts/vllm_server.py): your clients can send "
                  "Modal proxy-auth headers, so Modal's Server primitive fits: proxy auth on by "
                  "default, routing and compute region together, vLLM with CPU+GPU snapshots and "
                  "sleep/wake on one GPU",
    "web_server": "@modal.web_server: a standard HTTPS endpoint any client can call "
                  "with the engine's API key (set proxy_auth = true if your clients "
                  "can send Modal proxy-auth headers and latency matters)",
    "http_server": "modal.experimental.http_server, as the SGLang recipe uses it (set "
                   "proxy_auth = true for the @app.server form with vLLM instead)",
}
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
    "weights_per_node_gb": "weights each node loads",
}


def _containers(n: int) -> str:
    return f"{n} container" + ("s" if n != 1 else "")


# --- reasons ------------------------------------------------------------------------------------


def _pattern(plan: Plan) -> str:
    w = plan.workload
    if plan.basis == "goal":
        text = _GOALS[str(w.goal)]
    elif plan.basis == "goal-proxy-auth":
        text = ("you made lowest latency the explicit goal and your clients can send Modal "
                "proxy-auth headers: vLLM on a Modal Server with a pinned region (the Server "
                "form; without proxy_auth it would be SGLang behind "
                "modal.experimental.http_server)")
    elif plan.basis == "offline":
        text = ("the work is offline (no per-request HTTP), so vLLM's LLM interface in a batch "
                "worker; throughput is what counts")
    elif plan.basis == "slow-cold-start":
        text = (f"a cold start may take at most {w.cold_start_s:g} s but the default online app "
                f"needs about {plan.online_cold_start_s:.0f} s, so startup latency is "
                "first-class: memory snapshots + sleep/wake")
    else:
        text = "online is the default: vLLM's OpenAI server behind @modal.web_server"
        if w.ttft_ms is not None or w.tpot_ms is not None:
            text += ("; latency SLOs alone do not switch to SGLang (set goal = 'low-latency' if "
                     "lowest latency is the explicit objective)")
    if "server-one-gpu" in plan.fallbacks:
        text += ("; the Server form (proxy_auth) snapshots one GPU and this model needs more, so "
                 "the pattern's own recipe")
    if "snapshot-one-gpu" in plan.fallbacks:
        text += ("; but GPU snapshots need a single GPU and this model needs more, so online "
                 "with a warm container instead")
    return text


def _rejection(r: Rejection) -> str:
    """Why one GPU setup was ruled out, after its GPU's name."""
    return {
        "snapshot": "GPU snapshots do not support several GPUs",
        "fp8": "has no FP8 tensor cores for fp8 weights",
        "mxfp4": "(Turing) has no MXFP4 kernels",
        "precision": "has no native bf16 (it would run fp16); set allow_precision_fallback = "
                     "true to allow it",
        "heads": f"{r.heads} attention heads ({r.kv_heads} KV heads) do not split over "
                 f"{r.n_gpu} GPUs",
        "memory": f"needs {r.need_gb:.1f} GB, has {r.usable_gb:.1f} GB usable",
        "kv": f"the KV cache holds {r.sequences} sequences of {r.context} tokens after the "
              f"weights, fewer than the {r.need_sequences} one container must batch",
        "ttft": f"prefill floor {r.floor_ms:.0f} ms > {SLO_MARGIN:.0%} of ttft_ms {r.slo_ms:g}",
        "tpot": f"decode floor {r.floor_ms:.1f} ms/token > {SLO_MARGIN:.0%} of tpot_ms "
                f"{r.slo_ms:g}",
    }[r.kind]


def _excluded(rejected: list[Rejection]) -> str | None:
    """GPUs ruled out by what they cannot do (not by size or SLO), once each, with the reason."""
    seen: dict[str, str] = {}
    for rejection in rejected:
        if rejection.kind in ("precision", "fp8", "mxfp4") and rejection.gpu not in seen:
            seen[rejection.gpu] = _rejection(rejection)
    return "; ".join(f"{gpu} {why}" for gpu, why in seen.items()) or None


def _model(f: ModelFacts) -> str:
    return (f"{f.name}: {f.total_params / 1e9:.1f}B parameters"
            + (f" ({f.active_params / 1e9:.1f}B active per token, {f.experts} experts, "
               f"{f.experts_per_token} per token)" if f.is_moe else "")
            + f", {f.layers} layers, {f.kv_heads} KV heads x {f.head_dim}; facts from "
            f"{f.source}")


def _memory(plan: Plan) -> str:
    s = plan.sizing
    return (f"weights {s.weights_bytes / GB:.1f} GB at {s.precision}; KV "
            f"cache {s.kv_bytes_per_token / 1024:.0f} KiB per token "
            f"({_kv_values(plan)} x {s.kv_bytes_per_elem:g} B); a "
            f"{s.seq_tokens}-token request holds "
            f"{s.seq_tokens * s.kv_bytes_per_token / GB:.2f} GB; the engine takes "
            f"{plan.gpu_memory_utilization:.0%} of each GPU and "
            f"{plan.platform.gpu_overhead_gb:g} GB per GPU go to "
            "CUDA context, activations and graphs")


def _kv_values(plan: Plan) -> str:
    """The values a token caches; by layer type, as a formula of the sequence length L, when
    not every layer caches every token."""
    f = plan.model
    if f.kv_grows_with_every_token:
        return f"{f.kv_elements_per_token()} values"
    terms = [f"{f.kv_elements_per_token()}*L ({f.full_attention_layers} full-attention layers)"]
    if f.sliding_layers:
        terms.append(f"{2 * f.sliding_layers * f.kv_heads * f.head_dim}*min(L, "
                     f"{f.sliding_window}) ({f.sliding_layers} sliding-window layers)")
    if f.linear_layers:
        terms.append(f"{f.linear_layers}*{f.linear_state_elements} ({f.linear_layers} linear "
                     "layers' fixed state)")
    if f.attention_free_layers:
        terms.append(f"0 ({f.attention_free_layers} layers without attention)")
    return (f"{' + '.join(terms)} values per sequence of L tokens, taken at "
            f"L = {plan.sizing.seq_tokens},")


def _gpu(plan: Plan) -> str:
    w, chosen = plan.workload, plan.chosen
    latency_basis = (
        "is the cheapest that meets your latency SLOs (faster setups cost more and buy nothing "
        "the SLOs ask for)" if w.ttft_ms is not None or w.tpot_ms is not None else
        f"is the cheapest whose decode floor is within {LATENCY_TIE:g}x of the fastest "
        "single-GPU setup; tensor parallelism would cut the last milliseconds at several "
        "times the price (give ttft_ms/tpot_ms to pick by your SLOs; the frontier is below)")
    basis = {"low-latency": latency_basis,
             "throughput": "has the lowest cost per million output tokens"}.get(
        plan.pattern, "has the lowest cost at peak")
    return (f"{chosen.label()} per container {basis}, of the setups that fit "
            f"with headroom and meet your SLOs: ${chosen.cost_per_hour:.2f}/h for "
            f"{_containers(chosen.containers)} at peak"
            + ("; next: " + ", ".join(f"{c.label()} ({_containers(c.containers)}) "
                                      f"${c.cost_per_hour:.2f}/h" for c in plan.alternatives)
               if plan.alternatives else ""))


def _precision_trade(plan: Plan) -> str | None:
    """What another precision would take, beside what this one takes: memory, cost, quality."""
    if not plan.precision_options:
        return None
    c = plan.chosen
    parts = [f"at {plan.precision} the weights take {plan.sizing.weights_bytes / GB:.0f} GB and "
             f"{c.label()} (${c.cost_per_hour:.2f}/h at peak)"]
    for o in plan.precision_options:
        where = f" ({o.checkpoint})" if o.checkpoint else " (an FP8 checkpoint of it)"
        setup = (f"{o.best.label()} (${o.best.cost_per_hour:.2f}/h)" if o.best
                 else "no single container either")
        parts.append(f"at {o.precision}{where} {o.weights_bytes / GB:.0f} GB and {setup}")
    return ("; ".join(parts) + "; FP8 halves weight memory and the bytes each decode step "
            "reads, usually within a point or two of bf16 on benchmarks: check on your own evals "
            "before switching (precision = 'fp8')")


def _context(plan: Plan) -> str:
    return (f"max model len {plan.max_model_len} tokens"
            + (" (you asked for it)" if plan.workload.context_length else
               f" (the model allows {plan.model.max_position}; a shorter default keeps KV "
               "reservations, snapshots and startup lean while fitting a typical "
               "request; raise context_length if prompts need more)"))


def _batch(plan: Plan) -> tuple[str, str]:
    w, chosen = plan.workload, plan.chosen
    capacity = chosen.kv_capacity_tokens // plan.sizing.seq_tokens
    kv_text = (f"KV cache holds ~{chosen.kv_capacity_tokens:,} tokens per container after a "
               f"{1 - KV_HEADROOM:.0%} margin = {capacity} typical requests")
    if plan.pattern == "throughput":
        return ("batch", f"{kv_text}; max_num_seqs {plan.max_num_seqs} sequences decode "
                "together (offline batches fill the KV cache); benchmark before raising")
    return ("concurrency", f"{kv_text}; max_num_seqs {plan.max_num_seqs}; target_inputs "
            f"{plan.target_inputs}"
            + (f", max_inputs {plan.max_inputs}" if plan.max_inputs is not None else
               " (http_server takes target_inputs only)")
            + (f"; capped so the decode floor stays within {SLO_MARGIN:.0%} of the "
               f"TPOT SLO ({w.tpot_ms:g} ms)" if w.tpot_ms else "")
            + ". Conservative start: benchmark (`mls bench`) before raising them")


def _scaling(plan: Plan) -> list[tuple[str, str]]:
    """Warm or scale-to-zero, then workers or replicas."""
    w, chosen = plan.workload, plan.chosen
    out = []
    if plan.min_containers == 1:  # only a cold start longer than the workload allows sets it
        predicted_cold = plan.prediction("cold_start_with_snapshot_s" if plan.pattern ==
                                         "cold-start" else "cold_start_without_snapshot_s").value
        out.append(("warm container", f"even the best cold start here is about "
                    f"{predicted_cold:.0f} s (> {w.cold_start_s:g} s allowed), so one "
                    "container stays warm (MIN_CONTAINERS = 1): a standing bill of "
                    f"${chosen.cost_per_hour / chosen.containers:.2f}/h"))
    elif plan.pattern != "throughput":
        out.append(("scale to zero", "MIN_CONTAINERS = 0: nothing runs (or bills) while "
                    "idle; set it to 1 if the first request after idle must be fast"))
    if plan.pattern == "throughput":
        out.append(("workers", f"{_containers(chosen.containers)} (N_CONTAINERS)"
                    + (f" to reach {w.throughput_tok_s:g} output tok/s at "
                       f"{chosen.container_tok_s:,.0f} tok/s each" if w.throughput_tok_s
                       else "; raise N_CONTAINERS to finish a batch sooner at the same cost "
                       "per token")))
    else:
        out.append(("replicas", f"{w.concurrency} requests in flight / {chosen.batch} per "
                    f"container = {_containers(chosen.containers)} at peak"
                    + (f"; throughput target {w.throughput_tok_s:g} tok/s counted"
                       if w.throughput_tok_s else "")))
    return out


def _region(plan: Plan) -> str | None:
    if plan.primitive in PINNED_PRIMITIVES and plan.workload.region is None:
        return ("low latency pins the GPU near its proxy and clients: "
                "us-east by default (set region to where your users are); pinning costs "
                "1.75x per GPU-hour for a narrow region, counted in every cost here")
    if plan.region:
        return (f"pinned to {plan.region}: GPU-hours cost "
                f"{plan.chosen.price_multiplier:g}x there")
    return None


def reasons_for(plan: Plan) -> list[tuple[str, str]]:
    """(topic, plain-words explanation) for each decision, in the order they were taken."""
    out = [("pattern", _pattern(plan))]
    if plan.primitive:
        out.append(("primitive", _PRIMITIVES[plan.primitive]))
    if excluded := _excluded(plan.rejected):
        out.append(("excluded", excluded))
    if short := [r for r in plan.rejected if r.kind == "kv"]:
        out.append(("kv room", "; ".join(f"{r.n_gpu}x {r.gpu}: {_rejection(r)}"
                                         for r in short[:4])))
    out.append(("model", _model(plan.model)))
    if plan.quantization == "fp8":
        out.append(("precision", "fp8 from a 16-bit checkpoint: vLLM quantizes the "
                    "weights at load (--quantization fp8), halving weight memory and "
                    "the bytes read per decode step"))
    out += [("memory", _memory(plan)), ("gpu", _gpu(plan))]
    if trade := _precision_trade(plan):
        out.append(("precision trade", trade))
    if plan.n_gpu > 1:
        out.append(("tensor parallelism", f"{plan.n_gpu} GPUs split the {plan.model.heads} "
                    "attention heads evenly; TP is a power of two and at most 8 per container "
                    "on Modal"))
    if plan.hf_secret:
        out.append(("access", f"{plan.workload.model} is gated on the Hub: HF_SECRET names a "
                    "Modal Secret holding HF_TOKEN (`modal secret create huggingface "
                    "HF_TOKEN=...`), after accepting the license on the model page"))
    out += [("context", _context(plan)), _batch(plan), *_scaling(plan)]
    if region := _region(plan):
        out.append(("region", region))
    return out


def warnings_for(plan: Plan) -> list[str]:
    """What the plan cannot promise: settings the recipes lack, unverified figures, weak cards."""
    w, f, gpu = plan.workload, plan.model, plan.gpu
    out = []
    if plan.quantization:
        out.append("the recipes have no quantization setting: serve an fp8 "
                   "checkpoint (e.g. a -FP8 repo), or add '--quantization', 'fp8' to "
                   "engine_command() by hand")
    elif w.precision and w.precision != f.native_precision:
        out.append(f"precision {w.precision} differs from the checkpoint's "
                   f"{f.native_precision}: serve a checkpoint stored in "
                   f"{w.precision} (for int4, an AWQ/GPTQ repo) so the weights match "
                   "this plan")
    if not gpu.price_verified:
        out.append(f"the {gpu.name} price (${gpu.price_per_hour}/h) is not verified: "
                   "check https://modal.com/pricing or override it with --gpu-catalog")
    if gpu.link_assumed and plan.n_gpu > 1:
        out.append(f"the GPU catalog gives {gpu.name} no link bandwidth: {gpu.link}, "
                   f"{gpu.link_gb_s:g} GB/s each way, was assumed from nvlink = "
                   f"{str(gpu.nvlink).lower()}; add link and link_gb_s to your --gpu-catalog")
    if gpu.name == "T4":
        out.append("T4 (Turing) has no bf16 and no FlashAttention: vLLM runs it in fp16 "
                   "with slower attention kernels; check your engine version supports it")
    if plan.sizing.kv_bytes_per_elem == 1.0 and not gpu.fp8:
        out.append(f"{gpu.name} has no fp8 tensor cores; fp8 KV cache still halves "
                   "memory but costs conversion time")
    if plan.primitive == "http_server" and plan.region not in PROXY_REGIONS_SEEN:
        out.append(f"PROXY_REGIONS = ['{plan.region}']: http_server proxies are documented for "
                   f"{', '.join(PROXY_REGIONS_SEEN)}; check that {plan.region} has one, or pin "
                   "a region with a proxy near your users")
    return out


# --- the whole plan -----------------------------------------------------------------------------


def explain(plan: Plan) -> str:
    """The plan in plain words: the choice, every reason, the predictions with formulas."""
    w, c = plan.workload, plan.chosen
    out = [f"plan for {w.model}@{(w.revision or 'local')[:12]}: {plan.pattern} pattern, "
           f"{plan.engine}, recipe {plan.recipe}",
           f"  {c.label()} per container, {_containers(c.containers)} at peak, "
           f"${c.cost_per_hour:.2f}/h at peak"
           + (f", region {plan.region}" if plan.region else "")]
    if plan.cluster is not None:  # the containers are whole hosts of one cluster per copy
        out.append(f"  cluster: {plan.layout.label()} per copy of the model")
    out += ["", "why:"]
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
    share = c.gpu.achievable
    out += ["", f"predictions (roofline ceilings/floors on {c.label()}, batch {c.batch}; real "
            "engines land below ceilings and above floors: benchmark with `mls bench`):",
            f"  at {share.hbm:.0%} of the datasheet's HBM bandwidth and {share.bf16:.0%} (bf16) / "
            f"{share.fp8:.0%} (fp8) of its tensor FLOP/s: {share.source}"]
    for p in plan.predictions:
        label = _PREDICTION_LABELS.get(p.name, p.name)
        value = f"{p.value:,.4f}" if p.value < 1 else f"{p.value:,.1f}"
        out.append(f"  {label}: {value} {p.unit}")
        out.append(f"      {p.formula}")
    if plan.warnings:
        out += ["", "warnings:"] + [f"  ! {text}" for text in plan.warnings]
    return "\n".join(out)


# --- refusals: why there is no plan, and what would give one ------------------------------------


def out_of_scope(task: str) -> str:
    return f"out of scope: {OUT_OF_SCOPE_TASKS[task]}"


def unknown_gpu(name: str, catalog: list[str]) -> str:
    return (f"workload field 'gpu': {name!r} is not in the GPU catalog ({', '.join(catalog)}); "
            "add it with --gpu-catalog")


def context_too_long(w: Workload, f: ModelFacts) -> str:
    return (f"context_length {w.context_length} exceeds what {f.name} supports "
            f"({f.max_position} tokens): use at most {f.max_position}")


def request_too_long(w: Workload, f: ModelFacts) -> str:
    return (f"a request of input_tokens {w.input_tokens} + output_tokens {w.output_tokens} = "
            f"{w.input_tokens + w.output_tokens} tokens exceeds {f.name}'s maximum context of "
            f"{f.max_position} tokens; shorten the requests")


def too_many_gpus(w: Workload, chosen: Candidate) -> str:
    return (f"serving concurrency {w.concurrency} needs {chosen.n_gpu * chosen.containers} GPUs "
            f"at peak even on the best fit ({chosen.label()}, {chosen.batch} sequences per "
            f"container); this planner stops at {MAX_PLANNED_GPUS} GPUs, beyond the capacity a "
            "Modal workspace gets without arranging it with Modal: check the number, or split "
            "the workload")


def over_budget(budget_per_hour: float, cheapest: Candidate) -> str:
    per_container = cheapest.cost_per_hour / cheapest.containers
    seqs = int(budget_per_hour // per_container) * cheapest.batch
    hint = (f"raise the budget or lower concurrency to {seqs}" if seqs >= 1 else
            f"raise the budget to at least ${per_container:.2f}/h (one container)")
    return (f"no plan fits budget_per_hour ${budget_per_hour:g}: the cheapest, "
            f"{cheapest.label()} ({_containers(cheapest.containers)}), costs "
            f"${cheapest.cost_per_hour:.2f}/h at peak; {hint}")


def nothing_fits(w: Workload, s: Sizing, *, pattern: str, max_model_len: int,
                 rejected: list[Rejection], too_big: TooBig | None) -> str:
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
    if too_big is None:  # no setup was too small: each broke another rule
        return "no GPU setup fits: " + "; ".join(
            f"{r.n_gpu}x {r.gpu}: {_rejection(r)}" for r in rejected[:6])
    t = too_big
    smaller = " or ".join(f"precision = '{precision}' ({weights / GB:.0f} GB of weights)"
                          for precision, weights in t.smaller)
    if t.cluster is not None and pattern != "cold-start":
        return (f"{s.facts.name} at {s.precision} needs {cluster_summary(t.cluster)}; one "
                f"container holds {t.usable_bytes / GB:.0f} GB at most ({t.tp}x "
                f"{t.biggest.name})" + (f"; one would fit with {smaller}" if smaller else "")
                + f"; the multi-node recipe serves the online pattern only, not {pattern}, so "
                "nothing is written (drop goal for the online plan; --json gives the layout)")
    batch = min(w.concurrency, MIN_SEQUENCES)
    text = (f"{s.facts.name} at {s.precision} needs about {t.need_bytes / GB:.0f} GB for weights "
            f"and {batch} sequence{'s' if batch > 1 else ''} of {max_model_len} tokens, more "
            f"than {t.tp}x {t.biggest.name} ({t.usable_bytes / GB:.0f} GB usable) in one "
            "container")
    if smaller:
        text += f"; it would fit with {smaller}"
    if pattern == "cold-start":
        return text + ("; GPU snapshots need a single GPU: drop goal = 'cold-start' to use "
                       "tensor parallelism (with a warm container for fast first requests)")
    text += (f"; otherwise it needs multi-node serving (about {t.nodes} nodes of {t.tp}x "
             f"{t.biggest.name}), which this tool plans only on whole 8-GPU hosts of a GPU "
             "Modal clusters (H100, H200, B200, B300)")
    if w.gpu or w.max_gpus < 8:
        text += "; you also restricted gpu/max_gpus: lift that to see more options"
    return text


def cluster_summary(c: ClusterProposal) -> str:
    """The multi-node layout in one clause, with its numbers."""
    lay = c.layout
    per_seq = c.prediction("decode_tok_s_per_seq").value
    load = c.prediction("cold_start_weights_floor_s").value
    return (f"{lay.nodes} nodes of {lay.gpus_per_node}x {c.gpu.name} (TP {lay.tp} x PP "
            f"{lay.pp}" + (f", EP {lay.ep}" if lay.ep > 1 else "") + f"): "
            f"{c.weights_bytes / GB:.0f} GB of weights, KV room for {c.sequences} sequences of "
            f"{c.context} tokens, ${c.cost_per_hour:.2f}/h, ~{per_seq:.0f} tok/s per sequence, "
            f"each node loads {c.weights_bytes / lay.pp / GB:.0f} GB from the Volume "
            f"(>= {load:.0f} s)")
