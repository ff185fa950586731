"""Rules on whether the app can start: tensor parallelism against its GPUs and heads (MLS022),
weights and one sequence against GPU memory (MLS023), context length against the model's
positions (MLS024), precision against the GPU (MLS025), startup timeouts (MLS026), Modal's
concurrency against the engine's batch (MLS027), a token for a gated model (MLS028), and pinned
revisions for every other model the app loads (MLS029).

The app's own settings (`settings.py`) are judged against the model's facts, read by the
planner's `model_facts` at the file's MODEL_NAME and MODEL_REVISION, with the planner's formulas
(`plan/sizing.py`) and the GPU catalog, so a file `mls new` writes passes. Each finding names the
fact and its source (the Hub at a commit, or the built-in catalog). A fact the checker cannot
have (an unknown model offline, a GPU the catalog lacks, a value it cannot work out) turns off
only the rules that need it, and `startup_note` says so in one line.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

from modal_llm_serving.check.app import HEX, Model, engines, model_reference
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.settings import (
    GpuRequest,
    Setting,
    concurrency,
    engine_command_found,
    engine_settings,
    gpu_requests,
    hf_token_provided,
    other_models,
    readiness_waits,
    startup_limit,
    whole,
)
from modal_llm_serving.check.source import UNKNOWN, Source, kwarg, read_python_source
from modal_llm_serving.errors import MlsError
from modal_llm_serving.facts.gpus import (
    GB,
    GPU,
    Platform,
    catalog_gpu,
    lacks_kernels,
    load_gpu_catalog,
)
from modal_llm_serving.facts.models import ModelFacts, model_facts
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.rules import MEMORY_SHARE, needs_hf_token
from modal_llm_serving.plan.sizing import (
    Sizing,
    cold_start_seconds,
    engine_bytes,
    longest_sequence_bytes,
    longest_sequence_fits,
    size,
)

__all__ = ["Startup", "concurrency_vs_batch", "context_beyond_model", "does_not_fit",
           "gated_without_token", "precision_unsupported", "read_startup", "startup_note",
           "timeout_too_short", "tp_vs_gpus", "unpinned_extra_models"]

# Settings whose value the rules need as a number; one the checker cannot work out is noted.
_NUMERIC = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
            "max_model_len", "max_num_seqs", "gpu_memory_utilization")
# Quantization methods whose weights need kernels some GPUs lack, in the catalog's words.
_QUANTIZED = {"fp8": "fp8", "mxfp4": "mxfp4"}


@dataclasses.dataclass(frozen=True)
class Startup:
    """What the startup rules judge, worked out once per file, and what could not be had."""

    model: Model | None
    facts: ModelFacts | None
    engine: str  # vllm | sglang: whose default memory share applies
    requests: list[GpuRequest]
    gpus: dict[str, GPU]  # the catalog's entry for each requested GPU type it knows
    platform: Platform
    settings: dict[str, list[Setting]]
    command_found: bool  # an argv list or LLM(...) the settings were read from
    missing: list[str]  # what could not be had, one phrase each

    def first(self, name: str) -> int | None:
        """The first whole-number value of setting `name`, if the app sets one."""
        values = [whole(s.value) for s in self.settings.get(name, [])]
        return next((v for v in values if v is not None), None)

    def gpus_per_replica(self) -> int:
        """GPUs one copy of the model is split over: tensor x pipeline parallelism."""
        return (self.first("tensor_parallel_size") or 1) * (
            self.first("pipeline_parallel_size") or 1)

    def sizing(self) -> Sizing | None:
        """The model sized as the app loads it (its quantization and KV cache format)."""
        if self.facts is None:
            return None
        method = next((str(s.value).lower() for s in self.settings.get("quantization", [])
                       if isinstance(s.value, str)), "")
        precision = _QUANTIZED.get(method) or ("int4" if method in ("awq", "gptq") else None)
        kv = any(str(s.value).startswith("fp8") for s in self.settings.get("kv_cache_dtype", []))
        workload = Workload(model=self.facts.name, precision=precision,
                            kv_cache_dtype="fp8" if kv else "auto")
        return size(workload, self.facts)


def _revision(src: Source) -> str | None:
    """The main model's pinned commit: MODEL_REVISION, else a revision= or --revision given."""
    candidates = [src.constants.get("MODEL_REVISION")]
    candidates += [src.resolve(kwarg(call, "revision")) for call in src.calls
                   if kwarg(call, "revision") is not None]
    return next((c for c in candidates if isinstance(c, str) and HEX.match(c)), None)


def _facts(src: Source, model: Model | None) -> tuple[ModelFacts | None, str | None]:
    """The model's facts, or why there are none (one phrase)."""
    if model is None:
        return None, None
    try:
        return model_facts(model.name, revision=_revision(src)), None
    except MlsError as exc:  # unknown offline, gated, no such commit: the rules say so
        return None, str(exc).split(": ")[0]


def read_startup(src: Source, model: Model | None, found_engines: set[str], *,
                 gpu_catalog: Path | None = None) -> Startup:
    """Everything the startup rules need from `src`, and what could not be had."""
    catalog, platform = load_gpu_catalog(gpu_catalog)
    facts, no_facts = _facts(src, model)
    requests, unknown_gpus = gpu_requests(src)
    settings = engine_settings(src)
    command_found = engine_command_found(src)
    missing = [*([no_facts] if no_facts else []),
               *(f"{written} cannot be worked out" for written in unknown_gpus)]
    gpus: dict[str, GPU] = {}
    for request in requests:
        if gpu := catalog_gpu(request.type, catalog):
            gpus[request.type] = gpu
        else:
            missing.append(f"GPU {request.type!r} is not in the GPU catalog")
    for name in _NUMERIC:
        missing += [f"the value of {s.written} cannot be worked out"
                    for s in settings.get(name, []) if s.value is UNKNOWN]
    for setting in settings.get("overrides", []):
        if setting.value is UNKNOWN or re.search(r"rope|max_position", str(setting.value)):
            missing.append(f"{setting.written} may change the model's positions, so its "
                           "context length is not checked")
    for request in requests:
        limit = startup_limit(src, request.definition, request.call)
        if limit.seconds is UNKNOWN:
            missing.append(f"{limit.written} cannot be worked out")
    missing += [f"{s.written} cannot be worked out" for s in concurrency(src)
                if s.value is UNKNOWN]
    if requests and model is not None and not command_found:
        missing.append("no engine argv list or LLM(...) call to read its tensor parallelism")
    return Startup(model=model, facts=facts, engine="sglang" if found_engines == {"sglang"}
                   else "vllm", requests=requests, gpus=gpus, platform=platform,
                   settings=settings, command_found=command_found,
                   missing=list(dict.fromkeys(missing)))


def startup_note(path: Path, *, gpu_catalog: Path | None = None) -> str | None:
    """What the startup rules could not check in the file at `path`, in one line (None: all
    ran, or the file is not Python the checker reads)."""
    try:
        src = Source(ast.parse(read_python_source(path)), str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # the static checks report it
    startup = read_startup(src, model_reference(src), engines(src), gpu_catalog=gpu_catalog)
    return "; ".join(startup.missing) or None


def _source(facts: ModelFacts) -> str:
    """Where the facts came from, short: "Hub at 220b46e3b218", "built-in catalog"."""
    return facts.source.split(" (")[0]


# --- the rules ------------------------------------------------------------------------------


def tp_vs_gpus(src: Source, st: Startup) -> list[Finding]:
    """MLS022: tensor x pipeline x data parallelism is not the GPUs per container, or tensor
    parallelism does not split the attention heads."""
    found: list[Finding] = []
    unset = [Setting(1, "", 0)] if st.command_found else []  # both engines default to 1
    data = 1 if "enable_dp_attention" in st.settings else st.first("data_parallel_size") or 1
    pipeline = st.first("pipeline_parallel_size") or 1
    for setting in st.settings.get("tensor_parallel_size") or unset:
        tp = whole(setting.value)
        if tp is None or tp < 1:
            continue
        said = (f"{setting.written} {tp}" if setting.written
                else "no tensor parallel size set (the engines' default, 1)")
        said += (f" x pipeline {pipeline}" if pipeline > 1 else "") + (
            f" x data {data}" if data > 1 else "")
        uses = tp * pipeline * data
        for request in st.requests:
            if request.nodes > 1:  # a cluster's GPUs are the cluster rules' (MLS034)
                continue
            gives = f"gpu={request.text!r} gives each container {request.count}"
            if uses < request.count:
                found.append(finding("MLS022", src.path, setting.line or request.line,
                                     f"{said}: the engine uses {uses} GPU(s) and {gives}, "
                                     f"leaving {request.count - uses} idle"))
            elif uses > request.count:
                found.append(finding("MLS022", src.path, setting.line or request.line,
                                     f"{said}: the engine needs {uses} GPUs and {gives}"))
        if st.facts is not None and not st.facts.splits_over(tp):
            line = setting.line or (st.requests[0].line if st.requests else 1)
            found.append(finding("MLS022", src.path, line,
                                 f"{st.facts.name} has {st.facts.heads} attention heads and "
                                 f"{st.facts.kv_heads} KV heads, which tensor parallelism {tp} "
                                 f"does not split evenly (facts: {_source(st.facts)})"))
    return list(dict.fromkeys(found))


def does_not_fit(src: Source, st: Startup) -> list[Finding]:
    """MLS023: weights + one sequence of the context length > the engine's share of the GPUs
    (the plan's own test: `engine_bytes`, `longest_sequence_fits`)."""
    s = st.sizing()
    if s is None:
        return []
    max_len = st.first("max_model_len") or s.facts.max_position
    shares = [_share(s.value) for s in st.settings.get("gpu_memory_utilization", [])]
    util = next((share for share in shares if share is not None), MEMORY_SHARE[st.engine])
    found: list[Finding] = []
    for request in st.requests:
        gpu = st.gpus.get(request.type)
        if gpu is None:
            continue
        # a cluster's copy of the model spans its containers: GPUs per container x nodes
        gpus = request.count * request.nodes
        n = min(gpus, st.gpus_per_replica()) if st.command_found else gpus
        usable = engine_bytes(gpu, n, util=util, platform=st.platform)
        if longest_sequence_fits(s, usable - s.weights_bytes, max_len):
            continue
        sequence = longest_sequence_bytes(s, max_len)
        overhead = st.platform.gpu_overhead_gb
        need = (s.weights_bytes + sequence) / GB + n * overhead
        found.append(finding(
            "MLS023", src.path, request.line,
            f"{s.facts.name} needs {need:.1f} GB: weights {s.weights_bytes / GB:.1f} GB at "
            f"{s.precision} + one {max_len}-token sequence's KV cache {sequence / GB:.1f} GB + "
            f"{n} x {overhead:g} GB per-GPU overhead; {n}x {gpu.name} at {util:g} of "
            f"{gpu.memory_gb:g} GB give the engine {n * gpu.memory_gb * util:.1f} GB "
            f"(facts: {_source(s.facts)})"))
    return list(dict.fromkeys(found))


def _share(value: Any) -> float | None:
    """A share of GPU memory (0 < share <= 1) from a setting's value, else None."""
    try:
        share = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return share if 0 < share <= 1 else None


def context_beyond_model(src: Source, st: Startup) -> list[Finding]:
    """MLS024: --max-model-len / --context-length above the longest context the engine accepts
    for the model: its length keys times its own rope scaling, as vLLM derives it (not checked
    where the app overrides the model's rope scaling)."""
    if st.facts is None or any(m.endswith("context length is not checked") for m in st.missing):
        return []
    found = []
    for setting in st.settings.get("max_model_len", []):
        length = whole(setting.value)
        if length is not None and length > st.facts.max_position:
            found.append(finding("MLS024", src.path, setting.line,
                                 f"{setting.written} {length} > the {st.facts.max_position} "
                                 f"positions of {st.facts.name} ({st.facts.context_fields}; "
                                 f"facts: {_source(st.facts)})"))
    return found


def precision_unsupported(src: Source, st: Startup) -> list[Finding]:
    """MLS025: FP8 or MXFP4 weights (stored so, or quantized at load) on a GPU without their
    kernels: the plan's own rule, `lacks_kernels`."""
    stored: list[tuple[str, str]] = []
    if st.facts is not None:
        stored.append((st.facts.native_precision, f"{st.facts.name} is stored in "
                       f"{st.facts.native_precision} (facts: {_source(st.facts)})"))
    for setting in st.settings.get("quantization", []):
        if isinstance(setting.value, str) and setting.value.lower() in _QUANTIZED:
            stored.append((_QUANTIZED[setting.value.lower()], f"{setting.written} "
                           f"{setting.value}"))
    found = []
    for request in st.requests:
        gpu = st.gpus.get(request.type)
        for precision, why in stored if gpu is not None else []:
            assert gpu is not None
            if lacks := lacks_kernels(gpu, precision):
                what = "FP8 support" if lacks == "fp8" else "MXFP4 kernels (Turing)"
                found.append(finding("MLS025", src.path, request.line,
                                     f"{why}, and {gpu.name} has no {what} in the GPU catalog"))
    return list(dict.fromkeys(found))


def timeout_too_short(src: Source, st: Startup) -> list[Finding]:
    """MLS026: a GPU function's startup limit below the weights' read time off a Volume (the
    plan's cold-start floor), or below the readiness wait the function itself makes."""
    s = st.sizing()
    found: list[Finding] = []
    for request in {id(r.definition): r for r in st.requests}.values():
        limit = startup_limit(src, request.definition, request.call)
        if not isinstance(limit.seconds, int | float) or isinstance(limit.seconds, bool):
            continue
        if s is not None:
            load = cold_start_seconds(s, st.platform, request.count)[0]
            if limit.seconds < load:
                found.append(finding(
                    "MLS026", src.path, limit.line,
                    f"{limit.written} ({limit.seconds:g} s) < {load:.0f} s just to read "
                    f"{s.facts.name}'s {s.weights_bytes / GB:.1f} GB of weights off a Volume at "
                    f"{st.platform.volume_read_gb_s:g} GB/s (facts: {_source(s.facts)})"))
        for seconds, written, line in readiness_waits(src, request.definition):
            if limit.seconds < seconds:
                found.append(finding("MLS026", src.path, line,
                                     f"{limit.written} ({limit.seconds:g} s) < the file's own "
                                     f"readiness wait {written} ({seconds:g} s): Modal stops "
                                     "the container before the wait is over"))
    return found


def concurrency_vs_batch(src: Source, st: Startup) -> list[Finding]:
    """MLS027: Modal's per-container concurrency above twice, or below a quarter of, the
    engine's --max-num-seqs (only where the app sets it: the default depends on the GPU)."""
    found = []
    for given in concurrency(src):
        most = whole(given.value)
        for setting in st.settings.get("max_num_seqs", []):
            seqs = whole(setting.value)
            if most is None or seqs is None or most < 1 or seqs < 1:
                continue
            value = "" if given.written.endswith(f"={most}") else f" ({most})"
            said = f"{given.written}{value} against {setting.written} {seqs}"
            if most > 2 * seqs:
                found.append(finding("MLS027", src.path, given.line,
                                     f"{said}: Modal sends a container up to {most} requests, "
                                     f"its engine runs {seqs} at once and queues the rest "
                                     "where the autoscaler cannot see them"))
            elif 4 * most < seqs:
                found.append(finding("MLS027", src.path, given.line,
                                     f"{said}: at most {most} requests reach a container whose "
                                     f"engine keeps batch room for {seqs}"))
    return found


def gated_without_token(src: Source, st: Startup) -> list[Finding]:
    """MLS028: a gated model (the Hub says so, or its organisation gates its models) and no
    modal.Secret that gives HF_TOKEN."""
    gated = st.facts.gated if st.facts is not None else None
    if st.model is None or not needs_hf_token(st.model.name, gated=gated):
        return []
    if hf_token_provided(src):
        return []
    why = (f"the Hub says so ({_source(st.facts)})" if gated and st.facts is not None
           else "its organisation gates its models")
    return [finding("MLS028", src.path, st.model.line, f"{st.model.name} is gated ({why}) and "
                    "no modal.Secret in the file provides HF_TOKEN")]


def unpinned_extra_models(src: Source, st: Startup) -> list[Finding]:
    """MLS029: a speculative draft, LoRA adapter or other download with no pinned commit."""
    main = st.model.name if st.model is not None else None
    return [finding("MLS029", src.path, other.line,
                    f"the {other.kind} {other.name} is loaded with no pinned revision")
            for other in other_models(src, main) if not other.pinned]
