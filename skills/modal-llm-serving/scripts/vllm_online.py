# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_online.py"]
# deploy: true
# ---

# # Serve an open-weight LLM behind an OpenAI-compatible API with vLLM on Modal

# This is the default serving pattern: vLLM's OpenAI-compatible server, started as a subprocess
# inside a Modal Function decorated with `@modal.web_server`, so Modal gives it a public HTTPS URL
# and scales replicas with traffic. vLLM listens on loopback; a minimal forwarder on the public
# port passes only /health and the /v1 routes clients use (see "Keep the API private").
# Choose it unless lowest latency (see `sglang_low_latency.py`), cold-start time
# (`vllm_cold_start.py`) or offline tokens per dollar (`qwen3_throughput.py`) is the explicit goal.

# Every setting below is an UPPER_CASE constant, explained where it stands. `mls new` rewrites
# them by name; `mls check` checks them against the serving rules.

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import modal

MINUTES = 60  # seconds

# ## Choose the model

# We serve Qwen3-8B in 8-bit floating point: it fits one H100 with room for a large KV cache, and
# Hopper GPUs run FP8 matrix multiplications natively. The revision is a commit hash, never a
# branch: a repository can change under a branch name, and a deployment must not.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"

# ## Choose the hardware

# One H100 serves an 8B FP8 model comfortably. Raise `N_GPU` (tensor parallelism, up to 8 per
# container) for models that do not fit, or to cut per-token latency at a higher price per hour.

GPU_TYPE = "H100"
N_GPU = 1

# Where containers run. `None` lets Modal place them anywhere (cheapest, most capacity); pinning a
# region costs 1.5x (broad, e.g. "us") to 1.75x (narrow, e.g. "us-east") the GPU price.

REGION = None

# List price of the GPU in USD per hour (May 2026), used for the cost figures in the README.

GPU_PRICE_PER_HOUR = 3.95

# ## Set up the container image

# vLLM ships CUDA wheels on PyPI, so a slim Debian image with Python is enough. The version is the
# one the test suite checks this file's engine command against (vLLM's own argument parser).

VLLM_VERSION = "0.32.0"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    # Xet's high-performance mode saturates the network when the weights are first downloaded.
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "VLLM_NO_USAGE_STATS": "1"})
)

# ## Cache weights and compilation artifacts in Volumes

# Weights go in one Volume, so only the first container downloads them. vLLM's torch.compile and
# CUDA-graph artifacts go in another (they depend on the vLLM version and GPU, not on the weights,
# and can be wiped on their own when vLLM is upgraded).

HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)
# Point the Hub client and vLLM at the mounts explicitly, rather than trusting defaults.
vllm_image = vllm_image.env({"HF_HOME": HF_CACHE_PATH, "VLLM_CACHE_ROOT": VLLM_CACHE_PATH})

# ## Configure the engine

# Context length (prompt + output tokens). Smaller values leave more KV cache for concurrency.

MAX_MODEL_LEN = 8192

# Sequences decoded together in one batch. It bounds GPU memory for KV cache and the batch size
# CUDA graphs are captured for; keep it a little above the concurrency you expect per replica.

MAX_NUM_SEQS = 64

# Share of GPU memory vLLM may take for weights, activations and KV cache.

GPU_MEMORY_UTILIZATION = 0.90

# vLLM listens here, on the loopback interface only: nothing outside the container reaches it.

ENGINE_PORT = 8001

# The public port: Modal's URL points here, at the forwarder described below.

PORT = 8000

# ## Keep the API private

# vLLM requires this key as a bearer token on every /v1 route, and only there: its other routes
# answer anyone, and `@modal.web_server` makes every path public. On vLLM 0.32 that includes
# `POST /invocations` (a SageMaker-style alias that runs a chat completion without the key) and
# `POST /scale_elastic_ep`. So vLLM listens on loopback, and a minimal forwarder on the public port
# passes only these (method, path) pairs and answers 404 to everything else without contacting
# the engine. Add a route here only if clients need it. Cost: one loopback hop, 2-3 ms of
# time to first token in our measurement (docs/PERFORMANCE.md).

PUBLIC_ROUTES = (
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
)

# The key itself comes from a Modal Secret, never from this file. Create it once (and keep the
# same value in your shell for the smoke test):
#
#     export MLS_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
#     modal secret create mls-api-key MLS_API_KEY=$MLS_API_KEY
#
# `API_KEY_ENV` names the variable inside the Secret.

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"

# Gated models (Llama, Gemma, ...) need a Hugging Face token: name a Secret holding `HF_TOKEN`
# (`modal secret create huggingface HF_TOKEN=hf_...`). Qwen3 is not gated, so none is attached.

HF_SECRET = None

secrets = [modal.Secret.from_name(API_KEY_SECRET)]
if HF_SECRET:
    secrets.append(modal.Secret.from_name(HF_SECRET))

# ## Build the engine command

# The block below is generated from `src/modal_llm_serving/engines.py` (the toolkit's single source
# of engine command lines) so that this file imports with only `modal` installed; a test fails if
# it drifts. `engine_config()` turns this file's settings into the command vLLM runs.

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


def engine_config(*, api_key: str | None = None) -> EngineConfig:
    """This recipe's vLLM settings (loopback only); the key comes from the Secret at start."""
    return EngineConfig(
        model=MODEL_NAME,
        revision=MODEL_REVISION,
        host="127.0.0.1",
        port=ENGINE_PORT,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=MAX_NUM_SEQS,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        tensor_parallel_size=N_GPU,
        api_key=api_key,
    )


# ## The forwarder

# A small aiohttp server (aiohttp ships with vLLM) that passes PUBLIC_ROUTES through and streams
# answers back chunk by chunk, so server-sent events arrive as they are produced. Generated from
# `src/modal_llm_serving/forwarder.py`, like the engine block above.

# BEGIN forwarder (generated copy in recipes that need it; edit here, then `mls dev sync-recipes`)
import asyncio
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

# Headers about one connection, not the message; never passed through.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-authenticate", "host",
                         "content-length"})


def forwarder_app(upstream: str, *, routes: Iterable[tuple[str, str]]) -> "web.Application":  # noqa: UP037, RUF100
    """An aiohttp app passing `routes` ((method, path) pairs) to `upstream`; 404 for the rest."""
    from aiohttp import ClientError, ClientSession, ClientTimeout, web

    allowed = frozenset(routes)
    session_key = web.AppKey("session", ClientSession)

    async def open_session(app: web.Application) -> None:
        # No total timeout: a long generation streams for as long as it takes.
        app[session_key] = ClientSession(upstream, auto_decompress=False,
                                         timeout=ClientTimeout(total=None, sock_connect=10))

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        # Exact match on the decoded, unnormalized path: "/v1/../sleep" or "//sleep" match nothing.
        if (request.method, request.path) not in allowed:
            return web.json_response({"error": {"message": "not found", "code": 404}}, status=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = request.path + (f"?{request.query_string}" if request.query_string else "")
        body = await request.read()
        response: web.StreamResponse | None = None
        try:
            async with request.app[session_key].request(request.method, target, headers=headers,
                                                        data=body) as answer:
                response = web.StreamResponse(status=answer.status, headers={
                    k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientError as exc:
            if response is not None:  # mid-stream: cutting the connection is all that is left
                raise
            return web.json_response(  # the engine is down or restarting
                {"error": {"message": f"engine unavailable: {type(exc).__name__}", "code": 502}},
                status=502)

    app = web.Application(client_max_size=64 * 2**20)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def start_forwarder(*, upstream: str, routes: Iterable[tuple[str, str]], port: int,
                    host: str = "0.0.0.0") -> threading.Thread:
    """Serve the forwarder from a daemon thread with its own event loop; return once it listens."""
    from aiohttp import web

    app = forwarder_app(upstream, routes=routes)
    listening = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
        except Exception as exc:  # reported by the caller, which is waiting for this thread
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            listening.set()
            return
        listening.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="forwarder", daemon=True)
    thread.start()
    if not listening.wait(30) or failure:
        raise RuntimeError(f"the forwarder could not listen on {host}:{port}") from (
            failure[0] if failure else None)
    return thread
# END forwarder


# ## Scale replicas with traffic

# `@modal.concurrent` tells Modal how many requests one replica takes. Above `TARGET_INPUTS` the
# autoscaler adds replicas; `MAX_INPUTS` is a hard cap per replica. Start conservative (below
# MAX_NUM_SEQS) and raise both after benchmarking (`mls bench`).

MAX_INPUTS = 32
TARGET_INPUTS = 16

# How long an idle replica stays up (a warm replica answers at once; an idle GPU still bills).

SCALEDOWN_WINDOW = 15 * MINUTES

# Replicas kept running with no traffic. 0 means no standing bill, but the first request after an
# idle period waits for a cold start (minutes); 1 keeps a replica warm around the clock.

MIN_CONTAINERS = 0

# The most replicas at once: a ceiling on spend under a traffic spike.

MAX_CONTAINERS = 4

# Extra idle replicas kept ready while the app is busy, so bursts do not wait for cold starts.

BUFFER_CONTAINERS = 0

# Loading weights and capturing CUDA graphs takes minutes on a cold container (longer on the very
# first start, which downloads the weights). Generous, but bounded: a wedged start fails.

STARTUP_TIMEOUT = 20 * MINUTES

# ## Serve it

# The app's name in your workspace: deploying under another name runs a second copy.

APP_NAME = "mls-vllm-online"
app = modal.App(APP_NAME)


@app.function(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    region=REGION,
    timeout=STARTUP_TIMEOUT,  # how long may serve() (the engine start) take?
    startup_timeout=STARTUP_TIMEOUT,
    scaledown_window=SCALEDOWN_WINDOW,  # how long should an idle replica stay up?
    min_containers=MIN_CONTAINERS,  # how many replicas should always be up?
    max_containers=MAX_CONTAINERS,  # how many replicas at most?
    buffer_containers=BUFFER_CONTAINERS,  # how many spare replicas while busy?
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)  # requests per replica
@modal.web_server(port=PORT, startup_timeout=STARTUP_TIMEOUT)
def serve() -> None:
    command = vllm_command(engine_config(api_key=os.environ[API_KEY_ENV]))
    # An argv list, no shell; the key travels in the environment, not on the command line.
    process = subprocess.Popen(command.argv, env={**os.environ, **command.env})
    # Modal's readiness check only sees a port open; return (and open the public port) only once
    # vLLM's /health answers, so no request meets a half-started engine.
    engine_url = f"http://127.0.0.1:{ENGINE_PORT}"
    wait_until_healthy(engine_url, process, timeout=STARTUP_TIMEOUT)
    start_forwarder(upstream=engine_url, routes=PUBLIC_ROUTES, port=PORT)


def wait_until_healthy(base_url: str, process: subprocess.Popen, *, timeout: float) -> None:
    """Poll /health until 200; fail fast if the engine exits, and after `timeout` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (code := process.poll()) is not None:
            raise RuntimeError(f"vLLM exited with code {code} before {base_url}/health was up")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f} seconds")


# ## Deploy

# ```bash
# modal deploy skills/modal-llm-serving/scripts/vllm_online.py
# ```
#
# The URL printed ends in `.modal.run`; the API is at `<URL>/v1`. Any OpenAI client works:
#
# ```python
# client = OpenAI(base_url=f"{url}/v1", api_key=os.environ["MLS_API_KEY"])
# ```
#
# `mls smoke <URL>` checks a deployment; `mls bench run <URL>` measures it.

# ## Smoke-test it

# `modal run` starts a temporary copy of the server, then runs the function below on your machine:
# /health, /v1/models, one chat completion and one streamed completion. It needs the API key in
# your shell (`MLS_API_KEY`, the value stored in the Secret).


@app.local_entrypoint()
def smoke(ready_timeout: int = 25 * MINUTES) -> None:
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        raise SystemExit(f"set {API_KEY_ENV} to the key stored in the Modal Secret "
                         f"{API_KEY_SECRET!r}, then run again")
    base_url = serve.get_web_url()
    run_smoke(base_url, api_key=api_key, model=MODEL_NAME, ready_timeout=ready_timeout)


def run_smoke(base_url: str, *, api_key: str, model: str, ready_timeout: float) -> None:
    """/health, /v1/models, one chat completion, one streamed chat completion; raise on failure."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    start = time.monotonic()
    # A cold start can outlast one web request (Modal cuts them at 150 s): retry until ready.
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=150) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() - start > ready_timeout:
                raise TimeoutError(f"{base_url}/health not ready within {ready_timeout:.0f} "
                                   f"seconds (last error: {exc})") from exc
            time.sleep(5)
    print(f"health: ok after {time.monotonic() - start:.1f} s")
    listed = _request(f"{base_url}/v1/models", headers=headers)
    ids = [entry["id"] for entry in listed["data"]]
    assert model in ids, f"{model} not in /v1/models: {ids}"
    print(f"models: {ids}")
    messages = [{"role": "user", "content": "What is the capital of France? One sentence."}]
    body = {"model": model, "messages": messages, "max_tokens": 64}
    reply = _request(f"{base_url}/v1/chat/completions", headers=headers, body=body)
    assert reply["usage"]["completion_tokens"] > 0, reply
    print(f"chat: {reply['choices'][0]['message']['content']!r}")
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode(), method="POST")
    pieces, usage, done = [], None, False
    with urllib.request.urlopen(request, timeout=150) as response:
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line.removeprefix("data: "))
                usage = chunk.get("usage") or usage
                pieces += [choice["delta"].get("content") or "" for choice in chunk["choices"]]
    assert done and usage and usage["completion_tokens"] > 0, "stream ended without usage/[DONE]"
    print(f"stream: {''.join(pieces)!r} ({usage['completion_tokens']} tokens)")
    print("smoke test passed")


def _request(url: str, *, headers: dict[str, str], body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, headers=headers, data=data,
                                     method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=150) as response:
        return json.loads(response.read())
