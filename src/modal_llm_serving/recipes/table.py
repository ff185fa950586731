"""The recipe table: every recipe the skill ships, declared once, with the settings it takes.

Each row names a recipe file (`skills/modal-llm-serving/scripts/<name>.py`), the plan patterns it
serves, its engine and Modal primitive, and every module-level UPPER_CASE constant it defines:
the constant's type and, where the plan decides its value, the plan attribute that fills it
(`mls new` writes those; the others keep the recipe's own value). `tests/test_recipes.py` proves
each file defines exactly these constants, with these types.

A context length, for example, travels one name per layer: the workload's `context_length`
(`--context-length`) becomes the plan's `max_model_len`, which this table maps to the recipe's
`MAX_MODEL_LEN`, which the recipe passes to its engine (`--max-model-len`, or SGLang's
`--context-length`).

To add a recipe: write its file in the skill's `scripts/`, add its row here; `mls plan` picks it
for the patterns it serves (the first row serving a pattern is that pattern's own recipe).
"""

from __future__ import annotations

import dataclasses
import operator
from types import UnionType
from typing import Any

__all__ = [
    "RECIPES",
    "RECIPE_NAMES",
    "Recipe",
    "Setting",
    "recipe_for",
    "recipe_named",
    "settings_from",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One UPPER_CASE constant of a recipe: its name, its type, the plan attribute that fills it."""

    name: str
    type: type | UnionType
    source: str | None = None  # a plan attribute path ("workload.model"); None: the recipe's own


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe file and what it serves, on which engine and Modal primitive."""

    name: str  # the file's stem
    patterns: tuple[str, ...]  # the plan patterns it serves
    engine: str  # vllm | sglang
    primitive: str | None  # web_server | http_server | app.server; None for a batch job
    settings: tuple[Setting, ...]  # in the order `mls plan` lists them
    proxy_auth: bool = False  # for clients that send Modal proxy-auth headers (the Server form)
    snapshots: bool = False  # GPU memory snapshots: one GPU per container, lean KV reservations

    @property
    def file_name(self) -> str:
        return f"{self.name}.py"


# --- settings the plan fills, in the order it lists them ----------------------------------------

_MODEL = (
    Setting("MODEL_NAME", str, "workload.model"),
    Setting("MODEL_REVISION", str | None, "workload.revision"),  # None only for a local folder
)
_SERVED_NAME = (Setting("SERVED_MODEL_NAME", str, "served_model_name"),)
_ENGINE = (
    Setting("GPU_TYPE", str, "gpu.name"),
    Setting("N_GPU", int, "n_gpu"),
    Setting("REGION", str | None, "region"),
    Setting("MAX_MODEL_LEN", int, "max_model_len"),
    Setting("MAX_NUM_SEQS", int, "max_num_seqs"),
    Setting("GPU_MEMORY_UTILIZATION", float, "gpu_memory_utilization"),
    Setting("KV_CACHE_DTYPE", str, "engine_kv_cache_dtype"),  # in the engine's own word
    Setting("STARTUP_TIMEOUT", int, "startup_timeout_s"),
    Setting("HF_SECRET", str | None, "hf_secret"),
)
_AUTOSCALING = (
    Setting("TARGET_INPUTS", int, "target_inputs"),
    Setting("MIN_CONTAINERS", int, "min_containers"),
    Setting("MAX_CONTAINERS", int, "max_containers"),
    Setting("BUFFER_CONTAINERS", int, "buffer_containers"),
)
_KV_CACHE_GIB = (Setting("KV_CACHE_GIB", int, "kv_cache_gib"),)

# --- constants the recipes keep as they are ------------------------------------------------------

# APP_NAME is not the plan's: `mls new` names the app after the file it writes.
_KEPT = (Setting("MINUTES", int), Setting("HF_CACHE_PATH", str), Setting("APP_NAME", str))
_VLLM = (Setting("VLLM_VERSION", str), Setting("VLLM_CACHE_PATH", str))
_HTTP = (Setting("PORT", int), Setting("API_KEY_SECRET", str), Setting("API_KEY_ENV", str),
         Setting("SCALEDOWN_WINDOW", int))
_FORWARDER = (Setting("ENGINE_PORT", int), Setting("PUBLIC_ROUTES", set),
              Setting("KEYED_ROUTES", set), Setting("HOP_BY_HOP", set))
_SNAPSHOT = (Setting("ENABLE_MEMORY_SNAPSHOT", bool), Setting("ENABLE_GPU_SNAPSHOT", bool))

RECIPES: tuple[Recipe, ...] = (
    Recipe("vllm_online", ("online",), "vllm", "web_server", settings=(
        *_MODEL, *_SERVED_NAME, *_ENGINE, *_AUTOSCALING,
        Setting("MAX_INPUTS", int, "max_inputs"),
        *_KEPT, *_VLLM, *_HTTP, *_FORWARDER)),
    Recipe("vllm_cold_start", ("cold-start",), "vllm", "web_server", snapshots=True, settings=(
        *_MODEL, *_SERVED_NAME, *_ENGINE, *_AUTOSCALING,
        Setting("MAX_INPUTS", int, "max_inputs"), *_KV_CACHE_GIB,
        *_KEPT, *_VLLM, *_HTTP, *_FORWARDER, *_SNAPSHOT)),
    Recipe("sglang_low_latency", ("low-latency",), "sglang", "http_server", settings=(
        *_MODEL, *_SERVED_NAME, *_ENGINE, *_AUTOSCALING,
        Setting("PROXY_REGIONS", list, "proxy_regions"),
        *_KEPT, *_HTTP,
        Setting("SGLANG_VERSION", str), Setting("SGLANG_CACHE_PATH", str),
        Setting("SPECULATIVE_ALGORITHM", str | None),
        Setting("SPECULATIVE_DRAFT_MODEL", str | None),
        Setting("SPECULATIVE_DRAFT_REVISION", str | None),
        Setting("SPECULATIVE_NUM_STEPS", int), Setting("SPECULATIVE_EAGLE_TOPK", int),
        Setting("SPECULATIVE_NUM_DRAFT_TOKENS", int), Setting("EXIT_GRACE_PERIOD", int),
        Setting("RETRY_INTERVAL", int))),
    Recipe("qwen3_throughput", ("throughput",), "vllm", None, settings=(
        *_MODEL, *_ENGINE,  # no server, so no served name and no autoscaling
        Setting("GPU_PRICE_PER_HOUR", float, "gpu.price_per_hour"),  # for tokens per dollar
        Setting("N_CONTAINERS", int, "max_containers"),
        Setting("INPUT_LEN", int, "workload.input_tokens"),
        Setting("OUTPUT_LEN", int, "workload.output_tokens"),
        *_KEPT, *_VLLM,
        Setting("MAX_NUM_BATCHED_TOKENS", int), Setting("BATCH_SIZE", int),
        Setting("TIMEOUT", int), Setting("JOB_TIMEOUT", int),
        # the task: what it labels, how it asks, where the records and results live
        Setting("LABELS", list), Setting("INSTRUCTION", str),
        Setting("CHAT_TEMPLATE_KWARGS", dict), Setting("DATA_PATH", str))),
    # The Server form of the low-latency and cold-start patterns, for proxy-auth clients.
    Recipe("vllm_server", ("low-latency", "cold-start"), "vllm", "app.server", proxy_auth=True,
           snapshots=True, settings=(
               *_MODEL, *_SERVED_NAME, *_ENGINE,
               Setting("ROUTING_REGION", str, "routing_region"),
               Setting("TARGET_CONCURRENCY", int, "target_inputs"),
               Setting("MAX_CONCURRENCY", int, "max_inputs"),
               *_AUTOSCALING[1:], *_KV_CACHE_GIB,
               *_KEPT, *_VLLM, *_HTTP, *_FORWARDER, *_SNAPSHOT,
               Setting("EXIT_GRACE_PERIOD", int), Setting("RETRY_INTERVAL", int))),
    # Several 8-GPU hosts per copy of the model, on Modal's clustered containers: a Server, so
    # its clients send Modal proxy auth, but the pattern's own recipe (`proxy_auth` marks a
    # Server *form* chosen for such clients, with its one-GPU snapshots). The plan picks it when
    # only several hosts hold the model (`plan/cluster.py`): N_GPU is one host's GPUs, the
    # container counts are whole clusters (multiples of N_NODES).
    Recipe("vllm_multi_node", ("multi-node",), "vllm", "app.server", settings=(
               *_MODEL, *_SERVED_NAME, *_ENGINE,
               Setting("N_NODES", int, "layout.nodes"), Setting("RDMA", bool, "rdma"),
               Setting("ENABLE_EXPERT_PARALLEL", bool, "expert_parallel"),
               Setting("MASTER_PORT", int),
               Setting("ROUTING_REGION", str, "routing_region"),
               Setting("TARGET_CONCURRENCY", int, "target_inputs"),
               Setting("MAX_CONCURRENCY", int, "max_inputs"),
               *_AUTOSCALING[1:],
               *_KEPT, *_VLLM, *_HTTP, *_FORWARDER,
               Setting("EXIT_GRACE_PERIOD", int), Setting("RETRY_INTERVAL", int))),
)
RECIPE_NAMES = tuple(recipe.name for recipe in RECIPES)


def recipe_named(name: str) -> Recipe:
    """The row of recipe `name` (the file's stem, with or without `.py`); KeyError if none."""
    stem = name.removesuffix(".py")
    for recipe in RECIPES:
        if recipe.name == stem:
            return recipe
    raise KeyError(name)


def recipe_for(pattern: str, *, proxy_auth: bool = False) -> Recipe:
    """The recipe serving `pattern`: its Server form for proxy-auth clients where it has one,
    else the pattern's own recipe (the first row serving it)."""
    serving = [recipe for recipe in RECIPES if pattern in recipe.patterns]
    return next((r for r in serving if r.proxy_auth == proxy_auth), serving[0])


def settings_from(recipe: Recipe, plan: Any) -> dict[str, Any]:
    """The recipe's constants the plan decides, by name, each read from its plan attribute."""
    return {setting.name: operator.attrgetter(setting.source)(plan)
            for setting in recipe.settings if setting.source is not None}
