# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/sglang_low_latency.py"]
# deploy: true
# ---

# # Low-latency LLM serving with SGLang on Modal

# Choose this pattern when the lowest time to first token and per-token latency is the explicit
# goal and the extra setup is worth it. Compared with `vllm_online.py` it changes three things:
#
# 1. `modal.experimental.http_server`: Modal's low-latency proxy in a region you choose, with the
#    containers there too. Requests with the same `Modal-Session-ID` header go (best effort) to
#    the same replica, whose prefix cache already holds that conversation.
# 2. SGLang, tuned for latency, with DeepGEMM FP8 kernels compiled once at image build.
# 3. Tensor parallelism and optional speculative decoding (EAGLE-3), the two biggest levers on
#    per-token latency (each ≈30% on an H100 in Modal's published runs).
#
# A scaled-to-zero http_server answers 503 while the first replica starts: clients retry 503.

import json
import os
import subprocess
import time
import urllib.request
import uuid
from secrets import token_hex

import modal
import modal.experimental

MINUTES = 60  # seconds

# ## Choose the model

# An 8B model in FP8: fewer bytes to read per decoded token is lower latency. The revision is a
# commit hash so every replica serves the same weights.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"
SERVED_MODEL_NAME = MODEL_NAME

# ## Choose the hardware and the region

# Two H100s with tensor parallelism split every matrix multiplication (≈30% faster decode, not 2x:
# communication costs). `H100!` means exactly H100 (no automatic upgrade): predictable latency.
# Containers and proxy share a region near your users; pinning costs 1.75x (narrow region).
# Proxy regions known to work in Modal's examples: us-east, us-west.

GPU_TYPE = "H100!"
N_GPU = 2

REGION = "us-east"
PROXY_REGIONS = ["us-east"]

# ## Set up the container image

# The SGLang team's CUDA image at the version whose own parser the tests check the command with.

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

# Weights in one Volume; SGLang's compiled kernels in another. SGLang 0.5.23 keeps DeepGEMM's JIT
# kernels in `$SGLANG_CACHE_DIR/deep_gemm` (older releases used `~/.cache/deepgemm`): the variable
# is set explicitly, since a cache mounted where SGLang does not look recompiles on every start.

HF_CACHE_PATH = "/root/.cache/huggingface"
SGLANG_CACHE_PATH = "/root/.cache/sglang"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
sglang_cache_volume = modal.Volume.from_name("mls-sglang-cache", create_if_missing=True)
sglang_image = sglang_image.env({"HF_HOME": HF_CACHE_PATH, "SGLANG_CACHE_DIR": SGLANG_CACHE_PATH})

# ## Configure the engine

# Context length; the most requests decoded together (small batches: each extra sequence slows
# the others a little); the share of GPU memory for weights and KV cache.

MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 32
GPU_MEMORY_UTILIZATION = 0.85
KV_CACHE_DTYPE = "auto"  # "fp8_e4m3" halves the KV cache on Hopper

# Speculative decoding: a draft model proposes tokens, the target checks them in one pass. To turn
# it on, set "EAGLE3" and a draft trained for this target, with its own pinned revision.

SPECULATIVE_ALGORITHM = None
SPECULATIVE_DRAFT_MODEL = None
SPECULATIVE_DRAFT_REVISION = None
SPECULATIVE_NUM_STEPS = 3
SPECULATIVE_EAGLE_TOPK = 1
SPECULATIVE_NUM_DRAFT_TOKENS = 4

PORT = 8000


def engine_command(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION,
                   served_model_name: str = SERVED_MODEL_NAME, host: str = "0.0.0.0",
                   port: int = PORT, api_key: str | None = None,
                   admin_api_key: str | None = None) -> list[str]:
    """SGLang's launch command. SGLang reads its keys from the command line only."""
    command = [
        "python", "-m", "sglang.launch_server",
        "--model-path", model,
        "--served-model-name", served_model_name,
        "--host", host, "--port", str(port),
        "--context-length", str(MAX_MODEL_LEN), "--max-running-requests", str(MAX_NUM_SEQS),
        "--mem-fraction-static", str(GPU_MEMORY_UTILIZATION), "--kv-cache-dtype", KV_CACHE_DTYPE,
        "--tp-size", str(N_GPU),
        "--cuda-graph-max-bs-decode", str(MAX_NUM_SEQS),  # CUDA graphs for the batches we see
        "--enable-metrics",
    ]
    if revision:  # a local checkpoint folder has none
        command += ["--revision", revision]
    if SPECULATIVE_ALGORITHM:
        command += [
            "--speculative-algorithm", SPECULATIVE_ALGORITHM,
            "--speculative-draft-model-path", SPECULATIVE_DRAFT_MODEL,
            "--speculative-draft-model-revision", SPECULATIVE_DRAFT_REVISION,
            "--speculative-num-steps", str(SPECULATIVE_NUM_STEPS),
            "--speculative-eagle-topk", str(SPECULATIVE_EAGLE_TOPK),
            "--speculative-num-draft-tokens", str(SPECULATIVE_NUM_DRAFT_TOKENS),
        ]
    if api_key:
        command += ["--api-key", api_key]
    if admin_api_key:
        command += ["--admin-api-key", admin_api_key]
    return command


# ## Keep the API private

# SGLang requires the API key (`--api-key`, from a Modal Secret made as in `vllm_online.py`).
# http_server exposes every route, and SGLang's management endpoints (weight updates, memory
# release, cache flush, profiling) accept the API key unless an admin key is set. So each
# container sets `--admin-api-key` to a random value never stored or shared: those endpoints
# answer 401 to everyone. /health and /metrics stay open (SGLang's choice, for probes).

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None  # a Secret holding HF_TOKEN, for gated models
secrets = [modal.Secret.from_name(name) for name in (API_KEY_SECRET, HF_SECRET) if name]

# ## Compile DeepGEMM kernels at image build

# DeepGEMM compiles a kernel per matrix shape on first use, which would land on the first requests
# of every replica. Compiling them once at image build, on the serving GPU, into their own Volume
# moves that cost out of serving.


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

# http_server takes `target_inputs` only (no hard `max_inputs`); above it Modal adds replicas.
# Keep it below MAX_NUM_SEQS so batches stay small. A latency service usually keeps one replica
# warm (MIN_CONTAINERS = 1): 0 here, so the example has no standing bill. The engine starts inside
# @modal.enter, bounded by the class's startup timeout (the default 300 s is too short).

TARGET_INPUTS = 8
MIN_CONTAINERS = 0
MAX_CONTAINERS = 4
BUFFER_CONTAINERS = 0
SCALEDOWN_WINDOW = 10 * MINUTES
STARTUP_TIMEOUT = 20 * MINUTES
RETRY_INTERVAL = 2  # seconds between health checks while a replica starts (503, or none)
EXIT_GRACE_PERIOD = 20  # seconds a stopping replica serves in-flight requests (at most 25)

# ## Serve it

APP_NAME = "mls-sglang-low-latency"
app = modal.App(APP_NAME)


@app.cls(
    image=sglang_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, SGLANG_CACHE_PATH: sglang_cache_volume},
    secrets=secrets,
    region=REGION,  # must match PROXY_REGIONS, or every request crosses regions
    timeout=STARTUP_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,  # how long may @enter take?
    scaledown_window=SCALEDOWN_WINDOW,
    min_containers=MIN_CONTAINERS, max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
)
@modal.experimental.http_server(port=PORT, proxy_regions=PROXY_REGIONS,
                                startup_timeout=5 * MINUTES, exit_grace_period=EXIT_GRACE_PERIOD)
@modal.concurrent(target_inputs=TARGET_INPUTS)  # requests per replica before scaling out
class SGLangServer:
    @modal.enter()
    def start(self) -> None:
        api_key = os.environ[API_KEY_ENV]
        locked = token_hex(32)  # an admin key nobody knows (hex: never starts with "-", a flag)
        self.engine = subprocess.Popen(engine_command(api_key=api_key, admin_api_key=locked))
        base_url = f"http://127.0.0.1:{PORT}"
        wait_until_ready(base_url, timeout=STARTUP_TIMEOUT, process=self.engine)
        for _ in range(3):  # lazy initialization happens now, not on a user's first request
            stream_chat(base_url, headers=request_headers(api_key))

    @modal.exit()
    def stop(self) -> None:
        self.engine.terminate()


def wait_until_ready(base_url: str, *, timeout: float, process=None, headers=None) -> None:
    """Poll /health until 200, retrying 503 (SGLang while starting, a scaled-to-zero proxy) and
    connection errors; any other status fails at once, as does `process` exiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process and (code := process.poll()) is not None:
            raise RuntimeError(f"SGLang exited with code {code} before {base_url}/health was up")
        try:
            request = urllib.request.Request(f"{base_url}/health", headers=headers or {})
            with urllib.request.urlopen(request, timeout=60):
                return
        except urllib.request.HTTPError as exc:
            if exc.code != 503:  # only "starting" or "scaling up" is worth waiting for
                raise
        except OSError:  # refused or timed out: still starting
            pass
        time.sleep(RETRY_INTERVAL)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f} seconds")


def request_headers(api_key: str, session_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if session_id:
        headers["Modal-Session-ID"] = session_id  # sticky routing to one replica (best effort)
    return headers


def stream_chat(base_url: str, *, headers: dict, model: str = SERVED_MODEL_NAME) -> tuple:
    """One streamed chat completion: (text, usage, seconds to the first token)."""
    body = {"model": model, "max_tokens": 64, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode())
    sent, first, text, usage = time.perf_counter(), None, "", None
    with urllib.request.urlopen(request, timeout=150) as response:
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
                if text and first is None:
                    first = time.perf_counter() - sent
    return text, usage, first


# ## Deploy and smoke-test it

# `modal deploy skills/modal-llm-serving/scripts/sglang_low_latency.py` builds the image (the
# DeepGEMM compile takes minutes). Clients send one `Modal-Session-ID` per conversation and retry
# 503. `modal run` on this file starts a temporary copy and runs the smoke test below.


@app.local_entrypoint()
def smoke(ready_timeout: int = 25 * MINUTES) -> None:
    if not (api_key := os.environ.get(API_KEY_ENV)):
        raise SystemExit(f"set {API_KEY_ENV} to the key in the Modal Secret {API_KEY_SECRET!r}")
    urls = SGLangServer._experimental_get_flash_urls()  # one per proxy region
    print(f"URL(s): {urls}")
    run_smoke(urls[0], api_key=api_key, ready_timeout=ready_timeout)


def run_smoke(base_url: str, *, api_key: str, ready_timeout: float,
              model: str = SERVED_MODEL_NAME) -> None:
    """/health (503 retried), /v1/models, one chat, then one streamed chat must give text and
    usage; one session id."""
    headers = request_headers(api_key, session_id=f"smoke-{uuid.uuid4()}")
    wait_until_ready(base_url, timeout=ready_timeout, headers=headers)
    models = urllib.request.Request(f"{base_url}/v1/models", headers=headers)
    with urllib.request.urlopen(models, timeout=150) as answer:
        if model not in (listed := [m["id"] for m in json.load(answer)["data"]]):
            raise RuntimeError(f"/v1/models lists {listed}, not {model!r}")
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi."}]}
    chat = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(),
                                  headers)
    with urllib.request.urlopen(chat, timeout=150) as answer:
        print(f"chat: {json.load(answer)['usage']['completion_tokens']} tokens")
    text, usage, first = stream_chat(base_url, headers=headers, model=model)
    if not (text and usage and usage["completion_tokens"] > 0):
        raise RuntimeError(f"the stream gave no text or no usage: {text!r}, {usage}")
    print(f"{model} answered {text!r}, first token after {first * 1000:.0f} ms: smoke test passed")
