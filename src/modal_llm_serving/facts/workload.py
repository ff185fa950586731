"""The workload: what the user needs served, from a TOML file or command-line flags.

A workload names the model (a Hub id with a pinned revision, or a local checkpoint folder), its
precision, the context length, the expected concurrency, the latency SLOs, a throughput target,
the region, how long a cold start may take, a budget and, optionally, the goal. `load_workload`
reads a TOML file, `workload_from_mapping` validates any mapping (file contents merged with flags);
every error names the field and says what would be valid.

>>> w = workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "9c925d6", "concurrency": 8})
>>> w.goal is None, w.concurrency
(True, 8)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import UsageError, WorkloadError
from modal_llm_serving.files import read_text_limited

__all__ = [
    "BROAD_REGIONS",
    "GOALS",
    "NARROW_REGIONS",
    "OUT_OF_SCOPE_TASKS",
    "PRECISIONS",
    "Workload",
    "load_workload",
    "workload_from_mapping",
]

GOALS = ("online", "cold-start", "low-latency", "throughput")
# bytes per parameter of the stored weights; mxfp4 packs 4-bit values with a shared scale
PRECISIONS: dict[str, float] = {
    "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "mxfp4": 0.53,
}
KV_CACHE_DTYPES = ("auto", "fp8")
BROAD_REGIONS = ("us", "eu", "ap", "uk", "ca", "me", "sa", "af", "mx")
NARROW_REGIONS = ("us-east", "us-central", "us-south", "us-west", "eu-west", "eu-north",
                  "eu-south", "ap-northeast", "ap-southeast", "ap-south", "ap-melbourne", "jp",
                  "au")
# Requests this tool does not serve, and where to go instead (the skill's sibling boundaries).
OUT_OF_SCOPE_TASKS: dict[str, str] = {
    "fine-tuning": "training or post-training is not serving: use the modal-finetuning skill",
    "training": "training or post-training is not serving: use the modal-finetuning skill",
    "batch-jobs": ("detached job orchestration (.map/.spawn, retries) is not serving: use the "
                   "modal-batch-processing skill"),
    "sandbox": "isolated interactive execution is not serving: use the modal-sandbox skill",
    "embeddings": ("embeddings are not text generation; this tool plans vLLM/SGLang text "
                   "generation only (serve embedding models with a dedicated embedding server)"),
    "diffusion": "diffusion (image/video generation) is out of scope: this tool plans LLM "
                 "text generation only",
    "hosted-api": "calling a hosted API needs no GPU plan: this tool plans self-hosted models",
}
TASKS = ("text-generation", *OUT_OF_SCOPE_TASKS)
_HEX_REVISION = re.compile(r"^[0-9a-f]{7,40}$")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One validated workload; `None` means "not given" (the planner picks and explains)."""

    model: str  # Hub id (org/name) or a local checkpoint folder
    revision: str | None = None  # commit hash; required for a Hub id
    precision: str | None = None  # weights: bf16, fp16, fp8, int8, int4, mxfp4; default: native
    kv_cache_dtype: str = "auto"  # "fp8" halves the KV cache on cards with fp8 support
    # max tokens per sequence (prompt + output): the plan's max_model_len, a recipe's MAX_MODEL_LEN
    context_length: int | None = None
    input_tokens: int = 1000  # a typical prompt
    output_tokens: int = 250  # a typical completion
    concurrency: int = 8  # requests in flight at peak, across all replicas
    ttft_ms: float | None = None  # time-to-first-token SLO
    tpot_ms: float | None = None  # time-per-output-token SLO (after the first)
    throughput_tok_s: float | None = None  # output tokens/s wanted across all replicas
    region: str | None = None  # Modal region to pin; default: anywhere (cheapest)
    cold_start_s: float | None = None  # longest acceptable cold start, seconds
    budget_per_hour: float | None = None  # USD per hour at peak
    goal: str | None = None  # online | cold-start | low-latency | throughput; None: inferred
    offline: bool = False  # batch inference with no per-request HTTP
    task: str = "text-generation"
    gpu: str | None = None  # force one GPU type from the catalog
    max_gpus: int = 8  # per container (tensor parallelism)
    served_model_name: str | None = None
    allow_precision_fallback: bool = False  # plan bf16 onto GPUs without it (they run fp16)
    proxy_auth: bool = False  # clients can send Modal proxy-auth headers (a backend, no browser)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_local_path(self) -> bool:
        return looks_like_path(self.model)


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


_FIELDS = {field.name: field for field in dataclasses.fields(Workload)}

# Upper bounds past which a number is a typo, not a workload: beyond the longest context any
# model has, and beyond what Modal's largest accounts run at once (thousands of GPUs).
LIMITS: dict[str, float] = {
    "context_length": 10_485_760, "input_tokens": 10_485_760, "output_tokens": 10_485_760,
    "concurrency": 1_000_000, "ttft_ms": 3_600_000, "tpot_ms": 3_600_000,
    "throughput_tok_s": 1e9, "cold_start_s": 86_400, "budget_per_hour": 1e7,
}


def _fail(field: str, why: str) -> WorkloadError:
    return WorkloadError(f"workload field '{field}': {why}", field=field)


def _number(field: str, value: object, *, integer: bool, minimum: float,
            strictly_above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        kind = "a whole number" if integer else "a finite number"
        raise _fail(field, f"must be {kind}, got {value!r}")
    if value > LIMITS.get(field, math.inf):
        raise _fail(field, f"{value:g} is beyond what any Modal deployment could serve (at most "
                    f"{LIMITS[field]:g}); check the number")
    if integer and isinstance(value, float) and not value.is_integer():
        raise _fail(field, f"must be a whole number, got {value!r}")
    if value < minimum or (strictly_above and value == minimum):
        bound = f"greater than {minimum:g}" if strictly_above else f"at least {minimum:g}"
        raise _fail(field, f"must be {bound}, got {value!r}")
    return value


def _choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _fail(field, f"{value!r} is not one of: {', '.join(choices)}{hint}")
    return value


def workload_from_mapping(data: Mapping[str, Any]) -> Workload:
    """Validate `data` (TOML contents and/or flags; `None` values are ignored) into a Workload."""
    values = {key: value for key, value in data.items() if value is not None}
    for key in values:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise _fail(key, f"unknown field{hint} (known: {', '.join(_FIELDS)})")
    if "model" not in values or not isinstance(values["model"], str) or not values["model"]:
        raise _fail("model", "required: a Hub id like 'Qwen/Qwen3-8B' (with 'revision') or a "
                    "local checkpoint folder")
    out: dict[str, Any] = {"model": values["model"]}
    task = _choice("task", values.get("task", "text-generation"), TASKS)
    out["task"] = task
    for name in ("revision", "served_model_name", "gpu"):
        if name in values:
            if not isinstance(values[name], str) or not values[name].strip():
                raise _fail(name, f"must be a non-empty string, got {values[name]!r}")
            out[name] = values[name].strip()
    if "precision" in values:
        out["precision"] = _choice("precision", values["precision"], tuple(PRECISIONS))
    if "kv_cache_dtype" in values:
        out["kv_cache_dtype"] = _choice("kv_cache_dtype", values["kv_cache_dtype"],
                                        KV_CACHE_DTYPES)
    if "goal" in values:
        out["goal"] = _choice("goal", values["goal"], GOALS)
    if "region" in values:
        out["region"] = _choice("region", values["region"], BROAD_REGIONS + NARROW_REGIONS)
    for name, minimum in (("context_length", 16), ("input_tokens", 1), ("output_tokens", 1),
                          ("concurrency", 1), ("max_gpus", 1)):
        if name in values:
            out[name] = int(_number(name, values[name], integer=True, minimum=minimum))
    for name in ("ttft_ms", "tpot_ms", "throughput_tok_s", "budget_per_hour"):
        if name in values:
            out[name] = float(_number(name, values[name], integer=False, minimum=0,
                                      strictly_above=True))
    if "cold_start_s" in values:
        out["cold_start_s"] = float(_number("cold_start_s", values["cold_start_s"],
                                            integer=False, minimum=0))
    for name in ("offline", "allow_precision_fallback", "proxy_auth"):
        if name in values:
            if not isinstance(values[name], bool):
                raise _fail(name, f"must be true or false, got {values[name]!r}")
            out[name] = values[name]
    workload = Workload(**out)
    _cross_check(workload)
    return workload


def _cross_check(w: Workload) -> None:
    if w.max_gpus > 8:
        raise _fail("max_gpus", f"{w.max_gpus} GPUs in one container: Modal gives at most 8; "
                    "past that you need multi-node (modal.experimental.clustered)")
    if w.max_gpus & (w.max_gpus - 1):
        raise _fail("max_gpus", f"{w.max_gpus} is not a power of two (tensor parallelism "
                    "splits attention heads evenly): use 1, 2, 4 or 8")
    if w.context_length is not None and w.input_tokens + w.output_tokens > w.context_length:
        raise _fail("context_length", f"{w.context_length} is shorter than a typical request "
                    f"(input_tokens {w.input_tokens} + output_tokens {w.output_tokens}); raise "
                    "it or shorten the requests")
    if w.task == "text-generation" and not w.is_local_path:
        if "/" not in w.model:
            raise _fail("model", f"{w.model!r} is neither an existing local folder nor a Hub id "
                        "of the form 'org/name'")
        if w.revision is None:
            raise _fail("revision", f"required for the Hub model {w.model!r}: pin a commit "
                        "hash (the 'Files and versions' tab on the Hub, or `hf download` output) "
                        "so a push to the repo cannot change what you serve")
        if not _HEX_REVISION.match(w.revision):
            raise _fail("revision", f"{w.revision!r} is a branch or tag, which can move: pin a "
                        "commit hash (7-40 hex characters)")
    if w.goal == "throughput" and (w.ttft_ms is not None or w.tpot_ms is not None):
        raise _fail("goal", "'throughput' runs offline batches with no per-request latency, "
                    "so ttft_ms/tpot_ms cannot apply: drop them, or choose 'online' or "
                    "'low-latency'")
    if w.offline and w.goal not in (None, "throughput"):
        raise _fail("offline", f"offline work has no HTTP server, but goal is {w.goal!r}: "
                    "use goal = 'throughput' or drop offline")


TOML_LIMIT_BYTES = 2**20  # a workload or GPU catalog is a few hundred bytes


def read_toml(path: Path, what: str, *,
              error: Callable[[str], UsageError] = UsageError) -> dict[str, Any]:
    """A TOML file's tables (workload files, GPU catalogs), or `error` with one line saying why
    not: unreadable, not a regular file (/dev/zero), too large, not UTF-8, not valid TOML (or
    nested past what the parser takes)."""
    try:
        text = read_text_limited(path, limit=TOML_LIMIT_BYTES, what=what)
    except UsageError as exc:
        raise error(str(exc)) from None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise error(f"{what} {path} is not valid TOML: {exc or 'nested too deeply'}") from None


def load_workload(path: Path, *, overrides: Mapping[str, Any] | None = None) -> Workload:
    """Read a workload TOML file (top-level keys = Workload fields); `overrides` win."""
    data = read_toml(path, "workload file",
                     error=lambda message: WorkloadError(message, field="file"))
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return workload_from_mapping(merged)


def parse_assignments(assignments: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs (VALUE in TOML syntax; a bare word is a string) into a mapping."""
    out: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise WorkloadError(f"--set {item!r}: write FIELD=VALUE, e.g. --set input_tokens=2000",
                                field=name or "set")
        try:
            out[name] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            out[name] = raw.strip()
    return out


def workload_from_inputs(path: Path | None, *, flags: Mapping[str, Any],
                         assignments: tuple[str, ...] | list[str] = ()) -> Workload:
    """A workload from an optional TOML file, then `--set` pairs, then flags (the last win)."""
    overrides = {**parse_assignments(assignments),
                 **{k: v for k, v in flags.items() if v is not None and v is not False}}
    if path is not None:
        return load_workload(path, overrides=overrides)
    return workload_from_mapping(overrides)
