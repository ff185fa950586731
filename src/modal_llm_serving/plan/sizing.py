"""The arithmetic: weights, KV cache, decode and prefill step times, cold starts, predictions.

Predictions are rooflines, so they are ceilings (floors for times) that real engines approach but
do not reach: decode reads all touched weights and the KV cache once per step at the card's HBM
bandwidth, or is bound by tensor-core FLOP/s, whichever is slower, plus a fixed cost per layer
(the kernels a layer launches, each with a floor however few bytes it reads). The input embedding
table is only gathered from (a row per token), so a step reads it only where it is also the LM
head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from modal_llm_serving.facts.gpus import GB, GPU, Platform
from modal_llm_serving.facts.models import ModelFacts, experts_touched_fraction
from modal_llm_serving.facts.workload import PRECISIONS, Workload
from modal_llm_serving.plan.rules import (
    COLLECTIVE_LATENCY_S,
    FP8_LAYER_EXTRA_S,
    KV_HEADROOM,
    LAYER_STEP_S,
    LINK_SHARE,
    MOE_LAYER_EXTRA_S,
)
from modal_llm_serving.plan.types import Candidate, Prediction

__all__ = ["Sizing", "cold_start_seconds", "engine_bytes", "largest_batch_within",
           "link_bytes_s", "longest_sequence_bytes", "longest_sequence_fits", "predictions",
           "sequences_held", "size", "weights_bytes_at"]


@dataclasses.dataclass(frozen=True)
class Sizing:
    """The model at the planned precision, and the typical request's tokens: what every GPU setup
    is measured against (computed once per plan)."""

    facts: ModelFacts
    precision: str
    kv_bytes_per_elem: float
    weights_bytes: float
    expert_bytes: float  # all routed experts' weights (0 for dense)
    gathered_bytes: float  # the input embedding table when it is not also the LM head
    ctx_avg: float  # average context a decoding sequence attends to
    seq_tokens: int  # KV tokens one typical request holds at its end

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes per token of the typical request."""
        return self.kv_bytes_per_token_at(self.seq_tokens)

    def kv_bytes_per_token_at(self, tokens: float) -> float:
        """KV cache bytes per token of one sequence `tokens` long: the same at any length for a
        plain transformer; with sliding-window or linear layers their bounded share (a window,
        a fixed state) is spread over the sequence, so longer ones cost less per token."""
        if self.facts.kv_grows_with_every_token:
            return self.facts.kv_elements_per_token() * self.kv_bytes_per_elem
        return self.facts.kv_elements(tokens) * self.kv_bytes_per_elem / tokens

    @property
    def bytes_per_param(self) -> float:
        return self.weights_bytes / self.facts.total_params

    def step_bytes(self, batch: int) -> float:
        """What one decode step reads: every weight but the untouched experts and the gathered
        embedding table, and each sequence's KV cache."""
        untouched = 1 - experts_touched_fraction(self.facts, batch)
        weights = self.weights_bytes - self.gathered_bytes - self.expert_bytes * untouched
        return weights + batch * self.ctx_avg * self.kv_bytes_per_token_at(self.ctx_avg)

    @property
    def fixed_step_seconds(self) -> float:
        """What a decode step costs however small: each layer's kernels (rules.LAYER_STEP_S),
        more where FP8 quantizes activations or a router picks experts."""
        per_layer = (LAYER_STEP_S + (FP8_LAYER_EXTRA_S if self.precision == "fp8" else 0.0)
                     + (MOE_LAYER_EXTRA_S if self.facts.is_moe else 0.0))
        return self.facts.layers * per_layer

    def step_seconds(self, gpu: GPU, n: int, batch: int) -> float:
        memory = self.step_bytes(batch) / (n * gpu.hbm_bytes_s)
        compute = 2 * self.facts.active_params * batch / (n * self._flops(gpu))
        return (max(memory, compute) + self.fixed_step_seconds
                + self.allreduce_seconds(gpu, n, batch))

    def full_load_seconds(self, gpu: GPU, n: int, batch: int, prompt_per_output: float) -> float:
        """A decode step at `batch` plus the prefill of `prompt_per_output` prompt tokens per
        output token (continuous batching mixes them), whichever bound is slower."""
        memory = self.step_bytes(batch) / (n * gpu.hbm_bytes_s)
        compute = (2 * self.facts.active_params * batch * (1 + prompt_per_output)
                   / (n * self._flops(gpu)))
        return (max(memory, compute) + self.fixed_step_seconds
                + self.allreduce_seconds(gpu, n, batch))

    def allreduce_seconds(self, gpu: GPU, n: int, batch: int, *, ep: int = 1) -> float:
        """Tensor parallelism over `n` GPUs: 2 ring all-reduces per layer (after attention and
        after the MLP) of `batch` x hidden activations at 2 bytes, each GPU sending
        2*(n-1)/n of the message over its link. With expert parallelism (`ep` > 1, MoE) the
        MLP's all-reduce becomes the all-to-all of `alltoall_seconds`."""
        if n == 1:
            return 0.0
        message = batch * self.facts.hidden * 2
        one = (COLLECTIVE_LATENCY_S[gpu.nvlink]
               + 2 * (n - 1) / n * message / link_bytes_s(gpu))
        if ep > 1 and self.facts.is_moe:
            return self.facts.layers * one + self.alltoall_seconds(gpu, ep, batch)
        return 2 * self.facts.layers * one

    def alltoall_seconds(self, gpu: GPU, ep: int, batch: int) -> float:
        """Expert parallelism over `ep` GPUs: per MoE layer (every layer counted) each GPU sends
        its `batch`/ep tokens' activations (hidden x 2 bytes) to the GPUs of their k experts,
        (ep-1)/ep of them elsewhere, and takes the results back: two all-to-alls."""
        if ep == 1 or not self.facts.is_moe:
            return 0.0
        sent = (batch / ep) * self.facts.experts_per_token * self.facts.hidden * 2
        one = COLLECTIVE_LATENCY_S[gpu.nvlink] + (ep - 1) / ep * sent / link_bytes_s(gpu)
        return self.facts.layers * 2 * one

    def prefill_seconds(self, gpu: GPU, n: int, prompt: int) -> float:
        f = self.facts
        flops = (2 * f.active_params * prompt
                 + 2 * f.layers * prompt * prompt * f.heads * min(f.head_dim, 192))
        return max(flops / (n * self._flops(gpu)),
                   (self.weights_bytes - self.gathered_bytes) / (n * gpu.hbm_bytes_s))

    def _flops(self, gpu: GPU) -> float:
        return gpu.flops_s(fp8=self.precision == "fp8")


def link_bytes_s(gpu: GPU) -> float:
    """Bytes/s a collective moves per GPU over the card's intra-node link: its datasheet
    bandwidth each way times LINK_SHARE."""
    return gpu.link_gb_s * 1e9 * LINK_SHARE


def weights_bytes_at(facts: ModelFacts, precision: str) -> float:
    """The weights' bytes at `precision`: the checkpoint's own size when that is its precision
    and the size is known; otherwise every parameter at the precision's width, but the
    vocabulary matrices, which quantized formats (FP8, INT4, MXFP4) leave at 16 bits."""
    if precision == facts.native_precision and facts.checkpoint_bytes:
        return facts.checkpoint_bytes
    width = PRECISIONS[precision]
    embedding = min(facts.embedding_params, facts.total_params)
    return (facts.total_params - embedding) * width + embedding * max(width, 2.0)


def size(w: Workload, facts: ModelFacts) -> Sizing:
    """The sizing of `facts` at the workload's precision (the checkpoint's own by default)."""
    precision = w.precision or facts.native_precision
    if precision not in PRECISIONS:
        precision = "bf16"
    weights = weights_bytes_at(facts, precision)
    embedding = min(facts.embedding_params, facts.total_params)
    # Bytes per parameter of the layers themselves (the vocabulary matrices are 16-bit).
    body = max(weights - 2 * embedding, 0.0) / max(facts.total_params - embedding, 1.0)
    expert = 0.0
    if facts.is_moe and facts.experts > facts.experts_per_token:
        e, k = facts.experts, facts.experts_per_token
        expert = (facts.total_params - facts.active_params) * e / (e - k)
    # Untied, the input table is only gathered from (a row per token); tied, it is the LM head.
    gathered = 0.0 if facts.tied_embeddings else facts.vocab * facts.hidden * 2.0
    return Sizing(facts=facts, precision=precision,
                  kv_bytes_per_elem=1.0 if w.kv_cache_dtype == "fp8" else 2.0,
                  weights_bytes=weights, expert_bytes=expert * body,
                  gathered_bytes=gathered,
                  ctx_avg=w.input_tokens + w.output_tokens / 2,
                  seq_tokens=w.input_tokens + w.output_tokens)


def engine_bytes(gpu: GPU, n: int, *, util: float, platform: Platform) -> float:
    """What `n` x `gpu` leave the engine for weights and KV cache: each GPU's memory times the
    engine's share `util`, less the platform's per-GPU overhead (CUDA context, activations)."""
    return n * (gpu.memory_gb * GB * util - platform.gpu_overhead_gb * GB)


def longest_sequence_bytes(s: Sizing, max_model_len: int) -> float:
    """KV cache bytes one `max_model_len`-token sequence needs, with the KV_HEADROOM margin."""
    return max_model_len * s.kv_bytes_per_token_at(max_model_len) / KV_HEADROOM


def longest_sequence_fits(s: Sizing, kv_bytes: float, max_model_len: int) -> bool:
    """Whether `kv_bytes` of KV cache (after the KV_HEADROOM margin) hold one sequence of
    `max_model_len` tokens: the least a working engine needs (vLLM will not start below it)."""
    longest = s.kv_bytes_per_token_at(max_model_len)
    return (int(kv_bytes * KV_HEADROOM / longest) if kv_bytes > 0 else 0) >= max_model_len


def sequences_held(s: Sizing, kv_bytes: float, max_model_len: int) -> int:
    """How many sequences of `max_model_len` tokens `kv_bytes` of KV cache hold after the
    KV_HEADROOM margin (the plan asks for min(concurrency, MIN_SEQUENCES) of them)."""
    if kv_bytes <= 0:
        return 0
    return int(kv_bytes * KV_HEADROOM / (max_model_len * s.kv_bytes_per_token_at(max_model_len)))


def largest_batch_within(step: Callable[[int], float], budget: float, cap: int) -> int:
    """The largest batch up to `cap` whose decode step `step(batch)` takes at most `budget` (in
    step's unit; 0 if even one sequence does not): steps grow with the batch, so a bisection."""
    if step(1) > budget:
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if step(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def cold_start_seconds(s: Sizing, platform: Platform, n: int) -> tuple[float, float, float]:
    """(weights floor, without snapshots, with snapshots) in seconds."""
    load = s.weights_bytes / (platform.volume_read_gb_s * GB)
    without = platform.container_start_s + load + platform.engine_init_s
    wake = s.weights_bytes / (n * platform.host_to_device_gb_s * GB)
    with_snap = platform.container_start_s + platform.snapshot_restore_s + load + wake
    return load, without, with_snap


def predictions(w: Workload, s: Sizing, c: Candidate, platform: Platform, *,
                cold: tuple[float, float, float]) -> list[Prediction]:
    """The chosen setup's ceilings and floors, each with its formula and the inputs plugged in;
    `cold` is its `cold_start_seconds`."""
    gpu, n, b = c.gpu, c.n_gpu, c.batch
    load_s, cold_without, cold_with = cold
    bw = gpu.hbm_bytes_s
    tf = gpu.flops_s(fp8=s.precision == "fp8")
    price = gpu.price_per_hour * n * c.price_multiplier
    decode_inputs = {"W_bytes": s.weights_bytes,
                     "kv_bytes_per_token": s.kv_bytes_per_token_at(s.ctx_avg),
                     "ctx_avg": s.ctx_avg, "n_gpu": n, "hbm_bytes_s": bw,
                     "active_params": s.facts.active_params, "flops_s": tf}
    decode_inputs["allreduce_s"] = s.allreduce_seconds(gpu, n, b)
    decode_inputs["link_bytes_s"] = link_bytes_s(gpu)
    decode_inputs["W_gathered"] = s.gathered_bytes
    decode_inputs["fixed_s"] = s.fixed_step_seconds
    step_formula = ("step(B) = max((W_touched(B) + B*ctx_avg*kv_bytes_per_token) / "
                    "(n_gpu*hbm_bytes_s), 2*active_params*B / (n_gpu*flops_s)) + fixed_s + "
                    f"allreduce_s; fixed_s = layers*({LAYER_STEP_S * 1e6:.0f} us + "
                    f"{FP8_LAYER_EXTRA_S * 1e6:.0f} us with FP8 activations + "
                    f"{MOE_LAYER_EXTRA_S * 1e6:.0f} us for MoE routing), the kernels' floor "
                    "measured on an H100; "
                    "allreduce_s = 2*layers*(latency + 2*(n_gpu-1)/n_gpu*B*hidden*2/link_bytes_s)"
                    f" when n_gpu > 1 (latency: NVLink 10 us, PCIe 25 us; link_bytes_s: "
                    f"{gpu.link} {gpu.link_gb_s:g} GB/s x {LINK_SHARE:g}); "
                    "W_gathered: the untied input embedding table, read a row per token"
                    + ("; MoE: W_touched(B) = W_bytes - W_gathered - W_experts*(1-k/E)^B"
                       if s.facts.is_moe else "; W_touched = W_bytes - W_gathered"))
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
                   "(n_gpu*flops_s), (W_bytes - W_gathered) / (n_gpu*hbm_bytes_s)) * 1000; "
                   "excludes queueing "
                   "and network", {"L_in": w.input_tokens, "active_params":
                                   s.facts.active_params, "n_gpu": n, "flops_s": tf,
                                   "W_bytes": s.weights_bytes, "hbm_bytes_s": bw,
                                   "W_gathered": s.gathered_bytes}),
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
