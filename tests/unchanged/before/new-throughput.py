# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/qwen3_throughput.py"]
# ---

# # Offline batch inference at maximum tokens per dollar with vLLM on Modal

# Choose this pattern when the job is "generate for these N prompts as cheaply and quickly as
# possible", not "answer each request fast": no HTTP server, no per-request latency, just vLLM's
# Python `LLM` engine packing as many sequences into each GPU step as memory allows, in batch
# workers that Modal fans out over several containers.
#
# The numbers it prints are counted the way `vllm bench throughput` counts them: token ids taken
# from the outputs (not from the requested lengths), a warm-up batch excluded, engine start-up
# timed separately. Input, output and total tokens per second, and the cost per million tokens
# from the GPU's hourly price.

import dataclasses
import os
import random
import time

import modal

MINUTES = 60  # seconds

# ## Choose the model

# Qwen3-8B in FP8, at a pinned commit. Published figure for this model on one H100 with vLLM:
# ≈30k input + 2k output tokens/s, about 4 cents per million tokens.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"

# ## Choose the hardware

# One GPU per worker: for a model that fits, N independent replicas beat one N-way
# tensor-parallel engine on tokens per dollar (no inter-GPU communication).

GPU_TYPE = "B200"
N_GPU = 1

# List price in USD per GPU-hour (May 2026); the cost per million tokens is computed from it.

GPU_PRICE_PER_HOUR = 6.25

# `None`: run wherever GPUs are free (a batch job has no latency reason to pin a region, and a
# pinned region costs 1.5x-1.75x).

REGION = None

# ## Set up the container image

# The version is the one the test suite checks this file's engine settings against.

VLLM_VERSION = "0.32.0"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "VLLM_NO_USAGE_STATS": "1"})
)

# ## Cache weights and compilation artifacts in Volumes

HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)
# Point the Hub client and vLLM at the mounts explicitly, rather than trusting defaults.
vllm_image = vllm_image.env({"HF_HOME": HF_CACHE_PATH, "VLLM_CACHE_ROOT": VLLM_CACHE_PATH})

# Gated models need a Secret holding HF_TOKEN; Qwen3 is not gated.

HF_SECRET = None
secrets = [modal.Secret.from_name(HF_SECRET)] if HF_SECRET else []

# ## Configure the engine

# Throughput wants big batches: many sequences decoded together and many tokens per scheduler
# step (long prefills are chunked into steps of this size). Context length covers the workload's
# prompt + output, no more, so the KV cache holds more sequences.

MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 512
MAX_NUM_BATCHED_TOKENS = 16384
GPU_MEMORY_UTILIZATION = 0.9
KV_CACHE_DTYPE = "auto"  # "fp8" halves the KV cache: more sequences per step

# ## The workload

# Synthetic prompts of fixed length (random token ids, as `vllm bench throughput --dataset-name
# random` makes them) and a fixed output length (`ignore_eos`), so runs are comparable. Replace
# `make_prompts` with your own data for real jobs.

INPUT_LEN = 1024
OUTPUT_LEN = 128
BATCH_SIZE = 2048  # prompts per call to a worker
N_BATCHES = 8  # calls in all
N_CONTAINERS = 1  # workers at most, each one GPU
WARMUP_PROMPTS = 16  # run once per worker after start-up, excluded from the numbers

# One batch of BATCH_SIZE prompts takes well under a minute on an H100; the first start also
# downloads the weights. Bound both generously.

STARTUP_TIMEOUT = 20 * MINUTES
TIMEOUT = 30 * MINUTES

# The engine's settings, as `vllm.LLM(...)` keyword arguments (the same names as `vllm serve`'s
# flags, with underscores). The keywords let it run elsewhere (the test suite runs it on a CPU).


def llm_kwargs(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION) -> dict:
    return {
        "model": model,
        "revision": revision,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": MAX_NUM_SEQS,
        "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "kv_cache_dtype": KV_CACHE_DTYPE,
        "tensor_parallel_size": N_GPU,
    }


# ## Generate and count

# Plain functions of an `LLM` and a list of prompts, so the Modal worker below and the test
# suite (which runs them on a local CPU build of vLLM with a tiny model) share them.


@dataclasses.dataclass
class BatchStats:
    """Token counts and time of one timed `generate`, counted as `vllm bench throughput` does."""

    requests: int
    input_tokens: int
    output_tokens: int
    seconds: float

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def make_prompts(n: int, *, input_len: int, vocab_size: int, seed: int) -> list[dict]:
    """`n` prompts of exactly `input_len` random token ids (vLLM `TokensPrompt` dicts)."""
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(vocab_size) for _ in range(input_len)]}
            for _ in range(n)]


def sampling_params(output_len: int):  # -> vllm.SamplingParams
    from vllm import SamplingParams

    # ignore_eos: every request decodes exactly output_len tokens, as in vllm bench throughput
    return SamplingParams(temperature=1.0, top_p=1.0, max_tokens=output_len, ignore_eos=True)


def run_batch(llm, prompts: list[dict], *, output_len: int) -> tuple[BatchStats, list]:
    """Generate for `prompts` and count tokens from what came back; returns (stats, outputs)."""
    params = sampling_params(output_len)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    stats = BatchStats(
        requests=len(outputs),
        input_tokens=sum(len(output.prompt_token_ids) for output in outputs),
        output_tokens=sum(len(sample.token_ids) for output in outputs for sample in output.outputs),
        seconds=seconds,
    )
    return stats, outputs


def summarize(batches: list[dict], *, price_per_hour: float, n_gpu: int) -> dict:
    """Aggregate per-batch results (dicts of BatchStats fields) into rates and cost.

    Rates are per GPU-second of generation summed over workers, so they do not depend on how
    many batches overlapped; the cost per million tokens follows from the GPU's price.
    """
    busy = sum(batch["seconds"] for batch in batches)
    input_tokens = sum(batch["input_tokens"] for batch in batches)
    output_tokens = sum(batch["output_tokens"] for batch in batches)
    total = input_tokens + output_tokens
    dollars = busy / 3600 * price_per_hour * n_gpu
    return {
        "requests": sum(batch["requests"] for batch in batches),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "generate_seconds": busy,
        "input_tokens_per_s": input_tokens / busy,
        "output_tokens_per_s": output_tokens / busy,
        "total_tokens_per_s": total / busy,
        "usd_per_million_output_tokens": dollars / output_tokens * 1e6,
        "usd_per_million_total_tokens": dollars / total * 1e6,
    }


# ## The batch worker

# The app's name in your workspace: deploying under another name runs a second copy.

APP_NAME = "mls-throughput-app"
app = modal.App(APP_NAME)


@app.cls(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    region=REGION,
    timeout=TIMEOUT,  # how long may one batch take?
    startup_timeout=STARTUP_TIMEOUT,  # how long may loading the engine take?
    max_containers=N_CONTAINERS,  # how many GPUs work in parallel?
    scaledown_window=2 * MINUTES,  # a finished job should stop billing soon
)
class Worker:
    @modal.enter()
    def load(self) -> None:
        from vllm import LLM

        start = time.perf_counter()
        self.llm = LLM(**llm_kwargs())
        self.init_seconds = time.perf_counter() - start  # reported, never mixed into the rates
        vocab_size = self.llm.get_tokenizer().vocab_size
        warmup = make_prompts(WARMUP_PROMPTS, input_len=INPUT_LEN, vocab_size=vocab_size, seed=-1)
        warm, _ = run_batch(self.llm, warmup, output_len=OUTPUT_LEN)  # excluded from the rates
        self.warmup_seconds = warm.seconds

    @modal.method()
    def generate(self, seed: int) -> dict:
        vocab_size = self.llm.get_tokenizer().vocab_size
        prompts = make_prompts(BATCH_SIZE, input_len=INPUT_LEN, vocab_size=vocab_size, seed=seed)
        stats, _ = run_batch(self.llm, prompts, output_len=OUTPUT_LEN)
        # which container ran it, so start-up is counted once per container in the cost
        worker = os.environ.get("MODAL_TASK_ID") or f"pid-{os.getpid()}"
        return {**dataclasses.asdict(stats), "init_seconds": self.init_seconds,
                "warmup_seconds": self.warmup_seconds, "worker": worker}


# ## Run it

# ```bash
# modal run skills/modal-llm-serving/scripts/qwen3_throughput.py
# ```
#
# Fans N_BATCHES batches out over up to N_CONTAINERS GPUs with `.map`, then prints the counts,
# the rates and the cost. (Deploying is not needed for a batch job; `modal deploy` plus
# `modal.Cls.from_name("mls-qwen3-throughput", "Worker")` lets other code submit batches.)


@app.local_entrypoint()
def main(n_batches: int = N_BATCHES) -> None:
    wall = time.perf_counter()
    batches = []
    for batch in Worker().generate.map(range(n_batches)):
        batches.append(batch)
        print(f"batch {len(batches)}/{n_batches}: {batch['output_tokens']} output tokens in "
              f"{batch['seconds']:.1f} s (engine start {batch['init_seconds']:.0f} s)")
    print("\n".join(report_lines(batches, wall_seconds=time.perf_counter() - wall)))


def report_lines(batches: list[dict], *, wall_seconds: float) -> list[str]:
    """The job's summary: counts, rates per GPU and overall, and the cost per million tokens."""
    report = summarize(batches, price_per_hour=GPU_PRICE_PER_HOUR, n_gpu=N_GPU)
    # start-up (engine init + warm-up) is billed too, once per container
    workers = {b["worker"]: b["init_seconds"] + b["warmup_seconds"] for b in batches}
    startup = sum(workers.values())
    share = report["generate_seconds"] / (report["generate_seconds"] + startup)
    return [
        f"{report['requests']} requests, {report['input_tokens']} input + "
        f"{report['output_tokens']} output tokens, {wall_seconds:.0f} s wall clock",
        f"per GPU: {report['input_tokens_per_s']:,.0f} input, "
        f"{report['output_tokens_per_s']:,.0f} output, "
        f"{report['total_tokens_per_s']:,.0f} total tokens/s",
        f"all {len(workers)} workers together: {report['output_tokens'] / wall_seconds:,.0f} "
        "output tokens/s over the wall clock (start-up and image pull included)",
        f"cost at ${GPU_PRICE_PER_HOUR}/GPU-hour: "
        f"${report['usd_per_million_output_tokens']:.3f} per million output tokens, "
        f"${report['usd_per_million_total_tokens']:.4f} per million tokens (input + output)",
        # a job of a few batches pays start-up in full; a long one amortizes it
        f"with start-up ({startup:.0f} s over {len(workers)} workers): "
        f"${report['usd_per_million_output_tokens'] / share:.3f} per million output tokens",
    ]
