# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_cold_start.py"]
# deploy: true
# ---

# # Fast cold starts for vLLM on Modal with memory snapshots and sleep mode

# Choose this pattern when the time from "no replica running" to "first token" is a first-class
# requirement: traffic that comes in bursts with long idle gaps, where keeping a GPU warm around
# the clock costs more than it is worth. It adds moving parts on top of `vllm_online.py`:
#
# 1. Modal takes a CPU + GPU memory snapshot of the container once the engine is loaded, compiled
#    and warmed up; later cold starts restore that snapshot instead of starting vLLM again.
# 2. Before the snapshot, vLLM is put to sleep (level 1: weights moved to CPU memory, KV cache
#    dropped), so the snapshot holds a quiet engine; after restore it is woken up.
# 3. Sleep and wake are vLLM *development* endpoints (/sleep, /wake_up, /collective_rpc, ...) that
#    anyone who can reach the server could call (vLLM's API key guards only /v1). So the engine
#    listens on loopback only, and a minimal forwarder exposes just /health and the /v1 routes
#    clients need (see below), as in `vllm_online.py`.
#
# Snapshots are created by `modal deploy` only (never `modal run`), and the speed-up shows after a
# few cold starts. They do not make weight loading itself faster, and multi-GPU snapshots are
# generally unsupported: keep N_GPU = 1 here.

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import modal

MINUTES = 60  # seconds

# ## Choose the model

# The revision is a commit hash: what was snapshotted must be what is deployed.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"

# ## Choose the hardware

# One GPU: GPU memory snapshots do not support several GPUs per container.

GPU_TYPE = "H100"
N_GPU = 1

# `None` lets Modal place containers anywhere; pinning costs 1.5x-1.75x the GPU price.

REGION = None

# List price of the GPU in USD per hour (May 2026), for the cost figures in the README.

GPU_PRICE_PER_HOUR = 3.95

# ## Snapshots

# The CPU memory snapshot (Python, CUDA context, the sleeping engine's host memory) is Modal's
# stable feature. The GPU snapshot (alpha) also keeps GPU state such as compiled kernels and CUDA
# graphs, which is where most of the remaining start time goes. Set it False if restores fail
# (a failed restore exits with code 222 and Modal retries the container without the snapshot).

ENABLE_MEMORY_SNAPSHOT = True
ENABLE_GPU_SNAPSHOT = True

# ## Set up the container image

# The version is the one the test suite checks this file's engine command against.

VLLM_VERSION = "0.32.0"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    .env({
        "HF_XET_HIGH_PERFORMANCE": "1",  # saturate the network on the first download
        "VLLM_NO_USAGE_STATS": "1",
        # torch.compile's worker pool does not survive a snapshot; compile in-process instead.
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
    })
)

# ## Cache weights and compilation artifacts in Volumes

HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)
# Point the Hub client and vLLM at the mounts explicitly, rather than trusting defaults.
vllm_image = vllm_image.env({"HF_HOME": HF_CACHE_PATH, "VLLM_CACHE_ROOT": VLLM_CACHE_PATH})

# ## Configure the engine

# A snapshot holds everything in memory, so keep the engine small and predictable: a modest
# context length, few sequences, and a fixed KV cache size instead of "whatever memory is left"
# (which varies with the GPU model and makes snapshots larger and slower to restore).

MAX_MODEL_LEN = 4096
MAX_NUM_SEQS = 16
KV_CACHE_GIB = 4

# Share of GPU memory for everything else; the KV cache size above takes precedence.

GPU_MEMORY_UTILIZATION = 0.90

# vLLM listens here, on the loopback interface only: nothing outside the container reaches it.

ENGINE_PORT = 8001

# The public port: the forwarder listens here and Modal's URL points at it.

PORT = 8000

# ## Expose only what clients need

# The forwarder answers exactly these method + path pairs and 404s everything else, so vLLM's dev
# endpoints (/sleep, /wake_up, /is_sleeping, /collective_rpc, /reset_prefix_cache, ...) and its
# /docs, /metrics and /tokenize stay private. Add a route here only if clients need it.
#
# Cost: one extra hop over loopback inside the container. Measured with a real vLLM on a busy
# 2-core CPU box (benchmarks/forwarder_overhead.py, docs/PERFORMANCE.md) it adds 2-3 ms to the
# median time to first token, against cold starts that snapshots cut by seconds to minutes.
# The alternative, Modal's proxy auth (`requires_proxy_auth=True`), only checks who calls; it would
# still let any authorized caller put the engine to sleep.

PUBLIC_ROUTES = (
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
)

# ## Keep the API private

# vLLM also requires a bearer key on /v1, from a Modal Secret (see `vllm_online.py` for how to
# create it). The key is read while the snapshot is taken: after rotating it, redeploy.

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


def engine_config(*, api_key: str | None = None) -> EngineConfig:
    """This recipe's vLLM settings: sleep mode on, loopback only, a fixed KV cache."""
    return EngineConfig(
        model=MODEL_NAME,
        revision=MODEL_REVISION,
        host="127.0.0.1",
        port=ENGINE_PORT,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=MAX_NUM_SEQS,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        tensor_parallel_size=N_GPU,
        enable_sleep_mode=True,
        api_key=api_key,
        extra_args=("--kv-cache-memory-bytes", f"{KV_CACHE_GIB}G"),
    )


# ## The forwarder

# A small aiohttp server (aiohttp ships with vLLM) that passes the PUBLIC_ROUTES through to the
# engine and streams answers back chunk by chunk, so server-sent events arrive as they are
# produced; everything else gets 404 without reaching the engine. The block is generated from
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

# See `vllm_online.py` for what each knob means. Scaling to zero is the point of this pattern, so
# the scaledown window is short: an idle GPU stops billing after two minutes, and the next
# request pays a snapshot restore instead of a full start.

MAX_INPUTS = 16
TARGET_INPUTS = 8
SCALEDOWN_WINDOW = 2 * MINUTES
MIN_CONTAINERS = 0
MAX_CONTAINERS = 4
BUFFER_CONTAINERS = 0

# The first start (no snapshot yet, maybe no cached weights) loads, compiles and warms up the
# engine; later starts restore in seconds. Bound the slow path generously.

STARTUP_TIMEOUT = 20 * MINUTES

# ## Serve it

APP_NAME = "mls-vllm-cold-start"
app = modal.App(APP_NAME)


@app.cls(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    region=REGION,
    timeout=STARTUP_TIMEOUT,  # how long may the @enter methods (the engine start) take?
    startup_timeout=STARTUP_TIMEOUT,
    scaledown_window=SCALEDOWN_WINDOW,  # how long should an idle replica stay up?
    min_containers=MIN_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
    enable_memory_snapshot=ENABLE_MEMORY_SNAPSHOT,
    experimental_options={"enable_gpu_snapshot": ENABLE_GPU_SNAPSHOT},
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)  # requests per replica
class VLLMColdStart:
    @modal.enter(snap=True)
    def start_and_sleep(self) -> None:
        """Before the snapshot: start vLLM, wait until healthy, warm it up, put it to sleep."""
        self.api_key = os.environ[API_KEY_ENV]
        command = vllm_command(engine_config(api_key=self.api_key))
        self.engine = subprocess.Popen(command.argv, env={**os.environ, **command.env})
        self.engine_url = f"http://127.0.0.1:{ENGINE_PORT}"
        wait_until_healthy(self.engine_url, self.engine, timeout=STARTUP_TIMEOUT)
        self._warm_up()
        if ENABLE_MEMORY_SNAPSHOT:  # without a snapshot, sleeping would only cost time
            _post(f"{self.engine_url}/sleep?level=1")  # weights to CPU memory, KV cache dropped

    @modal.enter(snap=False)
    def wake(self) -> None:
        """After a restore (or straight after the first start): wake the engine, check it."""
        if not ENABLE_MEMORY_SNAPSHOT:
            return
        _post(f"{self.engine_url}/wake_up")
        wait_until_healthy(self.engine_url, self.engine, timeout=5 * MINUTES)
        with urllib.request.urlopen(f"{self.engine_url}/is_sleeping", timeout=10) as response:
            if json.loads(response.read()).get("is_sleeping"):
                raise RuntimeError("vLLM still reports sleeping after /wake_up")

    @modal.web_server(port=PORT, startup_timeout=5 * MINUTES)
    def serve(self) -> None:
        start_forwarder(upstream=self.engine_url, routes=PUBLIC_ROUTES, port=PORT)

    @modal.exit()
    def stop(self) -> None:
        self.engine.terminate()

    def _warm_up(self) -> None:
        # A few real requests, so lazy initialization (kernels, tokenizer, sampler) happens
        # before the snapshot rather than on a user's first request.
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        body = {"model": MODEL_NAME, "max_tokens": 16,
                "messages": [{"role": "user", "content": "Say hello."}]}
        for _ in range(3):
            _request(f"{self.engine_url}/v1/chat/completions", headers=headers, body=body)


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


def _post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=120):
        pass


def _request(url: str, *, headers: dict[str, str], body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, headers=headers, data=data,
                                     method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=150) as response:
        return json.loads(response.read())


# ## Deploy

# ```bash
# modal deploy skills/modal-llm-serving/scripts/vllm_cold_start.py
# ```
#
# The first container takes the snapshot; send a few requests spaced more than SCALEDOWN_WINDOW
# apart (or run the measurement below) before judging cold starts.

# ## Smoke-test it and measure cold starts

# `modal run vllm_cold_start.py` (mode "smoke") starts a temporary copy and checks /health,
# /v1/models, one chat completion and one streamed completion through the forwarder, and that a
# dev endpoint answers 404. It needs `MLS_API_KEY` in your shell.
#
# Mode "cold-start" measures a *deployed* app: it waits until the app has scaled to zero, sends
# one streamed request and records the time to the first token (the cold start as a user sees
# it), `--rounds` times. To compare with and without snapshots, deploy a second copy with
# `ENABLE_MEMORY_SNAPSHOT = False`, `ENABLE_GPU_SNAPSHOT = False` and another `APP_NAME`, and pass
# `--app-name` of each:
#
#     modal run vllm_cold_start.py --mode cold-start --rounds 5
#     modal run vllm_cold_start.py --mode cold-start --rounds 5 \
#         --app-name mls-vllm-cold-start-nosnap
#
# (`mls bench cold-start URL --repeat 5 --wait 180` measures the same from the toolkit.)


@app.local_entrypoint()
def main(mode: str = "smoke", rounds: int = 3, app_name: str = APP_NAME) -> None:
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        raise SystemExit(f"set {API_KEY_ENV} to the key stored in the Modal Secret "
                         f"{API_KEY_SECRET!r}, then run again")
    if mode == "smoke":
        base_url = VLLMColdStart().serve.get_web_url()
        run_smoke(base_url, api_key=api_key, model=MODEL_NAME, ready_timeout=STARTUP_TIMEOUT)
    elif mode == "cold-start":
        deployed = modal.Cls.from_name(app_name, "VLLMColdStart")
        base_url = deployed().serve.get_web_url()
        service = deployed._get_class_service_function()
        seconds = []
        for round_ in range(1, rounds + 1):
            _wait_for_zero_replicas(service, timeout=SCALEDOWN_WINDOW + 10 * MINUTES)
            seconds.append(time_to_first_token(base_url, api_key=api_key, model=MODEL_NAME))
            print(f"round {round_}/{rounds}: {seconds[-1]:.2f} s from request to first token")
        seconds.sort()
        print(f"cold start, request to first token over {rounds} rounds ({app_name}): "
              f"min {seconds[0]:.2f} s, median {seconds[len(seconds) // 2]:.2f} s, "
              f"max {seconds[-1]:.2f} s")
    else:
        raise SystemExit(f"--mode must be 'smoke' or 'cold-start', not {mode!r}")


def _wait_for_zero_replicas(service, *, timeout: float) -> None:
    start = time.monotonic()
    while (runners := service.get_current_stats().num_total_runners) > 0:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{runners} replica(s) still up after {timeout:.0f} s; is "
                               "something else sending traffic, or MIN_CONTAINERS > 0?")
        print(f"waiting for scale to zero ({runners} replica(s) up)")
        time.sleep(15)


def time_to_first_token(base_url: str, *, api_key: str, model: str) -> float:
    """Seconds from sending one streamed chat request to its first content-bearing event."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = {"model": model, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "Count to five."}]}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode(), method="POST")
    sent = time.perf_counter()
    with urllib.request.urlopen(request, timeout=STARTUP_TIMEOUT) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                if any(choice["delta"].get("content") for choice in chunk["choices"]):
                    return time.perf_counter() - sent
    raise RuntimeError(f"{base_url} streamed no content")


def run_smoke(base_url: str, *, api_key: str, model: str, ready_timeout: float) -> None:
    """/health, /v1/models, a chat and a streamed chat through the forwarder; dev paths hidden."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    start = time.monotonic()
    while True:  # a cold start can outlast one web request (Modal cuts them at 150 s)
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
    ids = [entry["id"] for entry in _request(f"{base_url}/v1/models", headers=headers)["data"]]
    assert model in ids, f"{model} not in /v1/models: {ids}"
    body = {"model": model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    reply = _request(f"{base_url}/v1/chat/completions", headers=headers, body=body)
    assert reply["usage"]["completion_tokens"] > 0, reply
    print(f"chat: {reply['choices'][0]['message']['content']!r}")
    first_token = time_to_first_token(base_url, api_key=api_key, model=model)
    print(f"stream: first token after {first_token:.2f} s")
    try:
        _post(f"{base_url}/sleep?level=1")
        raise AssertionError(f"{base_url}/sleep is reachable: the dev endpoints are exposed")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, f"/sleep answered {exc.code}, expected 404"
    print("dev endpoints: hidden (404)\nsmoke test passed")
