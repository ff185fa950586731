"""The skill's four recipes, verified without a Modal account.

Each recipe compiles, imports with only `modal` installed, gives the Modal SDK exactly its settings
(`verify.verify_modal_settings`), and builds an engine command the engine's own parser accepts with
every setting in place (`verify.verify_engine_command`). `mls local serve --recipe` runs exactly
the documented CPU transform of that command (`verify.verify_local_command`); the online recipe's
command is the session server (`conftest.tiny_server`), the cold-start one is served in
`tests/test_local.py`. The forwarders pass /v1 (streaming too) to that real server and block the
rest; the smoke clients pass against it; the throughput code runs on vLLM's `LLM`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import json
import os
import py_compile
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import httpx
import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.endpoint.smoke import run_smoke
from modal_llm_serving.local.engine_args import parse_sglang
from modal_llm_serving.local.serve import LocalServer, engine_build, launcher_argv
from modal_llm_serving.local.transforms import CPU_ENVIRONMENT
from modal_llm_serving.recipes import table
from modal_llm_serving.recipes.files import load_recipe, recipe_path
from modal_llm_serving.recipes.new import render_source

from ..conftest import TINY_API_KEY, tiny_local_command
from ..verify import (
    Spied,
    spy_modal,
    verify_engine_command,
    verify_local_command,
    verify_modal_settings,
)
from .standin import refusing_port, sglang_standin

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["spy_modal"]  # a fixture, used by name

HERE = Path(__file__).resolve().parent
RECIPES = table.RECIPE_NAMES
VLLM_RECIPES = tuple(r.name for r in table.RECIPES if r.engine == "vllm")
SERVERS = tuple(r.name for r in table.RECIPES if r.engine == "vllm" and r.primitive)
# the recipes whose engine listens on loopback behind a route allow-list forwarder
FORWARDING = tuple(r.name for r in table.RECIPES
                   if any(s.name == "PUBLIC_ROUTES" for s in r.settings))
# what each file is, in verify.pattern_of's words: its pattern, or "server" for the Server form
PATTERNS = {r.name: "server" if r.proxy_auth else r.patterns[0] for r in table.RECIPES}


# --- every recipe: compiles, imports alone, gives Modal its settings, sizes ----------------------


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_compiles(name: str, tmp_path: Path) -> None:
    py_compile.compile(str(recipe_path(name)), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_every_recipe_imports_with_only_modal_installed() -> None:
    """A fresh interpreter where the toolkit, the engines and the ML libraries cannot import."""
    blocked = ["modal_llm_serving", "vllm", "sglang", "torch", "transformers", "openai",
               "huggingface_hub", "numpy", "requests", "httpx"]
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the skill-only environment")
        sys.meta_path.insert(0, Block())
        for index, path in enumerate(sys.argv[1:]):
            spec = importlib.util.spec_from_file_location(f"recipe{{index}}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            print("imported", path, module.app.name)
    """)
    paths = [str(recipe_path(name)) for name in RECIPES]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True,
                          timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("imported ") == len(RECIPES)



@pytest.mark.parametrize("name", RECIPES)
def test_recipe_gives_modal_its_settings(name: str, spy_modal: Callable[[Path], Spied]) -> None:
    assert verify_modal_settings(spy_modal(recipe_path(name))) == PATTERNS[name]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_plain_and_within_its_size(name: str) -> None:
    """Nothing generated or copied from the toolkit; the online one ≤ 275 lines, the Server
    forms (forwarder, snapshots and sessions, or a cluster's ranks, in one file) ≤ 372, the
    batch job (which also reads, resumes and writes a dataset) ≤ 420, the others ≤ 330."""
    source = recipe_path(name).read_text()
    assert "# BEGIN" not in source and "modal_llm_serving" not in source
    limit = {"vllm_online": 275, "vllm_server": 372, "vllm_multi_node": 372,
             "qwen3_throughput": 420}.get(name, 330)
    assert len(source.splitlines()) <= limit


# --- the engine command, through the engine's own parser ---------------------------------------


@pytest.mark.parametrize("name", RECIPES)
def test_engine_parser_accepts_the_recipe_command(name: str) -> None:
    verify_engine_command(load_recipe(recipe_path(name)))


def test_vllm_recipes_pin_the_version_the_parser_checked() -> None:
    build = engine_build()
    assert build is not None, "vLLM is not installed: run `make install`"
    installed = importlib.metadata.version(build).split("+")[0]
    for name in VLLM_RECIPES:
        assert installed == load_recipe(recipe_path(name)).VLLM_VERSION, name


def test_sglang_recipe_pins_the_version_the_parser_checked() -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    assert importlib.metadata.version("sglang") == recipe.SGLANG_VERSION


def test_sglang_speculative_decoding_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.setattr(recipe, "SPECULATIVE_ALGORITHM", "EAGLE3")
    monkeypatch.setattr(recipe, "SPECULATIVE_DRAFT_MODEL", "Tengyunw/qwen3_8b_eagle3")
    monkeypatch.setattr(recipe, "SPECULATIVE_DRAFT_REVISION", "0" * 40)
    args = parse_sglang(recipe.engine_command(api_key="k", admin_api_key="a"))
    assert args.speculative_algorithm == "EAGLE3"
    assert args.speculative_draft_model_revision == "0" * 40
    assert (args.speculative_num_steps, args.speculative_num_draft_tokens) == (
        recipe.SPECULATIVE_NUM_STEPS, recipe.SPECULATIVE_NUM_DRAFT_TOKENS)


def test_sglang_looks_for_deepgemm_kernels_inside_the_volume(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLang's own setting resolution puts the DeepGEMM cache under the mounted Volume."""
    from sglang.srt.environ import envs

    r = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.delenv("SGLANG_DG_CACHE_DIR", raising=False)
    monkeypatch.setenv("SGLANG_CACHE_DIR", r.SGLANG_CACHE_PATH)
    assert Path(r.SGLANG_CACHE_PATH) in Path(envs.SGLANG_DG_CACHE_DIR.get()).parents
    # the precompile command is valid for this SGLang, for the served model and TP size
    argv = r.deep_gemm_compile_argv()
    assert argv[:3] == ["python", "-m", "sglang.compile_deep_gemm"]
    args = parse_sglang(["python", "-m", "sglang.launch_server", *argv[3:]])
    assert (args.model_path, args.revision, args.tp_size) == (r.MODEL_NAME, r.MODEL_REVISION,
                                                              r.N_GPU)


@pytest.mark.parametrize("name", VLLM_RECIPES)
def test_vllm_uses_the_mounted_caches(name: str, spy_modal: Callable[[Path], Spied],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's and the Hub client's own setting resolution land inside the recipe's Volumes."""
    import vllm.envs

    spied = spy_modal(recipe_path(name))
    r = spied.recipe
    env = spied.image_env()
    assert env["VLLM_CACHE_ROOT"] == r.VLLM_CACHE_PATH and env["HF_HOME"] == r.HF_CACHE_PATH
    monkeypatch.setenv("VLLM_CACHE_ROOT", env["VLLM_CACHE_ROOT"])
    assert vllm.envs.VLLM_CACHE_ROOT == r.VLLM_CACHE_PATH  # torch_compile_cache lives under it
    # the Hub client reads HF_HOME once, at import: ask a fresh interpreter
    hub_cache = subprocess.run(
        [sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
        capture_output=True, text=True, check=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
             "HF_HOME": env["HF_HOME"]}).stdout.strip()
    assert Path(r.HF_CACHE_PATH) in Path(hub_cache).parents, hub_cache



# --- the command `mls local serve --recipe` runs -----------------------------------------------


@pytest.mark.parametrize("name", SERVERS)
def test_local_command_is_the_documented_cpu_transform(name: str, tiny_model_path: Path) -> None:
    verify_local_command(recipe_path(name), tiny_model_path)


@pytest.mark.engine
def test_the_session_server_runs_the_online_recipe_command(tiny_server: LocalServer,
                                                           tiny_model_path: Path) -> None:
    command = tiny_local_command(tiny_model_path)
    port = tiny_server.base_url.rsplit(":", 1)[1]
    ran = tiny_server.process.args
    assert isinstance(ran, list)
    expected = launcher_argv(command.argv)
    expected[expected.index("--port") + 1] = port  # each command gets its own free port
    assert ran == expected


# --- the online recipe as deployed: forwarder in front of real vLLM -----------------------------


@contextlib.contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """An aiohttp `app` on a port bound here, served from a thread while this lasts; its URL."""
    from aiohttp import web

    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, listener).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=120)
        loop.close()


@pytest.fixture(scope="module")
def fronts(tiny_server: LocalServer) -> dict[str, str]:
    """Each forwarding recipe's own forwarder on a public port, the real engine behind it."""
    urls = {}
    for name in FORWARDING:
        port = load_recipe(recipe_path(name)).start_forwarder(
            tiny_server.base_url, api_key=TINY_API_KEY, host="127.0.0.1", port=0)
        urls[name] = f"http://127.0.0.1:{port}"  # a daemon thread: it ends with the tests
    return urls


@pytest.mark.engine
def test_online_recipe_server_passes_the_smoke_test(tiny_server: LocalServer,
                                                    fronts: dict[str, str]) -> None:
    front = fronts["vllm_online"]
    for url in (tiny_server.base_url, front):  # the engine alone, and as deployed
        report = run_smoke(url, api_key=TINY_API_KEY, model="tiny")
        assert report.ok, [(s.name, s.status, s.detail) for s in report.steps]
    result = CliRunner().invoke(cli, ["smoke", front, "--api-key", TINY_API_KEY, "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.engine
@pytest.mark.parametrize("name", FORWARDING)
def test_recipe_own_smoke_client_passes_through_its_forwarder(
        name: str, fronts: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path(name))
    servers = ("vllm_server", "vllm_multi_node")  # the Server form: no Modal proxy here
    no_proxy = {"proxy_auth": False} if name in servers else {}
    recipe.run_smoke(fronts[name], api_key=TINY_API_KEY, model="tiny", ready_timeout=30,
                     **no_proxy)
    out = capsys.readouterr().out
    assert "smoke test passed" in out
    if name in ("vllm_cold_start", "vllm_server"):  # dev mode on: the smoke test proves it hidden
        assert "dev endpoints: hidden (404)" in out


@pytest.mark.engine
def test_forwarder_closes_what_the_api_key_leaves_open(tiny_server: LocalServer,
                                                       fronts: dict[str, str]) -> None:
    """vLLM answers /invocations (a chat completion) with no key at all; the forwarder 404s it."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{tiny_server.base_url}/v1/chat/completions", json=body).status_code == 401
    direct = httpx.post(f"{tiny_server.base_url}/invocations", json=body, timeout=60)
    assert direct.status_code == 200 and direct.json()["usage"]["completion_tokens"] > 0
    for front in fronts.values():
        assert httpx.post(f"{front}/invocations", json=body).status_code == 404
        assert httpx.post(f"{front}/scale_elastic_ep", json={}).status_code == 404


@pytest.fixture(scope="module")
def forwarder(fronts: dict[str, str]) -> str:
    return fronts["vllm_cold_start"]


@pytest.mark.engine
def test_forwarder_passes_v1_and_streams(forwarder: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{forwarder}/v1", api_key=TINY_API_KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == ["tiny"]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=24,
        stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})  # random weights may pick EOS early
    # (that events pass one by one, not as one buffered body, is
    # test_forwarder_passes_each_event_on_as_the_engine_sends_it)
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 24
    completion = client.completions.create(model="tiny", prompt="a b c", max_tokens=4,
                                           extra_body={"ignore_eos": True})
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert httpx.get(f"{forwarder}/health").status_code == 200


@pytest.mark.engine
def test_forwarder_keeps_the_api_key_requirement(forwarder: str) -> None:
    answer = httpx.post(f"{forwarder}/v1/chat/completions",
                        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 401


@pytest.mark.engine
def test_forwarder_hides_what_the_engine_would_answer(forwarder: str,
                                                      tiny_server: LocalServer) -> None:
    """Paths the real engine serves (200 there) are 404 through the forwarder; its /metrics,
    open there, passes only with the key."""
    auth = {"Authorization": f"Bearer {TINY_API_KEY}"}
    assert httpx.get(f"{tiny_server.base_url}/metrics").status_code == 200  # no key needed
    assert httpx.get(f"{forwarder}/metrics").status_code == 401
    assert httpx.get(f"{forwarder}/metrics", headers=auth).status_code == 200
    for method, path, body in (("GET", "/version", None),
                               ("POST", "/tokenize", {"model": "tiny", "prompt": "a"}),
                               ("GET", "/openapi.json", None)):
        direct = httpx.request(method, f"{tiny_server.base_url}{path}", json=body, headers=auth)
        assert direct.status_code == 200, (path, direct.status_code)
        through = httpx.request(method, f"{forwarder}{path}", json=body, headers=auth)
        assert through.status_code == 404, (path, through.status_code)


@pytest.mark.parametrize("name", FORWARDING)
def test_forwarder_never_forwards_dev_endpoints(name: str) -> None:
    """A recording upstream proves the blocked requests never reach the engine at all."""
    recipe = load_recipe(recipe_path(name))
    from aiohttp import web

    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.raw_path}")
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_route("*", "/{path:.*}", record)
    with serving(upstream) as engine_url:
        port = recipe.start_forwarder(engine_url, api_key="k", host="127.0.0.1", port=0)
        base = f"http://127.0.0.1:{port}"
        blocked_requests_reach_nothing(base, seen)


def blocked_requests_reach_nothing(base: str, seen: list[str]) -> None:
    """Every blocked path answers 404 from the forwarder at `base` and never reaches the
    upstream recording into `seen`; an allowed one does."""
    blocked = [("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
               ("POST", "/collective_rpc"), ("POST", "/reset_prefix_cache"),
               ("GET", "/server_info"), ("POST", "/pause"), ("GET", "/docs"),
               ("POST", "/v1/load_lora_adapter"), ("GET", "/v1/chat/completions"),
               ("POST", "/v1/../sleep"), ("POST", "/v1/models/../../wake_up"),
               ("POST", "/%73leep"), ("POST", "//sleep"), ("POST", "/v1/chat/completions/")]
    with httpx.Client() as client:
        for method, path in blocked:
            request = client.build_request(method, base)
            request.url = httpx.URL(base + path) if ".." not in path else request.url.copy_with(
                raw_path=path.encode())
            answer = client.send(request)
            assert answer.status_code == 404, (method, path, answer.status_code)
        assert seen == [], f"blocked requests reached the engine: {seen}"
        allowed = client.post(f"{base}/v1/chat/completions?x=1", json={"a": 1},
                              headers={"Authorization": "Bearer k"})
    assert allowed.status_code == 200
    assert seen == ["POST /v1/chat/completions?x=1"]




METRICS_TEXT = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3.0\n"


@pytest.mark.parametrize("name", FORWARDING)
def test_forwarder_passes_metrics_only_with_the_app_key(name: str) -> None:
    """vLLM serves /metrics to anyone; through the forwarder only a request carrying the app's
    key gets it. Any other request is refused there (401) and never reaches the engine."""
    from aiohttp import web

    seen: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=METRICS_TEXT, content_type="text/plain")

    upstream = web.Application()
    upstream.router.add_get("/metrics", metrics)
    key = "s3cret-key"
    with serving(upstream) as engine_url:
        port = load_recipe(recipe_path(name)).start_forwarder(engine_url, api_key=key,
                                                              host="127.0.0.1", port=0)
        url = f"http://127.0.0.1:{port}/metrics"
        refused = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cret-kez"},
                   {"Authorization": f"Bearer {key}x"}, {"Authorization": key},
                   {"Authorization": f"Basic {key}"}, {"X-Api-Key": key},
                   {"Authorization": "Bearer s3cret-k\u00e9y".encode()}]
        for headers in refused:
            answer = httpx.get(url, headers=headers)
            assert answer.status_code == 401, (headers, answer.status_code)
        assert seen == [], f"refused scrapes reached the engine: {seen}"
        assert httpx.post(url, headers={"Authorization": f"Bearer {key}"}).status_code == 404
        answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200 and answer.content == METRICS_TEXT
    assert seen == [f"Bearer {key}"]  # the key goes on, as on /v1: vLLM checks it there


@pytest.mark.parametrize("name", FORWARDING)
def test_forwarder_answers_502_when_the_engine_is_down_and_refuses_a_taken_port(
        name: str) -> None:
    recipe = load_recipe(recipe_path(name))
    down = f"http://127.0.0.1:{refusing_port()}"
    port = recipe.start_forwarder(down, api_key="k", host="127.0.0.1", port=0)
    answer = httpx.get(f"http://127.0.0.1:{port}/health")
    assert answer.status_code == 502 and "engine down" in answer.text
    with pytest.raises(OSError):  # the port is taken now: it fails where it starts
        recipe.start_forwarder(down, api_key="k", host="127.0.0.1", port=port)


@pytest.mark.parametrize("name", FORWARDING)
def test_forwarder_passes_each_event_on_as_the_engine_sends_it(name: str) -> None:
    """The engine sends its first event, then waits until the client has read that event
    through the forwarder before it sends the rest. A forwarder that held the answer back
    until its end would keep the first event from the client; the engine would give up
    waiting (after 30 s, so a busy machine is never the reason) and the test fail."""
    from aiohttp import web

    first, rest = b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\ndata: [DONE]\n\n'
    client_has_first = threading.Event()
    released: list[bool] = []  # whether the client had the first event when the engine went on

    async def engine(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        released.append(await asyncio.to_thread(client_has_first.wait, 30))
        await response.write(rest)
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", engine)
    received = b""
    with serving(upstream) as engine_url:
        port = load_recipe(recipe_path(name)).start_forwarder(engine_url, api_key="k",
                                                              host="127.0.0.1", port=0)
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"stream": True}, timeout=120) as answer:
            for data in answer.iter_raw():
                received += data
                if received.startswith(first):
                    client_has_first.set()
    assert released == [True], "the first event reached the client only with the whole answer"
    assert received == first + rest


# --- the low-latency recipe: its smoke client, its locked admin endpoints ----------------------


@pytest.mark.engine
def test_low_latency_recipe_smoke_passes_against_a_real_server(
        tiny_server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    recipe.run_smoke(tiny_server.base_url, api_key=TINY_API_KEY, model="tiny", ready_timeout=30)
    assert "smoke test passed" in capsys.readouterr().out


class ScalingUp(NamedTuple):
    url: str
    seen: list[tuple[str, Mapping[str, str]]]  # (path, headers) of each request
    script: list[int]  # statuses /health answers first
    scripts: dict[str, list[int]]  # path -> statuses it answers first


@pytest.fixture
def scaling_up_server() -> Iterator[ScalingUp]:
    """Fault injection: /health answers the statuses in `script` first, then 200; the /v1 routes
    answer like a tiny OpenAI server, each first answering the statuses `scripts[path]` holds;
    any other path is 404. Records (path, headers) of every request."""

    from aiohttp import web

    seen: list[tuple[str, Mapping[str, str]]] = []
    script: list[int] = []
    scripts: dict[str, list[int]] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.copy()))  # names case-insensitive
        if request.path == "/health":
            return web.Response(status=script.pop(0) if script else 200)
        if scripts.get(request.path):
            return web.Response(status=scripts[request.path].pop(0))
        if request.path not in ("/v1/models", "/v1/chat/completions"):
            return web.Response(status=404)
        if request.path == "/v1/models":
            return web.json_response({"data": [{"id": "m"}]})
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"content": "Paris."}}],
                                      "usage": {"completion_tokens": 2}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ("Par", "is."):
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    with serving(app) as url:
        yield ScalingUp(url, seen, script, scripts)


def test_low_latency_smoke_retries_503_with_one_session_id(
        scaling_up_server: ScalingUp, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, seen, script, _ = scaling_up_server
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.setattr(recipe, "RETRY_INTERVAL", 0)  # the server answers at once
    script += [503, 503, 503]  # a scaled-to-zero http_server while the first replica starts
    recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)
    assert "smoke test passed" in capsys.readouterr().out
    assert [path for path, _ in seen].count("/health") == 4
    sessions = {headers.get("Modal-Session-ID") for _, headers in seen}
    assert len(sessions) == 1 and None not in sessions  # every request, one sticky session


def test_low_latency_smoke_does_not_retry_other_errors(scaling_up_server: ScalingUp) -> None:
    import urllib.error

    url, seen, script, _ = scaling_up_server
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    script += [500]
    with pytest.raises(urllib.error.HTTPError, match="500"):
        recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)
    assert [path for path, _ in seen] == ["/health"]


def sglang_route_auth_levels() -> dict[str, str]:
    """Path -> auth level of SGLang's HTTP routes, read from the pinned wheel's source.

    (Importing the server module needs GPU-side packages; its decorators are plain to read.)
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("sglang.srt.entrypoints.http_server")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    levels: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        paths, level = [], "normal"
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            name = ast.unparse(decorator.func)
            if name.startswith("app.") and decorator.args:
                first = decorator.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    paths.append(first.value)
            elif name == "auth_level":
                level = ast.unparse(decorator.args[0]).removeprefix("AuthLevel.").lower()
        for path in paths:
            levels[path] = level
    return levels



def test_sglang_admin_endpoints_are_locked_to_api_key_holders() -> None:
    """With the recipe's keys, SGLang's own auth rule refuses the API key on admin routes."""
    from sglang.srt.utils.auth import AuthLevel, decide_request_auth

    recipe = load_recipe(recipe_path("sglang_low_latency"))
    args = parse_sglang(recipe.engine_command(api_key="user-key", admin_api_key="nobody-knows"))
    assert (args.api_key, args.admin_api_key) == ("user-key", "nobody-knows")
    levels = sglang_route_auth_levels()
    for path in ("/release_memory_occupation", "/update_weights_from_disk", "/flush_cache",
                 "/start_profile", "/load_lora_adapter"):
        assert levels[path] in ("admin_optional", "admin_force"), (path, levels.get(path))
    assert levels["/v1/chat/completions"] == "normal"

    def allowed(path: str, key: str | None) -> bool:
        decision = decide_request_auth(
            method="POST", path=path, authorization_header=f"Bearer {key}" if key else None,
            api_key=args.api_key, admin_api_key=args.admin_api_key,
            auth_level=AuthLevel(levels.get(path, "normal")))
        return decision.allowed

    assert allowed("/v1/chat/completions", "user-key")
    assert not allowed("/v1/chat/completions", None)
    for path in ("/release_memory_occupation", "/update_weights_from_disk", "/flush_cache"):
        assert not allowed(path, "user-key") and not allowed(path, None), path


def sglang_recipe_on(port: int, folder: Path, **settings: int) -> ModuleType:
    """The low-latency recipe as `mls new` writes it, with PORT = `port` (the engine command's
    default port is bound when the file is read, so the constant itself is set) and no pause
    between health checks unless `settings` say otherwise."""
    text = render_source(recipe_path("sglang_low_latency").read_text(),
                         {"PORT": port, "RETRY_INTERVAL": 0, **settings}).text
    path = folder / f"sglang_on_{port}.py"
    path.write_text(text)
    return load_recipe(path, module_name=path.stem)


def container_methods(recipe: ModuleType) -> tuple[object, Callable[..., None],
                                                   Callable[..., None]]:
    """A fresh container instance, and its @modal.enter and @modal.exit methods as Modal calls
    them."""
    user_cls = recipe.SGLangServer._get_user_cls()
    return (object.__new__(user_cls), user_cls.start._get_raw_f(),
            user_cls.stop._get_raw_f())


def stop_engine(container: object, stop: Callable[..., None]) -> int:
    """The recipe's @modal.exit, then the engine's exit code (killed if it outlives it)."""
    engine: subprocess.Popen[bytes] = container.engine  # type: ignore[attr-defined]
    stop(container)
    try:
        return engine.wait(timeout=30)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


def test_sglang_container_start_waits_for_health_then_warms_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's @enter runs its own engine command, which starts a stand-in SGLang process
    (standin/sglang/launch_server.py: SGLang's /health and chat protocol on loopback). It waits
    through /health's 503s, then warms up with three streamed chats under the user's key, and
    the engine serves on PORT (the port http_server exposes, test_recipe_gives_modal_its_settings);
    @exit stops it. Two containers: two fresh admin keys nobody knows."""
    monkeypatch.setenv("MLS_API_KEY", "user-key")
    launched: list[list[str]] = []
    with sglang_standin(monkeypatch, tmp_path, health=(503, 503)) as engine:
        recipe = sglang_recipe_on(engine.port, tmp_path)
        for _ in range(2):
            container, start, stop = container_methods(recipe)
            try:
                start(container)
                seen = engine.requests()
                assert [(r["path"], r["status"]) for r in seen] == [
                    ("/health", 503), ("/health", 503), ("/health", 200),
                    *[("/v1/chat/completions", 200)] * 3]
                assert {r["authorization"] for r in seen[3:]} == {"Bearer user-key"}
                assert httpx.get(f"http://127.0.0.1:{recipe.PORT}/health").status_code == 200
                assert engine.requests() == [{"method": "GET", "path": "/health", "status": 200,
                                              "authorization": None}]
            finally:
                assert stop_engine(container, stop) == -signal.SIGTERM
            launched.append(container.engine.args)  # type: ignore[attr-defined]
    args = [parse_sglang(argv) for argv in launched]
    assert all((a.host, a.port, a.api_key) == ("0.0.0.0", engine.port, "user-key") for a in args)
    keys = [a.admin_api_key for a in args]
    assert len(set(keys)) == 2 and all(key and len(key) >= 32 for key in keys)


def test_sglang_container_start_fails_when_the_engine_exits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that exits while loading is one clear error, not a wait to the timeout."""
    monkeypatch.setenv("MLS_API_KEY", "user-key")
    with sglang_standin(monkeypatch, tmp_path, exit_code=3) as engine:
        recipe = sglang_recipe_on(engine.port, tmp_path, STARTUP_TIMEOUT=60)  # bounds a failure
        container, start, _stop = container_methods(recipe)
        with pytest.raises(RuntimeError, match=r"SGLang exited with code 3 before http://"):
            start(container)


def test_sglang_container_start_times_out_when_the_engine_never_gets_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/health answers 503 forever: the start ends at STARTUP_TIMEOUT, with no warm-up sent."""
    monkeypatch.setenv("MLS_API_KEY", "user-key")
    with sglang_standin(monkeypatch, tmp_path, health="never") as engine:
        recipe = sglang_recipe_on(engine.port, tmp_path, STARTUP_TIMEOUT=1, RETRY_INTERVAL=1)
        container, start, stop = container_methods(recipe)
        try:
            with pytest.raises(TimeoutError, match="/health did not answer 200 within 1 seconds"):
                start(container)
        finally:
            assert stop_engine(container, stop) == -signal.SIGTERM
        seen = engine.requests()
        assert seen and {(r["path"], r["status"]) for r in seen} == {("/health", 503)}


# --- the throughput recipe: its code on real vLLM LLM, its arithmetic --------------------------


def test_throughput_summary_arithmetic() -> None:
    r = load_recipe(recipe_path("qwen3_throughput"))
    batches = [{"requests": 10, "input_tokens": 1000, "output_tokens": 100, "seconds": 2.0},
               {"requests": 10, "input_tokens": 1000, "output_tokens": 100, "seconds": 3.0}]
    report = r.summarize(batches, price_per_hour=3.6, n_gpu=1)
    assert report["total_tokens_per_s"] == pytest.approx(2200 / 5)
    assert report["output_tokens_per_s"] == pytest.approx(200 / 5)
    # 5 GPU-seconds at $3.60/h = $0.005 for 200 output tokens -> $25 per million
    assert report["usd_per_million_output_tokens"] == pytest.approx(25.0)
    assert report["usd_per_million_total_tokens"] == pytest.approx(0.005 / 2200 * 1e6)


def test_throughput_report_counts_startup_once_per_worker() -> None:
    r = load_recipe(recipe_path("qwen3_throughput"))
    batch = {"requests": 10, "input_tokens": 1000, "output_tokens": 100, "seconds": 1.0,
             "init_seconds": 30.0, "warmup_seconds": 2.0}
    batches = [{**batch, "worker": "a"}, {**batch, "worker": "a"}, {**batch, "worker": "b"}]
    lines = r.report_lines(batches, wall_seconds=40.0)
    assert lines[0] == "30 requests, 3000 input + 300 output tokens, 40 s wall clock"
    assert lines[1] == "per GPU: 1,000 input, 100 output, 1,100 total tokens/s"
    assert lines[2].startswith("all 2 workers together: 8 output tokens/s")
    price = r.GPU_PRICE_PER_HOUR
    assert f"${3 / 3600 * price / 300 * 1e6:.3f} per million output tokens" in lines[3]
    # 3 s generating + 2 x 32 s start-up, billed
    assert lines[4] == (f"with start-up (64 s over 2 workers): "
                        f"${67 / 3600 * price / 300 * 1e6:.3f} per million output tokens")


@pytest.mark.engine
def test_throughput_recipe_labels_sample_records_on_vllm_llm(tmp_path: Path) -> None:
    """The recipe's own `label_batch` on the embedded SmolLM2 through vLLM's CPU build: every
    answer is one of LABELS (the structured-output choice), the batch's file holds one row per
    record, those ids count as done, and the counts and cost come from the outputs."""
    from modal_llm_serving.local.embedded_model import ensure_default_model

    n, out, results = 3, tmp_path / "result.json", tmp_path / "results"
    # the CPU environment `mls local` starts vLLM with: here the engine core runs inside this
    # process (VLLM_ENABLE_V1_MULTIPROCESSING=0), half the CPU time of a spawned one
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1", **{e.variable: e.value for e in CPU_ENVIRONMENT}}
    done = subprocess.run(
        [sys.executable, str(HERE / "recipe_throughput_child.py"), str(ensure_default_model()),
         str(results), str(out), str(n)],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    ids = [record["id"] for record in result["records"]]
    assert len(ids) == n and [row["id"] for row in result["rows"]] == ids
    assert all(row["label"] in result["labels"] for row in result["rows"]), result["rows"]
    assert [json.loads(line) for line in result["written"].splitlines()] == result["rows"]
    assert result["done"] == sorted(ids)
    stats, summary = result["stats"], result["summary"]
    assert stats["requests"] == n and stats["input_tokens"] > 0 and stats["output_tokens"] >= n
    assert summary["total_tokens_per_s"] == pytest.approx(
        (stats["input_tokens"] + stats["output_tokens"]) / stats["seconds"])
    assert result["report"][0].startswith(
        f"{n} requests, {stats['input_tokens']} input + {stats['output_tokens']} output tokens")
    assert "per million tokens (input + output)" in result["report"][3]


def test_recipes_pass_mls_check() -> None:
    """The recipes are the reference apps: the serving rules of `mls check` find nothing."""
    paths = [str(recipe_path(name)) for name in RECIPES]
    result = CliRunner().invoke(cli, ["check", *paths])
    assert result.exit_code == 0, result.output


def test_live_tests_skip_without_credentials(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from ..live.conftest import modal_credentials_present

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    config = tmp_path / "modal.toml"
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    assert not modal_credentials_present()  # no file
    config.write_text('[default]\nserver_url = "https://example.invalid"\n')
    assert not modal_credentials_present()  # a profile without a token
    config.write_text('[work]\ntoken_id = "ak-x"\ntoken_secret = "as-y"\n')
    assert modal_credentials_present()
    config.unlink()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-y")
    assert modal_credentials_present()




# --- the Server form (vllm_server.py): its smoke client, proxy auth, 503 ------------------------


@pytest.mark.engine
def test_server_recipe_smoke_passes_against_a_real_server(
        tiny_server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path("vllm_server"))
    recipe.run_smoke(tiny_server.base_url, api_key=TINY_API_KEY, model="tiny",
                     proxy_auth=False, ready_timeout=30)
    assert "smoke test passed" in capsys.readouterr().out


def test_server_smoke_sends_each_header_to_its_layer_and_retries_503(
        scaling_up_server: ScalingUp, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every smoke request: the proxy token as Modal-Key/Modal-Secret, vLLM's key as the bearer,
    one Modal-Session-ID; 503 (no live replica) retried on each step; the dev endpoint 404s."""
    import urllib.error

    url, seen, script, scripts = scaling_up_server
    recipe = load_recipe(recipe_path("vllm_server"))
    monkeypatch.setattr(recipe, "RETRY_INTERVAL", 0)  # the server answers at once
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-test")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", "ws-test")
    script += [503, 503]  # a Server's container still starting
    scripts |= {"/v1/models": [503], "/v1/chat/completions": [503, 503]}
    recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)
    out = capsys.readouterr().out
    assert "dev endpoints: hidden (404)" in out and "smoke test passed" in out
    paths = [path for path, _ in seen]
    assert paths.count("/health") == 3 and paths.count("/v1/models") == 2
    assert paths.count("/v1/chat/completions") == 4  # one chat, one stream, each after a 503
    assert paths[-1] == "/sleep"
    for _, headers in seen:
        assert (headers["Modal-Key"], headers["Modal-Secret"]) == ("wk-test", "ws-test")
        assert headers["Authorization"] == "Bearer k"  # vLLM's key, never the proxy token
    assert len({headers["Modal-Session-ID"] for _, headers in seen}) == 1
    # bounded: 503 past the bound fails, and other errors (proxy auth refused) never retry
    scripts["/v1/models"] = [503] * 3
    with pytest.raises(urllib.error.HTTPError, match="503"):
        recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60, retry_for=0)
    script += [401]
    with pytest.raises(urllib.error.HTTPError, match="401"):
        recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)


def test_proxy_token_and_engine_key_reach_different_readers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from the pinned SDK: Modal's proxy takes a proxy token as Modal-Key/Modal-Secret or
    as `Authorization: Bearer wk-….ws-…`; vLLM's middleware reads only Authorization. The recipe
    sends the token in the first form, so the bearer stays vLLM's and both locks pass."""
    from modal._partial_function import _web_server
    from modal.cli.workspace import PROXY_TOKENS_HELP_TEXT
    from starlette.datastructures import Headers
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    assert "Modal-Key: wk-123\nModal-Secret: ws-456" in PROXY_TOKENS_HELP_TEXT
    assert "Authorization: Bearer wk-123.ws-456" in PROXY_TOKENS_HELP_TEXT  # the colliding form
    assert "Require Modal-Key and Modal-Secret" in inspect.getsource(_web_server)
    vllm_auth = AuthenticationMiddleware(app=None, tokens=["engine-key"])  # type: ignore[arg-type]
    recipe = load_recipe(recipe_path("vllm_server"))
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-123")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", "ws-456")
    sent = recipe.request_headers("engine-key", proxy_auth=True, session_id="s")
    assert (sent["Modal-Key"], sent["Modal-Secret"]) == ("wk-123", "ws-456")
    assert vllm_auth.verify_token(Headers(headers=sent))
    # the bearer form of the proxy token would take vLLM's header: vLLM refuses the request
    collided = {**sent, "Authorization": "Bearer wk-123.ws-456"}
    assert not vllm_auth.verify_token(Headers(headers=collided))


def test_server_recipe_with_the_engine_on_its_port_is_flagged(tmp_path: Path) -> None:
    """One posture: vLLM's dev endpoints behind proxy auth alone are still flagged (MLS009)."""
    from modal_llm_serving.check import check_file

    source = recipe_path("vllm_server").read_text()
    assert source.count("port: int = ENGINE_PORT") == 1
    app = tmp_path / "open_server.py"
    app.write_text(source.replace("port: int = ENGINE_PORT", "port: int = PORT"))
    assert {f.rule.id for f in check_file(app)} == {"MLS009"}


# --- both snapshot recipes with snapshots off: the comparison deploy ---------------------------


SNAPSHOTTING = {r.name: "VLLMServer" if r.proxy_auth else "VLLMColdStart"
                for r in table.RECIPES if r.snapshots}


@pytest.mark.parametrize("name", sorted(SNAPSHOTTING))
def test_snapshot_recipe_imports_and_starts_with_snapshots_off(
        name: str, tmp_path: Path, spy_modal: Callable[[Path], Spied]) -> None:
    """Both settings False: the real SDK accepts the file, and runs start then wake at each start
    (none before a snapshot). The unconditional `snap=True` it replaced is refused."""
    from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags

    from modal_llm_serving.recipes.files import RecipeError
    from modal_llm_serving.recipes.new import render_source

    off = render_source(recipe_path(name).read_text(), {
        "ENABLE_MEMORY_SNAPSHOT": False, "ENABLE_GPU_SNAPSHOT": False,
        "APP_NAME": f"{name}-no-snapshots"}).text
    path = tmp_path / f"{name}_off.py"
    path.write_text(off)
    spied = spy_modal(path)
    assert verify_modal_settings(spied) == PATTERNS[name]
    user_cls = getattr(spied.recipe, SNAPSHOTTING[name])._get_user_cls()
    flags = _PartialFunctionFlags
    assert not _find_partial_methods_for_user_cls(user_cls, flags.ENTER_PRE_SNAPSHOT)
    after = _find_partial_methods_for_user_cls(user_cls, flags.ENTER_POST_SNAPSHOT)
    assert list(after) == ["start_and_sleep", "wake"]
    assert off.count("@modal.enter(snap=ENABLE_MEMORY_SNAPSHOT)") == 1
    path.write_text(off.replace("@modal.enter(snap=ENABLE_MEMORY_SNAPSHOT)",
                                "@modal.enter(snap=True)"))
    with pytest.raises(RecipeError, match="enable_memory_snapshot=True"):
        load_recipe(path, module_name=f"unconditional_{name}")
