"""The numbers the plan's rules rest on, each with why (deciding and explaining share them)."""

from __future__ import annotations

__all__ = [
    "COLLECTIVE_LATENCY_S",
    "FABRIC_LATENCY_S",
    "GATED_ORGS",
    "KV_HEADROOM",
    "LATENCY_TIE",
    "LINK_SHARE",
    "MAX_NUM_SEQS_CAP",
    "MAX_PLANNED_GPUS",
    "MEMORY_SHARE",
    "MINUTES",
    "MIN_SEQUENCES",
    "OFFLINE_NUM_SEQS_CAP",
    "PINNED_PRIMITIVES",
    "PROXY_REGIONS_SEEN",
    "ROUTING_REGIONS",
    "SLO_MARGIN",
    "TP_SIZES",
    "needs_hf_token",
]

MINUTES = 60
# Past this many GPUs at peak a plan is a capacity negotiation with Modal, not a recipe setting.
MAX_PLANNED_GPUS = 2000
TP_SIZES = (1, 2, 4, 8)  # tensor parallelism: a power of two, at most 8 GPUs per container
MAX_NUM_SEQS_CAP = 256  # vLLM's default max_num_seqs: a sane ceiling before benchmarking
OFFLINE_NUM_SEQS_CAP = 512  # offline batches gain from larger batches while KV allows
# Hub organisations whose models are gated: the app needs a Secret holding HF_TOKEN.
GATED_ORGS = ("meta-llama/", "google/", "mistralai/")
# The engine's share of each GPU's memory (vLLM --gpu-memory-utilization, SGLang
# --mem-fraction-static) when the app sets none: SGLang keeps more memory for itself.
MEMORY_SHARE = {"vllm": 0.90, "sglang": 0.85}
KV_HEADROOM = 0.9  # plan on 90% of the computed KV capacity (fragmentation, prefix blocks)
# Tensor parallelism all-reduces activations twice per layer per step, expert parallelism
# sends each token to its experts' GPUs and back (an all-to-all); each collective costs a latency
# however small the message (which caps what TP buys at batch 1: without it the roofline would
# call 8 GPUs 8x faster, which no engine reaches) plus its bytes over the GPU's link (the
# catalog's link_gb_s). Latency estimates: NVLink ~10 us, PCIe ~25 us (through the host).
COLLECTIVE_LATENCY_S = {True: 10e-6, False: 25e-6}  # nvlink -> seconds per collective
# The share of a link's datasheet bandwidth a collective reaches: 380 of NVLink 4's 450 GB/s
# each way measured peer to peer on an H100 SXM (https://github.com/NVIDIA/nccl/issues/1264).
LINK_SHARE = 0.8
# Pipeline parallelism across hosts passes each token's activations from stage to stage over the
# cluster's RDMA fabric: a few microseconds a hop (estimate) plus the bytes.
FABRIC_LATENCY_S = 5e-6
# KV room is judged against the workload, not "anything above zero": a container must hold at
# least min(concurrency, MIN_SEQUENCES) sequences as long as its context length (requests that
# long are admitted, so a few arriving together must fit), or continuous batching has nothing
# to batch: a 671B model over 8 cards with room for 3 sequences of 8k tokens is not a serving
# setup. Replicas cover concurrency above it. Set a shorter context_length to fit a smaller card.
MIN_SEQUENCES = 8
# A decode step's fixed cost per layer, however few bytes it reads: the kernels one layer launches
# (norms, projections, attention, activation), each with a floor. Fitted on an H100 to an
# engine-shaped decoder replayed from a CUDA graph (docs/PERFORMANCE.md, "The plan beside an
# engine-shaped decoder"): 41-50 us a layer for Qwen3-8B and Llama-3.1-8B in bf16 at batch 1-128
# (a little less at long contexts, where attention overlaps it). FP8 (W8A8) layers quantize the
# activations before each projection (62-66 us a layer measured for Qwen3-8B); MoE layers add a
# router, top-k, sort and scatter around two grouped GEMMs (115 us a layer for Qwen3-30B-A3B at
# batch 1, the one MoE cell measured so far).
LAYER_STEP_S = 45e-6
FP8_LAYER_EXTRA_S = 17e-6
MOE_LAYER_EXTRA_S = 70e-6
# Without latency SLOs, a low-latency plan takes the cheapest setup whose decode floor is within
# this factor of the fastest single-GPU setup: near the best one card can do, without paying
# 2-8x the price for tensor parallelism's last milliseconds (give SLOs to ask for those).
LATENCY_TIE = 2.0
# Rooflines are floors; engines reach ~70-80% of peak HBM bandwidth in decode and add
# scheduling, sampling and network time. A latency SLO counts as met only when the floor
# stays within 70% of it.
SLO_MARGIN = 0.7
# A Server's proxy routes in one of these; pick the one in the compute region's part of the world.
ROUTING_REGIONS = {"us-west": "us-west", "eu": "eu-west", "uk": "eu-west", "ap": "ap-south",
                   "jp": "ap-south", "au": "ap-south"}
# These primitives' proxies sit in one region, so the GPU is pinned next to it (us-east unless
# the workload names a region): http_server's and the Server's.
PINNED_PRIMITIVES = ("http_server", "app.server")
# Modal's routing regions; the published http_server examples use the first two as proxies.
PROXY_REGIONS_SEEN = ("us-east", "us-west", "eu-west", "ap-south")


def needs_hf_token(model: str, *, gated: bool | None) -> bool:
    """Whether a container needs HF_TOKEN to download `model`: the Hub says it is gated, or its
    organisation gates its models (what is known offline)."""
    return bool(gated) or model.startswith(GATED_ORGS)
