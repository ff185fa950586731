"""What an app file asks of Modal and of its engine: its GPUs, the engine's settings, its startup
limits and readiness waits, its per-container concurrency, its Secrets and the other models it
loads, read from its syntax tree.

The startup rules (`startup.py`) judge these against the model's facts; this module only reads
them. A value the checker cannot work out stays UNKNOWN, so a rule can say so rather than guess.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from modal_llm_serving.check.app import HEX, HUB_ID, Definition, argv_options
from modal_llm_serving.check.source import UNKNOWN, Source, dotted, kwarg, line_of
from modal_llm_serving.local.argv import options

__all__ = ["MODAL_DEFAULT_TIMEOUT", "GpuRequest", "Limit", "OtherModel", "Setting",
           "clustered", "concurrency", "engine_command_found", "engine_settings",
           "gpu_requests", "hf_token_provided", "modal_functions", "other_models",
           "readiness_waits", "startup_limit", "whole"]

MODAL_DEFAULT_TIMEOUT = 300  # seconds: a Modal Function's timeout (and startup) when none is set


class Setting(NamedTuple):
    """One engine setting as the app writes it: its value (UNKNOWN if it cannot be worked out),
    the flag or keyword it was written as, and its line."""

    value: Any
    written: str
    line: int


@dataclasses.dataclass(frozen=True)
class GpuRequest:
    """One `gpu=` of a Modal Function, class or Server: the GPU type and how many per container."""

    text: str  # as written, e.g. "H100:2"
    type: str  # "H100"
    count: int
    line: int
    definition: Definition
    call: ast.Call  # the decorator call that asks for it
    nodes: int = 1  # containers per copy of the model: @modal.clustered(size=N), else 1
    cluster: ast.Call | None = None  # the @modal.clustered(...) call, where there is one


class Limit(NamedTuple):
    """How long Modal lets a container start (seconds, or UNKNOWN), and where that is set."""

    seconds: Any
    written: str
    line: int


class OtherModel(NamedTuple):
    """A model the app loads besides its main one, and whether it is pinned to a commit."""

    kind: str  # "speculative draft model", "LoRA adapter", "download"
    name: str
    pinned: bool
    line: int


# The settings the startup rules read, by the engines' names for them (flags with underscores,
# `LLM(...)` and SGLang `Engine(...)` keywords), each mapped to the one name used here (vLLM's).
_SETTINGS = {
    "tensor_parallel_size": "tensor_parallel_size", "tp": "tensor_parallel_size",
    "tp_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size", "pp_size": "pipeline_parallel_size",
    "data_parallel_size": "data_parallel_size", "dp": "data_parallel_size",
    "nnodes": "nnodes",  # vLLM's and SGLang's multi-node flag alike
    "dp_size": "data_parallel_size", "enable_dp_attention": "enable_dp_attention",
    "max_model_len": "max_model_len", "context_length": "max_model_len",
    "max_num_seqs": "max_num_seqs", "max_running_requests": "max_num_seqs",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "mem_fraction_static": "gpu_memory_utilization",
    "quantization": "quantization", "kv_cache_dtype": "kv_cache_dtype",
    # overrides of the model's config (rope scaling can lengthen its context)
    "rope_scaling": "overrides", "hf_overrides": "overrides",
    "json_model_override_args": "overrides",
}
_ENGINE_CALLS = ("LLM", "sgl.Engine", "sglang.Engine")  # vLLM's and SGLang's offline engines


def whole(value: Any) -> int | None:
    """`value` as a whole number ("8192" and 8192.0 too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() else None


def modal_functions(src: Source) -> Iterator[tuple[Definition, ast.Call]]:
    """(definition, its `@app.function(...)`, `@app.cls(...)` or `@app.server(...)` call)."""
    for definition, decorator in src.decorators("function", "cls", "server"):
        if isinstance(decorator, ast.Call):
            assert isinstance(definition, Definition)
            yield definition, decorator


def gpu_requests(src: Source) -> tuple[list[GpuRequest], list[str]]:
    """Every GPU the app's functions ask for (a list of GPUs: each one Modal may give), and the
    `gpu=` values the checker cannot work out, as written."""
    found: list[GpuRequest] = []
    unknown: list[str] = []
    for definition, call in modal_functions(src):
        node = kwarg(call, "gpu")
        value = src.resolve(node)
        if node is None or value is None:
            continue  # a CPU function
        for spec in value if isinstance(value, list) else [value]:
            kind, _, count = spec.partition(":") if isinstance(spec, str) else ("", "", "")
            number = whole(count or "1")
            if not kind or number is None or number < 1:
                unknown.append(f"gpu={ast.unparse(node)}")
                continue
            cluster = clustered(src, definition)
            nodes = whole(src.resolve(kwarg(cluster, "size"))) if cluster else 1
            found.append(GpuRequest(spec, kind, number, line_of(call), definition, call,
                                    nodes=nodes if nodes and nodes > 0 else 1, cluster=cluster))
    return found, unknown


def clustered(src: Source, definition: Definition) -> ast.Call | None:
    """The `@modal.clustered(size=..., rdma=...)` call on `definition` (the SDK's public name and
    the deprecated `modal.experimental.clustered` alike), or None."""
    for decorated, decorator in src.decorators("clustered"):
        if decorated is definition and isinstance(decorator, ast.Call):
            return decorator
    return None


def _spread(src: Source, node: ast.expr) -> Any:
    """The mapping `**node` passes: a constant, or the dict literal a function of the file
    returns (`LLM(**llm_kwargs())`, with its parameters at their defaults)."""
    value = src.resolve(node)
    if isinstance(value, dict) or not (isinstance(node, ast.Call)
                                       and isinstance(node.func, ast.Name)):
        return value
    for stmt in src.tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == node.func.id:
            returns = [n.value for n in ast.walk(stmt) if isinstance(n, ast.Return)]
            if len(returns) == 1 and isinstance(returns[0], ast.Dict):
                return src.resolve(returns[0])
    return UNKNOWN


def _call_settings(src: Source, call: ast.Call) -> dict[str, Any]:
    """The keyword arguments of an `LLM(...)` call, spread mappings included."""
    found: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg:
            found[keyword.arg] = src.resolve(keyword.value)
        elif isinstance(spread := _spread(src, keyword.value), dict):
            found.update({str(key): value for key, value in spread.items()})
    return found


def engine_settings(src: Source) -> dict[str, list[Setting]]:
    """The engine settings the startup rules read, from argv lists (vLLM's and SGLang's flags,
    vLLM's `-tp`) and `LLM(...)` / `Engine(...)` keywords, each where the app writes it."""
    found: dict[str, list[Setting]] = {}
    for sequence, option in argv_options(src):
        if name := _SETTINGS.get(option.setting):
            found.setdefault(name, []).append(Setting(option.value, option.flag,
                                                      line_of(sequence)))
    for sequence in src.sequences:  # vLLM's short form, which the long-option reader skips
        assert isinstance(sequence, ast.List | ast.Tuple)
        words = sequence.elts
        for index, word in enumerate(words[:-1]):
            if isinstance(word, ast.Constant) and word.value == "-tp":
                found.setdefault("tensor_parallel_size", []).append(
                    Setting(src.resolve(words[index + 1]), "-tp", line_of(sequence)))
    for call in src.calls_named(*_ENGINE_CALLS):
        for key, value in _call_settings(src, call).items():
            if name := _SETTINGS.get(key):
                found.setdefault(name, []).append(Setting(value, f"{dotted(call.func)}({key}=)",
                                                          line_of(call)))
    return found


def engine_command_found(src: Source) -> bool:
    """Whether the file starts its engine from something the checker reads: an argv list
    (`vllm serve ...`, `python -m sglang.launch_server ...`) or an `LLM(...)` call."""
    if any(True for _ in src.calls_named(*_ENGINE_CALLS)):
        return True
    for sequence in src.sequences:
        assert isinstance(sequence, ast.List | ast.Tuple)
        words = [src.resolve(element) for element in sequence.elts]
        if words[:2] == ["vllm", "serve"] or "sglang.launch_server" in words:
            return True
    return False


def startup_limit(src: Source, definition: Definition, call: ast.Call) -> Limit:
    """How long Modal lets this function's container start: its `startup_timeout=`, else its
    `timeout=`, else Modal's default; a `@modal.web_server(startup_timeout=)` on the same
    function may give it longer (the engine may load in the body or after it returns)."""
    limit = Limit(MODAL_DEFAULT_TIMEOUT, "Modal's default timeout", line_of(call))
    for name in ("startup_timeout", "timeout"):
        if (node := kwarg(call, name)) is not None:
            limit = Limit(src.resolve(node), f"{name}={ast.unparse(node)}", line_of(call))
            break
    for decorator in definition.decorator_list:
        if (isinstance(decorator, ast.Call) and dotted(decorator.func).endswith("web_server")
                and (node := kwarg(decorator, "startup_timeout")) is not None):
            seconds = src.resolve(node)
            if isinstance(seconds, int | float) and (not isinstance(limit.seconds, int | float)
                                                     or seconds > limit.seconds):
                limit = Limit(seconds, f"web_server startup_timeout={ast.unparse(node)}",
                              line_of(decorator))
    return limit


_WAIT_CALL = re.compile(r"wait|ready|health", re.IGNORECASE)
_WAIT_CONSTANT = re.compile(r"(READY|READINESS|HEALTH)\w*TIMEOUT|TIMEOUT\w*(READY|HEALTH)")


def readiness_waits(src: Source, definition: Definition) -> list[tuple[float, str, int]]:
    """(seconds, as written, line) of each readiness wait the function or class itself makes:
    a `wait_until_ready(..., timeout=N)`-like call, or a READY_TIMEOUT-like constant it uses."""
    found: list[tuple[float, str, int]] = []
    for stmt in definition.body:
        for node in ast.walk(stmt):
            if (isinstance(node, ast.Call) and _WAIT_CALL.search(dotted(node.func).split(".")[-1])
                    and (timeout := kwarg(node, "timeout")) is not None):
                seconds = src.resolve(timeout)
                written = f"{dotted(node.func)}(timeout={ast.unparse(timeout)})"
            elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                  and _WAIT_CONSTANT.search(node.id) and node.id in src.constants):
                seconds, written = src.constants[node.id], node.id
            else:
                continue
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                found.append((float(seconds), written, line_of(node)))
    return found


def concurrency(src: Source) -> list[Setting]:
    """The most requests Modal sends one container, per decorator: `@modal.concurrent`'s
    max_inputs (else target_inputs), a Server's max_concurrency (else target_concurrency)."""
    found: list[Setting] = []
    calls = [d for _, d in src.decorators("concurrent") if isinstance(d, ast.Call)]
    calls += [call for definition, call in modal_functions(src)
              if dotted(call.func).split(".")[-1] == "server"]
    for call in calls:
        for name in ("max_inputs", "max_concurrency", "target_inputs", "target_concurrency"):
            if (node := kwarg(call, name)) is not None:
                found.append(Setting(src.resolve(node), f"{name}={ast.unparse(node)}",
                                     line_of(call)))
                break
    return found


_HF_SECRET_NAME = re.compile(r"hugging|(^|[^a-z])hf([^a-z]|$)", re.IGNORECASE)
_HF_TOKEN_KEYS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def _secret_names(src: Source) -> set[str]:
    """Names of the Secrets the file reads with `modal.Secret.from_name`, also in a list
    comprehension over a tuple of names (`[from_name(n) for n in (A, B) if n]`)."""
    names: set[str] = set()
    for call in src.calls_named("Secret.from_name"):
        value = src.resolve(call.args[0] if call.args else kwarg(call, "name"))
        if isinstance(value, str):
            names.add(value)
    for node in ast.walk(src.tree):
        if not (isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp)
                and isinstance(node.elt, ast.Call)
                and dotted(node.elt.func).endswith("Secret.from_name") and node.elt.args
                and isinstance(argument := node.elt.args[0], ast.Name)):
            continue
        for generator in node.generators:
            if isinstance(generator.target, ast.Name) and generator.target.id == argument.id:
                values = src.resolve(generator.iter)
                names |= {v for v in values if isinstance(v, str)} if isinstance(
                    values, list) else set()
    return names


def hf_token_provided(src: Source) -> bool:
    """Whether a modal.Secret of the file can give the container HF_TOKEN: one named for
    Hugging Face (the recipes' HF_SECRET, e.g. "huggingface"), one built with HF_TOKEN in it,
    or a .env file's (whose contents the checker cannot see)."""
    names = _secret_names(src)
    if isinstance(src.constants.get("HF_SECRET"), str) and src.constants["HF_SECRET"] in names:
        return True
    if any(_HF_SECRET_NAME.search(name) for name in names):
        return True
    if any(True for _ in src.calls_named("Secret.from_dotenv")):
        return True
    for call in src.calls_named("Secret.from_dict", "Secret.from_local_environ"):
        given = src.resolve(call.args[0] if call.args else None)
        if isinstance(given, dict | list) and any(key in given for key in _HF_TOKEN_KEYS):
            return True
    return False


def _hub_id(value: Any) -> bool:
    return isinstance(value, str) and bool(HUB_ID.match(value)) and not value.startswith(".")


def _speculative(src: Source, main: str) -> Iterator[OtherModel]:
    """Draft models: vLLM's --speculative-config JSON (or LLM(speculative_config=)) with a
    "model" and its "revision", SGLang's --speculative-draft-model-path and -revision, vLLM's
    older --speculative-model (which has no revision: only a local folder is pinned)."""
    configs: list[tuple[Any, int]] = []
    for sequence in src.sequences:
        assert isinstance(sequence, ast.List | ast.Tuple)
        flags = {o.flag: o for o in options([src.resolve(e) for e in sequence.elts])}
        if (option := flags.get("--speculative-config")) and option.end - option.start == 2:
            node = sequence.elts[option.start + 1]
            if isinstance(node, ast.Call) and dotted(node.func).endswith("dumps") and node.args:
                configs.append((src.resolve(node.args[0]), line_of(sequence)))
            else:
                configs.append((option.value, line_of(sequence)))
        for flag in ("--speculative-draft-model-path", "--speculative-model"):
            if (option := flags.get(flag)) and _hub_id(option.value) and option.value != main:
                revision = flags.get("--speculative-draft-model-revision")
                pinned = revision is not None and isinstance(revision.value, str) and bool(
                    HEX.match(revision.value))
                yield OtherModel("speculative draft model", str(option.value), pinned,
                                 line_of(sequence))
    for call in src.calls_named(*_ENGINE_CALLS):
        if "speculative_config" in (found := _call_settings(src, call)):
            configs.append((found["speculative_config"], line_of(call)))
    for config, line in configs:
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except ValueError:
                continue
        if isinstance(config, dict) and _hub_id(config.get("model")) and config["model"] != main:
            revision = config.get("revision")
            yield OtherModel("speculative draft model", config["model"],
                             isinstance(revision, str) and bool(HEX.match(revision)), line)


def _lora(src: Source) -> Iterator[OtherModel]:
    """LoRA adapters from the Hub: vLLM's --lora-modules name=repo (or its JSON form), SGLang's
    --lora-paths, `LoRARequest(name, id, repo)`. Neither engine takes a revision for them."""
    for sequence in src.sequences:
        assert isinstance(sequence, ast.List | ast.Tuple)
        words = [src.resolve(element) for element in sequence.elts]
        taking = False
        for word in words:
            if isinstance(word, str) and word.startswith("-"):
                flag, _, inline = word.partition("=")
                taking = flag in ("--lora-modules", "--lora-paths")
                word = inline if taking and inline else None
            if not (taking and isinstance(word, str)):
                continue
            path: Any = word.partition("=")[2] or word
            if word.startswith("{"):
                try:
                    path = json.loads(word).get("path")
                except (ValueError, AttributeError):
                    continue
            if _hub_id(path):
                yield OtherModel("LoRA adapter", path, False, line_of(sequence))
    for call in src.calls_named("LoRARequest"):
        node = kwarg(call, "lora_path") or kwarg(call, "lora_local_path") or (
            call.args[2] if len(call.args) > 2 else None)
        if _hub_id(path := src.resolve(node)):
            yield OtherModel("LoRA adapter", path, False, line_of(call))


def other_models(src: Source, main: str | None) -> list[OtherModel]:
    """Every model the file loads besides `main` (its MODEL_NAME): speculative drafts, LoRA
    adapters, and other repos it downloads (snapshot_download, hf_hub_download)."""
    main = main or ""
    found = [*_speculative(src, main), *_lora(src)]
    for call in src.calls_named("snapshot_download", "hf_hub_download"):
        repo = src.resolve(kwarg(call, "repo_id") or (call.args[0] if call.args else None))
        if _hub_id(repo) and str(repo).lower() != main.lower():
            revision = src.resolve(kwarg(call, "revision"))
            found.append(OtherModel("download", repo, isinstance(revision, str)
                                    and bool(HEX.match(revision)), line_of(call)))
    return found
