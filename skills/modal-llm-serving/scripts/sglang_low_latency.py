# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/sglang_low_latency.py"]
# deploy: true
# ---

# # Low-latency LLM serving with SGLang on Modal

# Choose this pattern when the lowest time to first token and per-token latency is the explicit
# goal and the extra setup is worth it. Compared with `vllm_online.py` it changes three things:
#
# 1. `modal.experimental.http_server` routes requests through Modal's low-latency proxy in a
#    region you choose, and the containers run in that same region, so client → proxy →
#    GPU stays within a few milliseconds. It also supports sticky sessions: requests carrying
#    the same `Modal-Session-ID` header go (best effort) to the same replica, whose prefix cache
#    already holds that conversation.
# 2. SGLang, whose scheduler and kernels are tuned for latency, with DeepGEMM FP8 kernels
#    compiled once at image build time and cached in their own Volume.
# 3. Optional speculative decoding (EAGLE-3) and tensor parallelism over several GPUs, the two
#    biggest levers on per-token latency (each ≈30% on an H100 in Modal's published runs).
#
# A scaled-to-zero http_server answers 503 while the first replica starts (the request still
# triggers the scale-up): clients must retry 503, as the smoke test below does.

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from secrets import token_urlsafe

import modal
import modal.experimental

MINUTES = 60  # seconds

# ## Choose the model

# An 8B model in FP8: fewer bytes to read per decoded token is lower latency. The revision is a
# commit hash so every replica serves the same weights.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"

# ## Choose the hardware and the region

# Two H100s with tensor parallelism split every matrix multiplication, roughly halving the bytes
# each GPU reads per token (≈30% faster decode measured, not 2x: communication costs). `H100!`
# asks for exactly H100 (no automatic upgrade), so latency stays predictable.

GPU_TYPE = "H100!"
N_GPU = 2

# Containers and the proxy must be in the same region, near your users; pinning a region costs
# 1.75x the GPU price (narrow region) but latency is the goal here. Proxy regions known to work
# in Modal's examples: us-east, us-west.

REGION = "us-east"
PROXY_REGIONS = ["us-east"]

# List price of the GPU in USD per hour (May 2026), before the region multiplier.

GPU_PRICE_PER_HOUR = 3.95

# ## Set up the container image

# The SGLang team's CUDA image, at the tag of the SGLang version the test suite checks this file's
# command against (SGLang's own argument parser). Never a `latest` tag.

SGLANG_VERSION = "0.5.23"

sglang_image = (
    modal.Image.from_registry(f"lmsysorg/sglang:v{SGLANG_VERSION}-cu129-amd64-runtime")
    .entrypoint([])  # the image's entrypoint prints banners on every start
    .env({
        "HF_XET_HIGH_PERFORMANCE": "1",  # saturate the network on the first download
        "SGLANG_ENABLE_JIT_DEEPGEMM": "1",  # FP8 GEMMs on Hopper use DeepGEMM's JIT kernels
    })
)

# ## Cache weights and compiled kernels in Volumes

# Weights in one Volume; SGLang's compiled-kernel cache in another. SGLang 0.5.23 keeps DeepGEMM's
# JIT kernels in `$SGLANG_CACHE_DIR/deep_gemm` (default `~/.cache/sglang`; older releases and
# examples used `~/.cache/deepgemm`), so the Volume is mounted there and the variable set
# explicitly: a cache mounted where SGLang does not look would silently recompile on every start.

HF_CACHE_PATH = "/root/.cache/huggingface"
SGLANG_CACHE_PATH = "/root/.cache/sglang"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
sglang_cache_volume = modal.Volume.from_name("mls-sglang-cache", create_if_missing=True)
sglang_image = sglang_image.env({"HF_HOME": HF_CACHE_PATH, "SGLANG_CACHE_DIR": SGLANG_CACHE_PATH})

# ## Configure the engine

# Context length, and the most requests decoded together (it also bounds CUDA-graph capture).
# Low latency means small batches: each extra sequence in a batch slows every other one a little.

MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 32

# Share of GPU memory for weights and KV cache (SGLang's --mem-fraction-static).

GPU_MEMORY_UTILIZATION = 0.85

# Speculative decoding: a small draft model proposes several tokens, the target model checks them
# in one pass. `None` turns it off. To turn it on set "EAGLE3" and a draft model trained for this
# target (with its own pinned revision); the step settings are SGLang's usual starting point.

SPECULATIVE_ALGORITHM = None
SPECULATIVE_DRAFT_MODEL = None
SPECULATIVE_DRAFT_REVISION = None
SPECULATIVE_NUM_STEPS = 3
SPECULATIVE_EAGLE_TOPK = 1
SPECULATIVE_NUM_DRAFT_TOKENS = 4

PORT = 8000

# ## Keep the API private

# SGLang requires this key as a bearer token (`--api-key`), from a Modal Secret (see
# `vllm_online.py` for how to create it). SGLang has no environment variable for it, so it is on
# the engine's command line inside the container.
#
# http_server exposes every route of the port, and SGLang's management endpoints (weight updates,
# /release_memory_occupation, /flush_cache, profiling, ...) accept the API key unless an admin key
# is set. So each container also sets `--admin-api-key` to a random value made at start and never
# stored or shared: those endpoints answer 401 to everyone, including API-key holders. /health and
# /metrics stay open without a key (SGLang's choice, for probes and scraping).

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None  # a Secret holding HF_TOKEN, for gated models

secrets = [modal.Secret.from_name(API_KEY_SECRET)]
if HF_SECRET:
    secrets.append(modal.Secret.from_name(HF_SECRET))

# ## Build the engine command

# The block below is generated from `src/modal_llm_serving/engines.py` (the toolkit's single source
# of engine command lines) so that this file imports with only `modal` installed; a test fails if
# it drifts.

# BEGIN engine-command (generated copy in each recipe; edit here, then `mls dev sync-recipes`)
import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What to serve and how; `None` leaves the engine's own default in place."""

    model: str  # a Hub id (pin `revision`) or a local checkpoint folder
    revision: str | None = None  # a commit hash for Hub ids
    served_model_name: str | None = None  # the id clients send; default: `model`
    host: str = "0.0.0.0"
    port: int = 8000
    max_model_len: int | None = None  # context length: prompt + output tokens
    max_num_seqs: int | None = None  # sequences decoded together (SGLang: max running requests)
    max_num_batched_tokens: int | None = None  # tokens per scheduler step (vLLM only)
    gpu_memory_utilization: float | None = None  # share of GPU memory (SGLang: static fraction)
    tensor_parallel_size: int = 1
    dtype: str | None = None  # "auto", "bfloat16", "float16", ...
    kv_cache_dtype: str | None = None  # e.g. "fp8" on Hopper
    enforce_eager: bool = False  # skip CUDA graphs / torch.compile (fast start, slower decode)
    enable_prefix_caching: bool | None = None
    enable_sleep_mode: bool = False  # vLLM only: /sleep and /wake_up (needs VLLM_SERVER_DEV_MODE=1)
    api_key: str | None = None  # required on /v1; vLLM gets it via env, never on the command line
    speculative_algorithm: str | None = None  # SGLang only: "EAGLE3", "NEXTN", ...
    speculative_draft_model: str | None = None
    speculative_num_steps: int | None = None
    speculative_eagle_topk: int | None = None
    speculative_num_draft_tokens: int | None = None
    extra_args: tuple[str, ...] = ()  # appended verbatim, last, so they win


@dataclasses.dataclass(frozen=True)
class EngineCommand:
    """An engine's argv plus the environment variables it needs."""

    argv: list[str]
    env: dict[str, str]


def _flag(argv: list[str], name: str, value: object) -> None:
    if value is not None:
        argv += [name, str(value)]


def vllm_command(config: EngineConfig) -> EngineCommand:
    """The `vllm serve` command for `config`; the API key travels in `VLLM_API_KEY`."""
    if config.speculative_algorithm or config.speculative_draft_model:
        raise ValueError("speculative_* settings are built for SGLang only; pass vLLM's "
                         "--speculative-config through extra_args")
    argv = ["vllm", "serve", config.model]
    _flag(argv, "--revision", config.revision)
    _flag(argv, "--served-model-name", config.served_model_name)
    _flag(argv, "--host", config.host)
    _flag(argv, "--port", config.port)
    _flag(argv, "--max-model-len", config.max_model_len)
    _flag(argv, "--max-num-seqs", config.max_num_seqs)
    _flag(argv, "--max-num-batched-tokens", config.max_num_batched_tokens)
    _flag(argv, "--gpu-memory-utilization", config.gpu_memory_utilization)
    if config.tensor_parallel_size != 1:
        _flag(argv, "--tensor-parallel-size", config.tensor_parallel_size)
    _flag(argv, "--dtype", config.dtype)
    _flag(argv, "--kv-cache-dtype", config.kv_cache_dtype)
    if config.enforce_eager:
        argv.append("--enforce-eager")
    if config.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if config.enable_prefix_caching
                    else "--no-enable-prefix-caching")
    env: dict[str, str] = {}
    if config.enable_sleep_mode:
        argv.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"  # sleep/wake endpoints exist only in dev mode
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key  # argv is visible to every process; env is not
    argv += config.extra_args
    return EngineCommand(argv=argv, env=env)


def sglang_command(config: EngineConfig) -> EngineCommand:
    """The `python -m sglang.launch_server` command for `config`."""
    if config.enable_sleep_mode or config.max_num_batched_tokens or config.kv_cache_dtype:
        raise ValueError("enable_sleep_mode, max_num_batched_tokens and kv_cache_dtype are "
                         "vLLM settings; pass SGLang's own flags through extra_args")
    argv = ["python", "-m", "sglang.launch_server", "--model-path", config.model]
    _flag(argv, "--revision", config.revision)
    _flag(argv, "--served-model-name", config.served_model_name)
    _flag(argv, "--host", config.host)
    _flag(argv, "--port", config.port)
    _flag(argv, "--context-length", config.max_model_len)
    _flag(argv, "--max-running-requests", config.max_num_seqs)
    _flag(argv, "--mem-fraction-static", config.gpu_memory_utilization)
    if config.tensor_parallel_size != 1:
        _flag(argv, "--tp-size", config.tensor_parallel_size)
    _flag(argv, "--dtype", config.dtype)
    if config.enforce_eager:
        argv.append("--disable-cuda-graph")
    if config.enable_prefix_caching is False:
        argv.append("--disable-radix-cache")
    _flag(argv, "--speculative-algorithm", config.speculative_algorithm)
    _flag(argv, "--speculative-draft-model-path", config.speculative_draft_model)
    _flag(argv, "--speculative-num-steps", config.speculative_num_steps)
    _flag(argv, "--speculative-eagle-topk", config.speculative_eagle_topk)
    _flag(argv, "--speculative-num-draft-tokens", config.speculative_num_draft_tokens)
    _flag(argv, "--api-key", config.api_key)  # SGLang reads no env var for it
    argv += config.extra_args
    return EngineCommand(argv=argv, env={})
# END engine-command


def engine_config(*, api_key: str | None = None,
                  admin_api_key: str | None = None) -> EngineConfig:
    """This recipe's SGLang settings."""
    extra: tuple[str, ...] = (
        # capture CUDA graphs only up to the batch sizes this replica will see
        "--cuda-graph-max-bs-decode", str(MAX_NUM_SEQS),
        "--enable-metrics",
    )
    if admin_api_key:
        extra += ("--admin-api-key", admin_api_key)
    if SPECULATIVE_DRAFT_REVISION:
        extra += ("--speculative-draft-model-revision", SPECULATIVE_DRAFT_REVISION)
    speculative = SPECULATIVE_ALGORITHM is not None
    return EngineConfig(
        model=MODEL_NAME,
        revision=MODEL_REVISION,
        port=PORT,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=MAX_NUM_SEQS,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        tensor_parallel_size=N_GPU,
        api_key=api_key,
        speculative_algorithm=SPECULATIVE_ALGORITHM,
        speculative_draft_model=SPECULATIVE_DRAFT_MODEL,
        speculative_num_steps=SPECULATIVE_NUM_STEPS if speculative else None,
        speculative_eagle_topk=SPECULATIVE_EAGLE_TOPK if speculative else None,
        speculative_num_draft_tokens=SPECULATIVE_NUM_DRAFT_TOKENS if speculative else None,
        extra_args=extra,
    )


# ## Compile DeepGEMM kernels at image build

# DeepGEMM JIT-compiles a kernel per matrix shape on first use, which would land on the first
# requests of every new replica. Compiling them once, on a GPU of the same kind, while the image is
# built, and keeping them in their own Volume, moves that cost out of serving.


def deep_gemm_compile_argv() -> list[str]:
    """SGLang's precompile tool, for the model and tensor-parallel size this recipe serves."""
    return ["python", "-m", "sglang.compile_deep_gemm", "--model-path", MODEL_NAME,
            "--revision", MODEL_REVISION, "--tp-size", str(N_GPU)]


def compile_deep_gemm() -> None:
    subprocess.run(deep_gemm_compile_argv(), check=True)
    sglang_cache_volume.commit()
    hf_cache_volume.commit()  # the weights it downloaded, so serving does not fetch them again


sglang_image = sglang_image.run_function(
    compile_deep_gemm,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, SGLANG_CACHE_PATH: sglang_cache_volume},
    secrets=[modal.Secret.from_name(HF_SECRET)] if HF_SECRET else [],  # gated weights only
    timeout=60 * MINUTES,
)

# ## Scale replicas with traffic

# http_server replicas take `target_inputs` only (a hard `max_inputs` is not supported there):
# above it the autoscaler adds replicas. Keep it below MAX_NUM_SEQS so batches stay small.

TARGET_INPUTS = 8

# A latency service usually keeps one replica warm (a cold start is tens of seconds or more);
# 0 here so the example has no standing bill. Set MIN_CONTAINERS = 1 in production.

MIN_CONTAINERS = 0
MAX_CONTAINERS = 4
BUFFER_CONTAINERS = 0
SCALEDOWN_WINDOW = 10 * MINUTES

# Loading weights and capturing CUDA graphs happen inside @modal.enter, which is bounded by the
# class's startup timeout (the default 300 s is too short for a cold first start).

STARTUP_TIMEOUT = 20 * MINUTES

# Seconds a replica being shut down keeps serving in-flight requests (at most 25).

EXIT_GRACE_PERIOD = 20

# ## Serve it

# The app's name in your workspace: deploying under another name runs a second copy.

APP_NAME = "mls-sglang-low-latency"
app = modal.App(APP_NAME)


@app.cls(
    image=sglang_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, SGLANG_CACHE_PATH: sglang_cache_volume},
    secrets=secrets,
    region=REGION,  # must match PROXY_REGIONS, or every request crosses regions
    timeout=STARTUP_TIMEOUT,
    startup_timeout=STARTUP_TIMEOUT,  # how long may @enter (the engine start) take?
    scaledown_window=SCALEDOWN_WINDOW,
    min_containers=MIN_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
)
@modal.experimental.http_server(port=PORT, proxy_regions=PROXY_REGIONS,
                                startup_timeout=5 * MINUTES, exit_grace_period=EXIT_GRACE_PERIOD)
@modal.concurrent(target_inputs=TARGET_INPUTS)  # requests per replica before scaling out
class SGLangServer:
    @modal.enter()
    def start(self) -> None:
        self.api_key = os.environ[API_KEY_ENV]
        # a key nobody knows: SGLang's management endpoints stay locked (see above)
        locked = token_urlsafe(32)
        command = sglang_command(engine_config(api_key=self.api_key, admin_api_key=locked))
        self.engine = subprocess.Popen(command.argv, env={**os.environ, **command.env})
        base_url = f"http://127.0.0.1:{PORT}"
        wait_until_healthy(base_url, self.engine, api_key=self.api_key, timeout=STARTUP_TIMEOUT)
        # a few real requests so the first user request finds everything initialized
        headers = _headers(self.api_key)
        body = {"model": MODEL_NAME, "max_tokens": 16,
                "messages": [{"role": "user", "content": "Say hello."}]}
        for _ in range(3):
            _request(f"{base_url}/v1/chat/completions", headers=headers, body=body)

    @modal.exit()
    def stop(self) -> None:
        self.engine.terminate()


def wait_until_healthy(base_url: str, process: subprocess.Popen, *, api_key: str,
                       timeout: float) -> None:
    """Poll /health (SGLang answers 503 until a one-token generation works); fail fast on exit."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (code := process.poll()) is not None:
            raise RuntimeError(f"SGLang exited with code {code} before {base_url}/health was up")
        request = urllib.request.Request(f"{base_url}/health", headers=_headers(api_key))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f} seconds")


def _headers(api_key: str, session_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if session_id:
        headers["Modal-Session-ID"] = session_id  # sticky routing to one replica (best effort)
    return headers


def _request(url: str, *, headers: dict[str, str], body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, headers=headers, data=data,
                                     method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=150) as response:
        return json.loads(response.read())


# ## Deploy

# ```bash
# modal deploy skills/modal-llm-serving/scripts/sglang_low_latency.py
# ```
#
# The first deploy builds the image, including the DeepGEMM compile on two GPUs (minutes). The
# URL (one per proxy region) is printed by the smoke test below and shown in Modal's dashboard.
# Clients should send one `Modal-Session-ID` per conversation, and retry 503.

# ## Smoke-test it

# `modal run sglang_low_latency.py` starts a temporary copy, then checks /health, /v1/models, one
# chat completion and one streamed completion, with a session id and 503 retries. It needs
# `MLS_API_KEY` in your shell.


@app.local_entrypoint()
def smoke(ready_timeout: int = 25 * MINUTES) -> None:
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        raise SystemExit(f"set {API_KEY_ENV} to the key stored in the Modal Secret "
                         f"{API_KEY_SECRET!r}, then run again")
    urls = SGLangServer._experimental_get_flash_urls()
    print(f"URL(s): {urls}")
    run_smoke(urls[0], api_key=api_key, model=MODEL_NAME, ready_timeout=ready_timeout)


def run_smoke(base_url: str, *, api_key: str, model: str, ready_timeout: float) -> None:
    """/health, /v1/models, a chat and a streamed chat, one session id, 503 retried."""
    headers = _headers(api_key, session_id=f"smoke-{uuid.uuid4()}")
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base_url}/health",
                                                               headers=headers),
                                        timeout=60) as response:
                if response.status == 200:
                    break
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # only "scaling up" is worth waiting for
                raise
        except (urllib.error.URLError, TimeoutError) as exc:
            if time.monotonic() - start > ready_timeout:
                raise TimeoutError(f"{base_url} not ready within {ready_timeout:.0f} seconds "
                                   f"(last error: {exc})") from exc
        if time.monotonic() - start > ready_timeout:
            raise TimeoutError(f"{base_url} still answered 503 after {ready_timeout:.0f} seconds")
        time.sleep(5)
    print(f"health: ok after {time.monotonic() - start:.1f} s")
    ids = [entry["id"] for entry in _request(f"{base_url}/v1/models", headers=headers)["data"]]
    assert model in ids, f"{model} not in /v1/models: {ids}"
    messages = [{"role": "user", "content": "What is the capital of France? One sentence."}]
    body = {"model": model, "messages": messages, "max_tokens": 64}
    reply = _request(f"{base_url}/v1/chat/completions", headers=headers, body=body)
    assert reply["usage"]["completion_tokens"] > 0, reply
    print(f"chat: {reply['choices'][0]['message']['content']!r}")
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode(), method="POST")
    sent, first, pieces, done = time.perf_counter(), None, [], False
    with urllib.request.urlopen(request, timeout=150) as response:
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line.removeprefix("data: "))
                text = "".join(c["delta"].get("content") or "" for c in chunk["choices"])
                if text and first is None:
                    first = time.perf_counter() - sent
                pieces.append(text)
    assert done and first is not None, "the stream ended without content or [DONE]"
    print(f"stream: {''.join(pieces)!r} (first token after {first * 1000:.0f} ms)")
    print("smoke test passed")
