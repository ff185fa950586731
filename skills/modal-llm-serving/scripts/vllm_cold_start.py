# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_cold_start.py"]
# deploy: true
# ---

# # Fast cold starts for vLLM on Modal with memory snapshots and sleep mode

# Choose this when time from zero replicas to first token is a first-class requirement (bursty
# traffic). Beyond `vllm_online.py`: Modal snapshots CPU and GPU memory once vLLM is loaded, warmed
# up and asleep (level 1: weights to CPU memory, KV cache dropped); cold starts restore it and wake
# vLLM instead of starting it (snapshots come from `modal deploy`, and pay off after a few starts).
# Sleep and wake are vLLM *development* endpoints anyone reaching the server could call, so vLLM
# listens on loopback behind a forwarder that exposes only what clients need.

import asyncio
import hmac
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import modal

MINUTES = 60  # seconds

# ## Choose the model and the hardware

# A commit hash, not a branch: what was snapshotted must be what is deployed. One GPU: GPU memory
# snapshots do not support several per container. `REGION = None` places containers anywhere.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"
SERVED_MODEL_NAME = MODEL_NAME
GPU_TYPE = "H100"
N_GPU = 1
REGION = None

# The CPU memory snapshot is stable; the GPU snapshot (alpha) also keeps compiled kernels and CUDA
# graphs. Turn it off if restores fail (they exit 222; Modal retries without the snapshot). Both
# False is the plain-start comparison: the file still deploys, and every start loads vLLM.

ENABLE_MEMORY_SNAPSHOT = True
ENABLE_GPU_SNAPSHOT = True

# ## Set up the container image and the Volumes

# The tests parse the engine command below with this vLLM version's own parser. Weights and
# vLLM's compile cache live in two Volumes, as in `vllm_online.py`.

VLLM_VERSION = "0.32.0"
HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    .env({
        "HF_XET_HIGH_PERFORMANCE": "1",  # saturate the network on the first download
        "VLLM_NO_USAGE_STATS": "1",
        "TORCHINDUCTOR_COMPILE_THREADS": "1",  # compile workers do not survive a snapshot
        "HF_HOME": HF_CACHE_PATH,
        "VLLM_CACHE_ROOT": VLLM_CACHE_PATH,
    })
)
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)

# ## Configure the engine

# A snapshot holds everything in memory: keep the engine small and predictable, with a fixed KV
# cache size instead of "whatever memory is left" (larger, slower snapshots that vary by GPU).

MAX_MODEL_LEN = 4096
MAX_NUM_SEQS = 16
KV_CACHE_GIB = 4
GPU_MEMORY_UTILIZATION = 0.90  # for everything else; KV_CACHE_GIB takes precedence
KV_CACHE_DTYPE = "auto"
ENGINE_PORT = 8001  # vLLM listens here, on loopback only
PORT = 8000  # Modal's URL points here, at the forwarder


def engine_command(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION,
                   served_model_name: str = SERVED_MODEL_NAME, host: str = "127.0.0.1",
                   port: int = ENGINE_PORT) -> list[str]:
    """The `vllm serve` command line. The keywords let it run elsewhere (`mls local serve`)."""
    command = [
        "vllm", "serve", model,
        "--served-model-name", served_model_name,
        "--host", host, "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION),
        "--kv-cache-memory-bytes", f"{KV_CACHE_GIB}G",
        "--kv-cache-dtype", KV_CACHE_DTYPE,
        "--tensor-parallel-size", str(N_GPU),
        "--enable-sleep-mode",  # /sleep and /wake_up; they also need VLLM_SERVER_DEV_MODE=1
    ]
    if revision:  # a local checkpoint folder has none
        command += ["--revision", revision]
    return command


# ## Expose only what clients need

# The forwarder passes exactly PUBLIC_ROUTES and 404s the rest without contacting the engine, so
# the dev endpoints and /docs stay private, for one loopback hop (1–3 ms, measured). vLLM's
# /metrics has no key either; it passes only with the app's key, compared in constant time.

PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/v1/models"),
                 ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")}
KEYED_ROUTES = {("GET", "/metrics")}  # the engine's own view (`mls bench`): key holders only
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "te"}


def start_forwarder(engine_url: str, *, api_key: str, host: str = "0.0.0.0",
                    port: int = PORT) -> int:
    """Serve PUBLIC_ROUTES, KEYED_ROUTES to `api_key`, on `port` from a thread; return the port."""
    from aiohttp import ClientError, ClientSession, ClientTimeout, web  # ships with vLLM

    session, bearer = None, f"Bearer {api_key}".encode()

    def passable(headers) -> dict:  # headers about one connection are not passed on
        return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}

    async def forward(request: web.Request) -> web.StreamResponse:
        nonlocal session
        route = (request.method, request.path)  # exact, decoded: "//sleep" matches nothing
        if route not in PUBLIC_ROUTES | KEYED_ROUTES:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        given = request.headers.get("Authorization", "").encode(errors="surrogateescape")
        if route in KEYED_ROUTES and not hmac.compare_digest(given, bearer):
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        # No total timeout: a long generation streams for as long as it takes.
        session = session or ClientSession(engine_url, auto_decompress=False,
                                           timeout=ClientTimeout(total=None, sock_connect=10))
        try:
            answer = await session.request(request.method, request.path_qs,
                                           headers=passable(request.headers),
                                           data=await request.read())
        except ClientError as exc:  # the engine is down or waking up
            return web.json_response({"error": f"engine down: {type(exc).__name__}"}, status=502)
        async with answer:
            response = web.StreamResponse(status=answer.status, headers=passable(answer.headers))
            await response.prepare(request)
            async for chunk in answer.content.iter_any():  # events pass as they are produced
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{path:.*}", forward)
    listener = socket.create_server((host, port))  # bound here, so a taken port fails here
    threading.Thread(target=web.run_app, args=(app,), daemon=True, kwargs={
        "sock": listener, "handle_signals": False, "print": None, "access_log": None,
        "loop": asyncio.new_event_loop()}).start()
    return listener.getsockname()[1]  # the OS's pick when `port` is 0


# The /v1 key comes from a Modal Secret (see `vllm_online.py`); after rotating it, redeploy.

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None  # a Secret holding HF_TOKEN, for gated models
secrets = [modal.Secret.from_name(name) for name in (API_KEY_SECRET, HF_SECRET) if name]

# ## Scale replicas with traffic

# Scaling to zero is the point: an idle GPU stops billing after two minutes, and the next request
# pays a restore, not a full start. The first start (no snapshot yet) is bounded generously.

MAX_INPUTS = 16
TARGET_INPUTS = 8
SCALEDOWN_WINDOW = 2 * MINUTES
MIN_CONTAINERS = 0
MAX_CONTAINERS = 4
BUFFER_CONTAINERS = 0
STARTUP_TIMEOUT = 20 * MINUTES

# ## Serve it: start, warm up and sleep before the snapshot; wake after the restore

APP_NAME = "mls-vllm-cold-start"
app = modal.App(APP_NAME)


@app.cls(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    region=REGION,
    timeout=STARTUP_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,  # how long may @enter take?
    scaledown_window=SCALEDOWN_WINDOW,  # how long should an idle replica stay up?
    min_containers=MIN_CONTAINERS, max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
    enable_memory_snapshot=ENABLE_MEMORY_SNAPSHOT,
    experimental_options={"enable_gpu_snapshot": ENABLE_GPU_SNAPSHOT},
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)  # requests per replica
class VLLMColdStart:
    # Before the snapshot, if there is one (the SDK refuses snap=True without); else at each start.
    @modal.enter(snap=ENABLE_MEMORY_SNAPSHOT)
    def start_and_sleep(self) -> None:
        self.api_key = os.environ[API_KEY_ENV]
        env = {**os.environ, "VLLM_API_KEY": self.api_key, "VLLM_SERVER_DEV_MODE": "1"}
        self.engine = subprocess.Popen(engine_command(), env=env)
        self.engine_url = url = f"http://127.0.0.1:{ENGINE_PORT}"
        wait_until_healthy(url, timeout=STARTUP_TIMEOUT, process=self.engine)
        for _ in range(3):  # lazy initialization happens now, not on a user's first request
            first_token_seconds(url, api_key=self.api_key)
        if ENABLE_MEMORY_SNAPSHOT:  # without a snapshot, sleeping would only cost time
            post(f"{self.engine_url}/sleep?level=1")

    @modal.enter(snap=False)
    def wake(self) -> None:
        if ENABLE_MEMORY_SNAPSHOT:
            post(f"{self.engine_url}/wake_up")
            with urllib.request.urlopen(f"{self.engine_url}/is_sleeping", timeout=10) as answer:
                if json.load(answer).get("is_sleeping"):
                    raise RuntimeError("vLLM still reports sleeping after /wake_up")

    @modal.web_server(port=PORT, startup_timeout=5 * MINUTES)
    def serve(self) -> None:
        start_forwarder(self.engine_url, api_key=self.api_key)

    @modal.exit()
    def stop(self) -> None:
        self.engine.terminate()


def wait_until_healthy(base_url: str, *, timeout: float, process=None, per_try=5.0) -> None:
    """Poll /health until 200; fail fast if `process` exits, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process and (code := process.poll()) is not None:
            raise RuntimeError(f"vLLM exited with code {code} before {base_url}/health was up")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=per_try):
                return
        except OSError:  # refused, reset, or an error status while starting
            time.sleep(1)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f} seconds")


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    urllib.request.urlopen(request, timeout=120).close()


def get_json(url: str, *, api_key: str, body: dict | None = None) -> dict:
    """GET `url`, or POST `body` to it, with the API key; the JSON answer."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=150) as answer:
        return json.load(answer)


def first_token_seconds(base_url: str, *, api_key: str, model: str = SERVED_MODEL_NAME) -> float:
    """Seconds from sending one streamed chat request to its first content-bearing event."""
    # min_tokens (a vLLM sampling field): a reply that ends at once (EOS first) has no text
    body = {"model": model, "max_tokens": 16, "min_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Count to five."}]}
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode())
    sent = time.perf_counter()
    with urllib.request.urlopen(request, timeout=STARTUP_TIMEOUT) as response:
        for line in response:
            if line.startswith(b"data: {") and any(
                    c["delta"].get("content") for c in json.loads(line[6:])["choices"]):
                return time.perf_counter() - sent
    raise RuntimeError(f"{base_url} streamed no content")


# ## Deploy, smoke-test, measure cold starts

# `modal deploy skills/modal-llm-serving/scripts/vllm_cold_start.py`; the first container takes
# the snapshot. `modal run` on this file checks a temporary copy (`MLS_API_KEY` in your shell);
# `--mode cold-start` times the *deployed* app's first token from zero replicas, `--rounds` times.
# To compare, deploy a copy with both snapshot settings False and another APP_NAME, and pass
# that name as `--app-name`.


@app.local_entrypoint()
def main(mode: str = "smoke", rounds: int = 3, app_name: str = APP_NAME) -> None:
    if not (api_key := os.environ.get(API_KEY_ENV)):
        raise SystemExit(f"set {API_KEY_ENV} to the key in the Modal Secret {API_KEY_SECRET!r}")
    if mode == "smoke":
        url = VLLMColdStart().serve.get_web_url()
        return run_smoke(url, api_key=api_key, ready_timeout=25 * MINUTES)
    if mode != "cold-start":
        raise SystemExit(f"--mode must be 'smoke' or 'cold-start', not {mode!r}")
    deployed, seconds = modal.Cls.from_name(app_name, "VLLMColdStart"), []
    service = deployed._get_class_service_function()
    for round_ in range(1, rounds + 1):
        deadline = time.monotonic() + SCALEDOWN_WINDOW + 10 * MINUTES
        while (up := service.get_current_stats().num_total_runners) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{up} replica(s) still up; is MIN_CONTAINERS > 0?")
            time.sleep(15)
        seconds.append(first_token_seconds(deployed().serve.get_web_url(), api_key=api_key))
        print(f"round {round_}/{rounds}: {seconds[-1]:.2f} s from request to first token")
    low, median, high = min(seconds), sorted(seconds)[len(seconds) // 2], max(seconds)
    print(f"{app_name}: min {low:.2f}, median {median:.2f}, max {high:.2f} s over {rounds} rounds")


def run_smoke(base_url: str, *, api_key: str, ready_timeout: float,
              model: str = SERVED_MODEL_NAME) -> None:
    """/health, /v1/models, one chat and one streamed chat through the forwarder, and a dev
    endpoint hidden (404)."""
    wait_until_healthy(base_url, timeout=ready_timeout, per_try=150)  # Modal's request limit
    listed = [m["id"] for m in get_json(f"{base_url}/v1/models", api_key=api_key)["data"]]
    if model not in listed:
        raise RuntimeError(f"/v1/models lists {listed}, not {model!r}")
    reply = get_json(f"{base_url}/v1/chat/completions", api_key=api_key, body={
        "model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi."}]})
    print(f"chat: {reply['usage']['completion_tokens']} tokens")
    seconds = first_token_seconds(base_url, api_key=api_key, model=model)
    print(f"stream: {model} gave its first token after {seconds:.2f} s")
    try:
        post(f"{base_url}/sleep?level=1")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            print("dev endpoints: hidden (404)\nsmoke test passed")
            return
    raise RuntimeError(f"{base_url}/sleep did not answer 404: the dev endpoints are exposed")
