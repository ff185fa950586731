# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_server.py"]
# deploy: true
# ---

# # Low latency and fast cold starts for vLLM on a Modal Server

# The Server form of the low-latency and cold-start patterns: vLLM behind `@app.server`, Modal's
# primitive for low-latency HTTP to a process on a port. Compared with `vllm_cold_start.py`:
#
# 1. Requests go through Modal's proxy in ROUTING_REGION to containers in COMPUTE_REGION, the
#    two in the same part of the world, and the proxy requires Modal proxy auth by default:
#    clients send a proxy token as `Modal-Key` and `Modal-Secret`, and vLLM's own key as
#    `Authorization: Bearer`. Each lock reads its own header.
# 2. The same CPU + GPU memory snapshot of a warmed-up, sleeping engine, woken after a restore,
#    and the same forwarder: vLLM's dev endpoints (sleep/wake) stay inside the container, since
#    any holder of a workspace proxy token could otherwise put the engine to sleep.
# 3. Sticky routing: requests with the same `Modal-Session-ID` header go to the same container
#    while the set of containers holds (best effort), so a conversation reuses its KV cache.
# 4. Autoscaling from `target_concurrency`; above `max_concurrency` a container answers 429.
#
# Choose it when clients can carry proxy-auth headers (your own backend, not a public browser
# app). Snapshots are made by `modal deploy` only, and pay off after a few cold starts.

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
import uuid

import modal

MINUTES = 60  # seconds

# ## Choose the model, the hardware and the regions

# A commit hash, never a branch. One GPU: GPU memory snapshots do not support several. The proxy
# routes in us-east, us-west, eu-west or ap-south; run the GPUs in the same region, near users.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"
SERVED_MODEL_NAME = MODEL_NAME
GPU_TYPE = "H100"
N_GPU = 1
ROUTING_REGION = "us-east"
REGION = "us-east"  # compute_region: pinning costs 1.75x the GPU price (narrow region)

# The CPU memory snapshot is stable; the GPU snapshot (alpha) also keeps compiled kernels and CUDA
# graphs. Turn it off if restores fail (they exit 222; Modal retries without the snapshot). Both
# False is the plain-start comparison: the file still deploys, and every start loads vLLM.

ENABLE_MEMORY_SNAPSHOT = True
ENABLE_GPU_SNAPSHOT = True

# ## Set up the container image and the Volumes

# The tests parse the engine command below with this vLLM version's own parser.

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

# Low latency wants small batches; a lean snapshot wants a fixed KV cache size rather than
# "whatever memory is left".

MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 32
KV_CACHE_GIB = 8
GPU_MEMORY_UTILIZATION = 0.90  # for everything else; KV_CACHE_GIB takes precedence
KV_CACHE_DTYPE = "auto"
ENGINE_PORT = 8001  # vLLM listens here, on loopback only
PORT = 8000  # the Server's port: the forwarder


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


# ## Keep the API private

# Two locks: Modal's proxy auth (on by default) and vLLM's own key on /v1, from a Modal Secret
# (made as in `vllm_online.py`; read while the snapshot is taken: after rotating it, redeploy).
# Clients also need a proxy token (`modal workspace proxy-tokens create`), kept in their
# environment as `MODAL_PROXY_TOKEN_ID` and `MODAL_PROXY_TOKEN_SECRET`.

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None  # a Secret holding HF_TOKEN, for gated models
secrets = [modal.Secret.from_name(name) for name in (API_KEY_SECRET, HF_SECRET) if name]

# ## Scale with traffic

# Above TARGET_CONCURRENCY requests per container Modal adds containers; above MAX_CONCURRENCY a
# container answers 429. Keep both below MAX_NUM_SEQS. The first start (no snapshot yet) loads,
# compiles and warms up: bound it generously.

TARGET_CONCURRENCY = 8
MAX_CONCURRENCY = 16
MIN_CONTAINERS = 0  # 1 keeps a GPU warm (and billed) around the clock
MAX_CONTAINERS = 4
BUFFER_CONTAINERS = 0
SCALEDOWN_WINDOW = 5 * MINUTES
STARTUP_TIMEOUT = 20 * MINUTES
RETRY_INTERVAL = 2  # seconds between tries while a container starts (503, or no answer)
EXIT_GRACE_PERIOD = 30  # seconds a stopping container finishes in-flight requests

# ## Serve it: start, warm up and sleep before the snapshot; wake after the restore

APP_NAME = "mls-vllm-server"
app = modal.App(APP_NAME)


@app.server(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    port=PORT,
    routing_region=ROUTING_REGION,  # where the proxy takes requests
    compute_region=REGION,  # where the GPUs run: the same part of the world
    target_concurrency=TARGET_CONCURRENCY,
    max_concurrency=MAX_CONCURRENCY,
    min_containers=MIN_CONTAINERS, max_containers=MAX_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW,
    startup_timeout=STARTUP_TIMEOUT,  # how long may the @enter methods take?
    exit_grace_period=EXIT_GRACE_PERIOD,
    enable_memory_snapshot=ENABLE_MEMORY_SNAPSHOT,
    experimental_options={"enable_gpu_snapshot": ENABLE_GPU_SNAPSHOT},
)
class VLLMServer:
    # Before the snapshot, if there is one (the SDK refuses snap=True without); else at each start.
    @modal.enter(snap=ENABLE_MEMORY_SNAPSHOT)
    def start_and_sleep(self) -> None:
        self.api_key = os.environ[API_KEY_ENV]
        env = {**os.environ, "VLLM_API_KEY": self.api_key, "VLLM_SERVER_DEV_MODE": "1"}
        self.engine = subprocess.Popen(engine_command(), env=env)  # an argv list, no shell
        self.url = url = f"http://127.0.0.1:{ENGINE_PORT}"
        wait_until_ready(url, headers={}, timeout=STARTUP_TIMEOUT, process=self.engine)
        for _ in range(3):  # lazy initialization happens now, not on a user's first request
            stream_chat(url, headers=request_headers(self.api_key))
        if ENABLE_MEMORY_SNAPSHOT:  # without a snapshot, sleeping would only cost time
            post(f"{url}/sleep?level=1")

    @modal.enter(snap=False)
    def wake(self) -> None:
        if ENABLE_MEMORY_SNAPSHOT:
            post(f"{self.url}/wake_up")
            with urllib.request.urlopen(f"{self.url}/is_sleeping", timeout=10) as answer:
                if json.load(answer).get("is_sleeping"):
                    raise RuntimeError("vLLM still reports sleeping after /wake_up")
        # after any restore: a listening socket is not snapshotted
        start_forwarder(self.url, api_key=self.api_key)

    @modal.exit()
    def stop(self) -> None:
        self.engine.terminate()


def wait_until_ready(url: str, *, headers: dict, timeout: float, process=None) -> None:
    """Poll /health until 200, retrying 503 (a container starting, or no live replica yet) and
    connection errors; any other status fails at once, as does `process` exiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process and (code := process.poll()) is not None:
            raise RuntimeError(f"vLLM exited with code {code} before {url}/health was up")
        try:
            request = urllib.request.Request(f"{url}/health", headers=headers)
            with urllib.request.urlopen(request, timeout=60):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # only "starting" is worth waiting for
                raise
        except OSError:  # refused or timed out: still starting
            pass
        time.sleep(RETRY_INTERVAL)
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout:.0f} seconds")


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    urllib.request.urlopen(request, timeout=120).close()


def request_headers(api_key: str, *, proxy_auth: bool = False,
                    session_id: str | None = None) -> dict[str, str]:
    """vLLM's key as `Authorization: Bearer`; Modal's proxy token, when asked, only as
    `Modal-Key`/`Modal-Secret`: the proxy also takes it as `Authorization: Bearer wk-….ws-…`, but
    that header is vLLM's here. `Modal-Session-ID` keeps a conversation on one container."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if proxy_auth:
        headers |= {"Modal-Key": os.environ["MODAL_PROXY_TOKEN_ID"],
                    "Modal-Secret": os.environ["MODAL_PROXY_TOKEN_SECRET"]}
    if session_id:
        headers["Modal-Session-ID"] = session_id  # sticky routing, best effort
    return headers


def urlopen(url: str, *, headers: dict, body: dict | None = None, retry_for: float = 0):
    """Open `url` (POST `body` if given), retrying 503 for up to `retry_for` seconds: Modal's
    proxy answers 503 while a Server has no live replica."""
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=150)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(RETRY_INTERVAL)


def stream_chat(url: str, *, headers: dict, model: str = SERVED_MODEL_NAME,
                retry_for: float = 0) -> tuple:
    """One streamed chat completion: (text, usage, seconds to the first token)."""
    # min_tokens (a vLLM sampling field): a reply that ends at once (EOS first) has no text
    body = {"model": model, "max_tokens": 64, "min_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    sent, first, text, usage = time.perf_counter(), None, "", None
    with urlopen(f"{url}/v1/chat/completions", headers=headers, body=body,
                 retry_for=retry_for) as response:
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
                if text and first is None:
                    first = time.perf_counter() - sent
    return text, usage, first


# ## Deploy and smoke-test it

# `modal deploy skills/modal-llm-serving/scripts/vllm_server.py`; the URL is
# `modal.Server.from_name(APP_NAME, "VLLMServer").get_url()`. An OpenAI client passes the
# proxy-auth pair and a `Modal-Session-ID` (one per conversation) as `default_headers`, and retries
# 503. `modal run` on this file starts a temporary copy and runs the smoke test below
# (`MLS_API_KEY`, `MODAL_PROXY_TOKEN_ID`, `MODAL_PROXY_TOKEN_SECRET` set).


@app.local_entrypoint()
def smoke(ready_timeout: int = 25 * MINUTES) -> None:
    missing = [name for name in (API_KEY_ENV, "MODAL_PROXY_TOKEN_ID", "MODAL_PROXY_TOKEN_SECRET")
               if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {', '.join(missing)} (the Secret's key, a Modal proxy token)")
    run_smoke(VLLMServer.get_url(), api_key=os.environ[API_KEY_ENV], proxy_auth=True,
              ready_timeout=ready_timeout)


def run_smoke(url: str, *, api_key: str, ready_timeout: float, proxy_auth: bool = True,
              model: str = SERVED_MODEL_NAME, retry_for: float = 5 * MINUTES) -> None:
    """/health, /v1/models, one chat, one streamed chat, all in one session and each retrying
    503 up to its bound; then a dev endpoint must be hidden (404)."""
    headers = request_headers(api_key, proxy_auth=proxy_auth, session_id=f"smoke-{uuid.uuid4()}")
    wait_until_ready(url, headers=headers, timeout=ready_timeout)
    with urlopen(f"{url}/v1/models", headers=headers, retry_for=retry_for) as answer:
        listed = [m["id"] for m in json.load(answer)["data"]]
    if model not in listed:
        raise RuntimeError(f"/v1/models lists {listed}, not {model!r}")
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi."}]}
    with urlopen(f"{url}/v1/chat/completions", headers=headers, body=body,
                 retry_for=retry_for) as answer:
        print(f"chat: {json.load(answer)['usage']['completion_tokens']} tokens")
    text, usage, first = stream_chat(url, headers=headers, model=model, retry_for=retry_for)
    if not (text and usage and usage["completion_tokens"] > 0):
        raise RuntimeError(f"the stream gave no text or no usage: {text!r}, {usage}")
    print(f"{model} answered {text!r}, first token after {first * 1000:.0f} ms")
    try:
        urlopen(f"{url}/sleep?level=1", headers=headers, body={}).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            print("dev endpoints: hidden (404)\nsmoke test passed")
            return
    raise RuntimeError(f"{url}/sleep did not answer 404: the dev endpoints are exposed")
