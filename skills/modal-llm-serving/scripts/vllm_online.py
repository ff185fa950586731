# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_online.py"]
# deploy: true
# ---

# # Serve an open-weight LLM behind an OpenAI-compatible API with vLLM on Modal

# The default pattern: vLLM's OpenAI-compatible server in a Modal Function decorated with
# `@modal.web_server`, so Modal gives it an HTTPS URL and scales replicas with traffic. Choose it
# unless lowest latency (`sglang_low_latency.py`), cold-start time (`vllm_cold_start.py`) or
# offline tokens per dollar (`qwen3_throughput.py`) is the goal.

import asyncio
import hmac
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import modal

MINUTES = 60  # seconds

# ## Choose the model

# Qwen3-8B in FP8 fits one H100 with room for a large KV cache. The revision is a commit hash,
# never a branch: a branch can move, a deployment must not. Clients send SERVED_MODEL_NAME.

MODEL_NAME = "Qwen/Qwen3-8B-FP8"
MODEL_REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"
SERVED_MODEL_NAME = MODEL_NAME

# ## Choose the hardware

# Raise N_GPU (tensor parallelism, up to 8) for models that do not fit one GPU. `REGION = None`
# lets Modal place containers anywhere; pinning one costs 1.5x (broad) to 1.75x (narrow).

GPU_TYPE = "H100"
N_GPU = 1
REGION = None

# ## Set up the container image

# vLLM ships CUDA wheels on PyPI, so a slim image is enough; the tests check the engine command
# below with this version's own argument parser.

VLLM_VERSION = "0.32.0"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    # Xet's high-performance mode saturates the network when the weights are first downloaded.
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "VLLM_NO_USAGE_STATS": "1"})
)

# ## Cache weights and compilation artifacts in Volumes

# Weights in one Volume, so only the first container downloads them; vLLM's torch.compile and
# CUDA-graph artifacts in another (they depend on the vLLM version and GPU, not on the weights).

HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)
vllm_image = vllm_image.env({"HF_HOME": HF_CACHE_PATH, "VLLM_CACHE_ROOT": VLLM_CACHE_PATH})

# ## Configure the engine

# Context length (smaller leaves KV cache for more sequences), sequences decoded together (a bit
# above the requests per replica), GPU memory share, and the KV cache format ("fp8" halves it).

MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 64
GPU_MEMORY_UTILIZATION = 0.90
KV_CACHE_DTYPE = "auto"

ENGINE_PORT = 8001  # vLLM listens here, on loopback only
PORT = 8000  # Modal's URL points here (see "Keep the API private")


def engine_command(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION,
                   served_model_name: str = SERVED_MODEL_NAME, host: str = "127.0.0.1",
                   port: int = ENGINE_PORT) -> list[str]:
    """The `vllm serve` command line. The keywords let it run elsewhere (`mls local serve`)."""
    command = [
        "vllm", "serve", model,
        "--served-model-name", served_model_name,
        "--host", host, "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION), "--kv-cache-dtype", KV_CACHE_DTYPE,
        "--tensor-parallel-size", str(N_GPU),
        "--enable-prompt-tokens-details",  # usage counts prefix-cache hits: `mls bench` shows them
    ]
    if revision:  # a local checkpoint folder has none
        command += ["--revision", revision]
    return command


# ## Keep the API private

# vLLM requires the API key (`VLLM_API_KEY`) on /v1 routes only, and `@modal.web_server` makes
# every path public, including vLLM 0.32's `POST /invocations`: a chat completion with no key. So
# a small forwarder on the public port passes only PUBLIC_ROUTES and answers 404 to the rest
# without contacting the engine, for one loopback hop (1–3 ms of time to first token, measured).
# vLLM's /metrics has no key either; it passes only with the app's key, compared in constant time.

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
        except ClientError as exc:  # the engine is down or restarting
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


# The key comes from a Modal Secret, never from this file. Create it once (keep it in your shell):
#     export MLS_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
#     modal secret create mls-api-key MLS_API_KEY=$MLS_API_KEY
# Gated models (Llama, Gemma, ...) also need a Secret with `HF_TOKEN`: name it in HF_SECRET.

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None
secrets = [modal.Secret.from_name(name) for name in (API_KEY_SECRET, HF_SECRET) if name]

# ## Scale replicas with traffic

# Above TARGET_INPUTS requests per replica Modal adds replicas; MAX_INPUTS is a hard cap. Start
# below MAX_NUM_SEQS; raise both after benchmarking. MIN_CONTAINERS = 0: no standing bill, but the
# first request after an idle period waits for a cold start.

MAX_INPUTS = 32
TARGET_INPUTS = 16
MIN_CONTAINERS = 0
MAX_CONTAINERS = 4  # a ceiling on spend under a traffic spike
BUFFER_CONTAINERS = 0  # spare replicas kept ready while busy
SCALEDOWN_WINDOW = 15 * MINUTES  # an idle replica answers at once, but still bills
STARTUP_TIMEOUT = 20 * MINUTES  # loading, compiling, capturing CUDA graphs; first start downloads

# ## Serve it: start vLLM, wait until it is healthy, then open the public port

APP_NAME = "mls-vllm-online"
app = modal.App(APP_NAME)


@app.function(
    image=vllm_image,
    gpu=f"{GPU_TYPE}:{N_GPU}",
    volumes={HF_CACHE_PATH: hf_cache_volume, VLLM_CACHE_PATH: vllm_cache_volume},
    secrets=secrets,
    region=REGION,
    timeout=STARTUP_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,  # how long may a start take?
    scaledown_window=SCALEDOWN_WINDOW,  # how long should an idle replica stay up?
    min_containers=MIN_CONTAINERS,  # how many replicas should always be up?
    max_containers=MAX_CONTAINERS,  # how many replicas at most?
    buffer_containers=BUFFER_CONTAINERS,  # how many spare replicas while busy?
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)  # requests per replica
@modal.web_server(port=PORT, startup_timeout=STARTUP_TIMEOUT)
def serve() -> None:
    api_key = os.environ[API_KEY_ENV]
    env = {**os.environ, "VLLM_API_KEY": api_key}  # in env: argv is visible
    process = subprocess.Popen(engine_command(), env=env)
    engine_url = f"http://127.0.0.1:{ENGINE_PORT}"
    wait_until_healthy(engine_url, timeout=STARTUP_TIMEOUT, process=process)
    start_forwarder(engine_url, api_key=api_key)


def wait_until_healthy(base_url: str, *, timeout: float, process=None, per_try=5.0) -> None:
    """Poll /health until 200; fail fast if `process` exits, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process and (code := process.poll()) is not None:
            raise RuntimeError(f"vLLM exited with code {code} before {base_url}/health was up")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=per_try):
                return
        except OSError:  # refused, reset, or an error status (503) while starting
            time.sleep(1)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f} seconds")


# ## Deploy and smoke-test it

# `modal deploy skills/modal-llm-serving/scripts/vllm_online.py` prints the URL; any OpenAI
# client works with `base_url=f"{url}/v1"` and the key. `modal run` on this file starts a
# temporary copy and runs the smoke test below on your machine.


@app.local_entrypoint()
def smoke(ready_timeout: int = 25 * MINUTES) -> None:
    if not (api_key := os.environ.get(API_KEY_ENV)):
        raise SystemExit(f"set {API_KEY_ENV} to the key in the Modal Secret {API_KEY_SECRET!r}")
    run_smoke(serve.get_web_url(), api_key=api_key, ready_timeout=ready_timeout)


def run_smoke(base_url: str, *, api_key: str, ready_timeout: float,
              model: str = SERVED_MODEL_NAME) -> None:
    """/health until ready, /v1/models lists the model, then one chat completion and one streamed
    one must give text and usage."""
    wait_until_healthy(base_url, timeout=ready_timeout, per_try=150)  # Modal's request limit
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    models = urllib.request.Request(f"{base_url}/v1/models", headers=headers)
    with urllib.request.urlopen(models, timeout=150) as answer:
        if model not in (listed := [m["id"] for m in json.load(answer)["data"]]):
            raise RuntimeError(f"/v1/models lists {listed}, not {model!r}")
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi."}]}
    chat = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(),
                                  headers)
    with urllib.request.urlopen(chat, timeout=150) as answer:
        print(f"chat: {json.load(answer)['usage']['completion_tokens']} tokens")
    # min_tokens (a vLLM sampling field): a reply that ends at once (EOS first) has no text
    body = {"model": model, "max_tokens": 64, "min_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", headers=headers,
                                     data=json.dumps(body).encode())
    text, usage = "", None
    with urllib.request.urlopen(request, timeout=150) as response:
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    if not (text and usage and usage["completion_tokens"] > 0):
        raise RuntimeError(f"the stream gave no text or no usage: {text!r}, {usage}")
    print(f"{model} answered {text!r} ({usage['completion_tokens']} tokens): smoke test passed")
