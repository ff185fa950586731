# ---
# cmd: ["modal", "run", "skills/modal-llm-serving/scripts/vllm_multi_node.py"]
# deploy: true
# ---

# # Serve a model larger than one 8-GPU host with vLLM on a Modal cluster

# Only for a model that does not fit the biggest single host with room for batches (try FP8/FP4
# and H200/B200 with `vllm_online.py` first). `@modal.clustered(size=N_NODES, rdma=True)` starts
# N_NODES containers together, each with all 8 GPUs of its host, on an RDMA network:
#
# 1. Tensor parallelism over the 8 GPUs of a host (NVLink), pipeline parallelism over the hosts:
#    only the activations at each stage boundary cross the network, not an all-reduce per layer.
#    Modal's Kimi-K2 runs measured TP 8 x PP 4 over 4 x `H100:8`, with expert parallelism, best.
# 2. vLLM's own multi-node mode (`--nnodes --node-rank --master-addr`, no Ray): rank 0 runs the
#    API and the scheduler, every other rank `--headless` workers for its layers. Chosen over
#    SGLang's `--dist-init-addr`: vLLM is this skill's default engine and Modal's Kimi-K2
#    example serves with it; over Ray: no second cluster manager to start and wait for.
# 3. `@app.server` carries it (the SDK has no clustered web functions); requests go to rank 0,
#    whose /health answers once vLLM has heard from every rank's workers. The others wait for it.

import asyncio
import hmac
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import modal

MINUTES = 60  # seconds

# ## Choose the model, the hosts and the regions

# DeepSeek-V3's native FP8 weights are about 670 GB: more than one host of 8 H100s (640 GB), so
# two hosts. The revision is a Hub commit (huggingface.co/deepseek-ai/DeepSeek-V3/commit/<it>).

MODEL_NAME = "deepseek-ai/DeepSeek-V3"
MODEL_REVISION = "0cf17482555fbf7bc49273e499647cc71c2bd7a7"
SERVED_MODEL_NAME = MODEL_NAME
GPU_TYPE = "H100"
N_GPU = 8  # per container: a clustered container takes every GPU of its host
N_NODES = 2  # containers (hosts) per copy of the model; pipeline stages
RDMA = True  # 3,200 Gbps between hosts (6,400 on B300); without it, the private IP network
ROUTING_REGION = "us-east"
REGION = "us-east"  # compute_region: pinning costs 1.75x the GPU price (narrow region)

# ## Set up the container image and the Volumes

# NCCL reaches the RDMA network through libibverbs, which a slim image lacks (Modal's Kimi-K2
# example installs the same two packages). The tests parse the command with this vLLM's parser.

VLLM_VERSION = "0.32.0"
HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .apt_install("libibverbs1", "libibverbs-dev")
    .uv_pip_install(f"vllm=={VLLM_VERSION}")
    .env({
        "HF_XET_HIGH_PERFORMANCE": "1",  # saturate the network on the download
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HOME": HF_CACHE_PATH,
        "VLLM_CACHE_ROOT": VLLM_CACHE_PATH,
    })
)
hf_cache_volume = modal.Volume.from_name("mls-huggingface-cache", create_if_missing=True)
vllm_cache_volume = modal.Volume.from_name("mls-vllm-cache", create_if_missing=True)

# The weights are downloaded once, at image build, into a Volume; each rank reads its layers
# from it (1-3 GB/s per host) with the Hub off: no two ranks download into one Volume at once.


def download_weights() -> None:
    from huggingface_hub import snapshot_download  # ships with vLLM

    snapshot_download(MODEL_NAME, revision=MODEL_REVISION)
    hf_cache_volume.commit()


vllm_image = vllm_image.run_function(download_weights, volumes={HF_CACHE_PATH: hf_cache_volume},
                                     timeout=4 * 60 * MINUTES)

# ## Configure the engine

MAX_MODEL_LEN = 32768
MAX_NUM_SEQS = 64
GPU_MEMORY_UTILIZATION = 0.90
KV_CACHE_DTYPE = "auto"
ENABLE_EXPERT_PARALLEL = True  # MoE experts split over a host's GPUs, not sliced by TP
MASTER_PORT = 29501  # rank 0's torch.distributed store, on the cluster network
ENGINE_PORT = 8001  # vLLM's API on rank 0, on loopback only
PORT = 8000  # the Server's port: the forwarder, on rank 0


def engine_command(*, model: str = MODEL_NAME, revision: str | None = MODEL_REVISION,
                   served_model_name: str = SERVED_MODEL_NAME, host: str = "127.0.0.1",
                   port: int = ENGINE_PORT, node_rank: int = 0,
                   head_address: str = "127.0.0.1") -> list[str]:
    """`vllm serve` for one rank: TP over a host's GPUs x PP over the hosts; ranks past 0 run
    headless (no API). The keywords let it run elsewhere (`mls local serve`)."""
    command = [
        "vllm", "serve", model,
        "--served-model-name", served_model_name,
        "--host", host, "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION), "--kv-cache-dtype", KV_CACHE_DTYPE,
        "--tensor-parallel-size", str(N_GPU), "--pipeline-parallel-size", str(N_NODES),
        "--nnodes", str(N_NODES), "--node-rank", str(node_rank),
        "--master-addr", head_address, "--master-port", str(MASTER_PORT),
    ]
    if ENABLE_EXPERT_PARALLEL:
        command += ["--enable-expert-parallel"]
    if node_rank > 0:
        command += ["--headless"]
    if revision:  # a local checkpoint folder has none
        command += ["--revision", revision]
    return command


# ## Give each rank its part

# Modal gives each container its rank and every container's address (rank order) on the
# cluster's network; VLLM_HOST_IP makes vLLM announce that address.


def cluster_role() -> tuple[int, list[str]]:
    """(this container's rank, every container's IPv4 address), from Modal's cluster context."""
    cluster = modal.Cluster.from_context()
    return cluster.container_rank(), cluster.container_ips(family="ipv4")


def node_command(rank: int, addresses: list[str]) -> tuple[list[str], dict[str, str]]:
    """The engine command and environment of rank `rank` in a cluster at `addresses`."""
    if len(addresses) != N_NODES or not 0 <= rank < N_NODES:
        raise RuntimeError(f"rank {rank} of {len(addresses)} containers: this file is written "
                           f"for N_NODES = {N_NODES}")
    env = {"VLLM_HOST_IP": addresses[rank], "HF_HUB_OFFLINE": "1"}
    return engine_command(node_rank=rank, head_address=addresses[0]), env


# ## Expose only what clients need

# On rank 0 a forwarder passes exactly PUBLIC_ROUTES to vLLM and 404s the rest, so vLLM's other
# endpoints stay inside the container; its /metrics (no key in vLLM) passes with the app's key.

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
        session = session or ClientSession(engine_url, auto_decompress=False,
                                           timeout=ClientTimeout(total=None, sock_connect=10))
        try:
            answer = await session.request(request.method, request.path_qs,
                                           headers=passable(request.headers),
                                           data=await request.read())
        except ClientError as exc:  # the engine is down
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


# Two locks, as in `vllm_server.py`: Modal's proxy auth, and vLLM's key on /v1 from a Secret.

API_KEY_SECRET = "mls-api-key"
API_KEY_ENV = "MLS_API_KEY"
HF_SECRET = None  # a Secret holding HF_TOKEN, for gated models
secrets = [modal.Secret.from_name(name) for name in (API_KEY_SECRET, HF_SECRET) if name]

# ## Scale by whole clusters

# Counts are containers, each a multiple of N_NODES (the SDK refuses others). MIN_CONTAINERS =
# N_NODES keeps one copy (16 GPUs) warm around the clock, so 0 here. Loading takes many minutes.

TARGET_CONCURRENCY = 32
MAX_CONCURRENCY = 64  # above it rank 0 answers 429: keep it at most MAX_NUM_SEQS
MIN_CONTAINERS = 0
MAX_CONTAINERS = 1 * N_NODES  # copies x N_NODES: whole clusters only
BUFFER_CONTAINERS = 0
SCALEDOWN_WINDOW = 20 * MINUTES
STARTUP_TIMEOUT = 45 * MINUTES
RETRY_INTERVAL = 2  # seconds between tries while the cluster starts (503, or no answer)
EXIT_GRACE_PERIOD = 30  # seconds a stopping cluster finishes in-flight requests

# ## Serve it: every rank starts its engine; rank 0 answers once all of them are up

APP_NAME = "mls-vllm-multi-node"
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
    startup_timeout=STARTUP_TIMEOUT,  # how long may loading every rank take?
    exit_grace_period=EXIT_GRACE_PERIOD,
)
@modal.clustered(size=N_NODES, rdma=RDMA)
class VLLMCluster:
    @modal.enter()
    def start(self) -> None:
        self.stopping = threading.Event()  # set by @exit: the engine's exit is then expected
        rank, addresses = cluster_role()
        command, env = node_command(rank, addresses)
        api_key = os.environ[API_KEY_ENV]
        env |= {"VLLM_API_KEY": api_key}  # in env: argv is visible
        self.engine = subprocess.Popen(command, env={**os.environ, **env})  # no shell
        if rank == 0:
            url = f"http://127.0.0.1:{ENGINE_PORT}"
            wait_until_ready(url, headers={}, timeout=STARTUP_TIMEOUT, process=self.engine)
            stream_chat(url, headers=request_headers(api_key))  # first-request work, now
            start_forwarder(url, api_key=api_key, port=PORT)
        else:  # no API here: up when rank 0 is, which needs this rank's workers
            wait_until_ready(f"http://{addresses[0]}:{PORT}", headers={},
                             timeout=STARTUP_TIMEOUT, process=self.engine)
        threading.Thread(target=stop_when_exits, args=(self.engine, self.stopping),
                         daemon=True).start()

    @modal.exit()
    def stop(self) -> None:
        self.stopping.set()
        self.engine.terminate()


def stop_when_exits(process: subprocess.Popen, stopping: threading.Event) -> None:
    """A rank without its engine leaves the model in pieces: end this container too."""
    code = process.wait()
    if not stopping.is_set():  # not our own @exit
        print(f"vLLM exited with code {code}: stopping this container")
        os.kill(os.getpid(), signal.SIGTERM)


def wait_until_ready(url: str, *, headers: dict, timeout: float, process=None) -> None:
    """Poll /health until 200, retrying 503 (starting, or no live cluster yet) and connection
    errors; any other status fails at once, as does `process` exiting."""
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


def request_headers(api_key: str, *, proxy_auth: bool = False) -> dict[str, str]:
    """vLLM's key as `Authorization: Bearer`; Modal's proxy token as `Modal-Key`/`-Secret`."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if proxy_auth:
        headers |= {"Modal-Key": os.environ["MODAL_PROXY_TOKEN_ID"],
                    "Modal-Secret": os.environ["MODAL_PROXY_TOKEN_SECRET"]}
    return headers


def urlopen(url: str, *, headers: dict, body: dict | None = None, retry_for: float = 0):
    """Open `url` (POST `body` if given), retrying 503 for up to `retry_for` seconds."""
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

# `modal deploy skills/modal-llm-serving/scripts/vllm_multi_node.py` (the first build downloads
# the weights: up to hours); the URL is `modal.Server.from_name(APP_NAME, "VLLMCluster")
# .get_url()`. `modal run` on this file starts a temporary cluster and runs the smoke test below
# (`MLS_API_KEY`, `MODAL_PROXY_TOKEN_ID`, `MODAL_PROXY_TOKEN_SECRET` set).


@app.local_entrypoint()
def smoke(ready_timeout: int = 60 * MINUTES) -> None:
    missing = [name for name in (API_KEY_ENV, "MODAL_PROXY_TOKEN_ID", "MODAL_PROXY_TOKEN_SECRET")
               if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {', '.join(missing)} (the Secret's key, a Modal proxy token)")
    run_smoke(VLLMCluster.get_url(), api_key=os.environ[API_KEY_ENV], proxy_auth=True,
              ready_timeout=ready_timeout)


def run_smoke(url: str, *, api_key: str, ready_timeout: float, proxy_auth: bool = True,
              model: str = SERVED_MODEL_NAME, retry_for: float = 5 * MINUTES) -> None:
    """/health, /v1/models, then one streamed chat with text and usage, each retrying 503."""
    headers = request_headers(api_key, proxy_auth=proxy_auth)
    wait_until_ready(url, headers=headers, timeout=ready_timeout)
    with urlopen(f"{url}/v1/models", headers=headers, retry_for=retry_for) as answer:
        if model not in (listed := [m["id"] for m in json.load(answer)["data"]]):
            raise RuntimeError(f"/v1/models lists {listed}, not {model!r}")
    text, usage, first = stream_chat(url, headers=headers, model=model, retry_for=retry_for)
    if not (text and usage and usage["completion_tokens"] > 0):
        raise RuntimeError(f"the stream gave no text or no usage: {text!r}, {usage}")
    print(f"{model} answered {text!r}, first token after {first * 1000:.0f} ms: smoke test passed")
