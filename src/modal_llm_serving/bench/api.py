"""`mls bench run` as one library call: check input, build prompts, run each load level, save.

>>> levels = parse_levels(concurrency="1,8,32", rate=None)  # doctest: +SKIP
>>> run_benchmark(config, levels, workload, out_dir=Path("results/x"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from modal_llm_serving.bench.data import (
    LengthSpec,
    Prompt,
    Tokenizer,
    load_jsonl,
    load_sharegpt,
    make_tokenizer,
    synthetic_prompts,
)
from modal_llm_serving.bench.metrics import FORMULAS, Slo
from modal_llm_serving.bench.results import (
    JsonlSink,
    new_out_dir,
    prepare_out_dir,
    write_json,
    write_sweep,
)
from modal_llm_serving.bench.runner import ARRIVALS, BenchConfig, Progress, run_event_loop
from modal_llm_serving.bench.shards import MAX_WORKERS, choose_workers, run_level
from modal_llm_serving.endpoint.client import (
    check_headers,
    normalize_base_url,
    raise_if_client_side,
)
from modal_llm_serving.endpoint.wire import MalformedResponse, parse_object, read_models
from modal_llm_serving.errors import UsageError
from modal_llm_serving.redact import redact_url

__all__ = ["BenchOptions", "Level", "Workload", "check_config", "parse_levels", "parse_slos",
           "plan_run", "prepare_prompts", "resolve_model", "run_bench", "run_benchmark",
           "run_event_loop"]

MAX_LEVELS = 64
# Distinct prompts per run; longer runs cycle through them. 1000 apart, a repeat is far outside
# any prefix cache's reach at these lengths, and building them stays a few seconds.
PROMPT_POOL = 1000


@dataclasses.dataclass(frozen=True)
class Level:
    """One load level of a sweep: a concurrency or a request rate."""

    kind: str  # concurrency | rate
    value: float

    @property
    def slug(self) -> str:
        if self.kind == "concurrency":
            return f"c{int(self.value)}"
        return "r-inf" if math.isinf(self.value) else f"r{self.value:g}"

    def apply(self, config: BenchConfig) -> BenchConfig:
        if self.kind == "concurrency":
            return dataclasses.replace(config, concurrency=int(self.value), rate=None)
        return dataclasses.replace(config, concurrency=None, rate=self.value)


@dataclasses.dataclass(frozen=True)
class Workload:
    """Where prompts come from and how long inputs and outputs are."""

    input_len: LengthSpec
    output_len: LengthSpec | None
    dataset: Path | None = None
    dataset_format: str = "synthetic"  # synthetic | jsonl | sharegpt
    tokenizer: str | None = None
    pool: int = PROMPT_POOL
    seed: int = 0


def parse_levels(*, concurrency: str | None, rate: str | None) -> list[Level]:
    """`--concurrency 1,4,16` or `--rate 2,4,inf`; anything that makes no sense is a UsageError."""
    if concurrency and rate:
        raise UsageError("give --concurrency (closed loop) or --rate (open loop), not both; cap "
                         "an open loop's requests in flight with --max-concurrency")
    if not concurrency and not rate:
        return [Level("concurrency", 1)]
    option, spec = ("--concurrency", concurrency) if concurrency else ("--rate", rate)
    assert spec is not None
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise UsageError(f"{option} {spec!r} has an empty item; write a comma list like 1,4,16")
    levels = []
    for item in items:
        if option == "--concurrency":
            if not item.isdigit() or int(item) < 1:
                raise UsageError(f"{option} {item!r} is not a whole number >= 1; e.g. "
                                 "--concurrency 1,4,16")
            if int(item) > 100_000:
                raise UsageError(f"{option} {item} is more streams than one client can hold")
            levels.append(Level("concurrency", int(item)))
        else:
            try:
                value = float(item)
            except ValueError:
                raise UsageError(f"{option} {item!r} is not a number of requests per second; "
                                 "e.g. --rate 1,2,4 or inf") from None
            if math.isnan(value) or value <= 0:
                raise UsageError(f"{option} {item!r} must be > 0 requests/s (inf = all at once)")
            levels.append(Level("rate", value))
    if len({level.value for level in levels}) != len(levels):
        raise UsageError(f"{option} {spec!r} repeats a value; each level runs once")
    if len(levels) > MAX_LEVELS:
        raise UsageError(f"{option} has {len(levels)} levels; at most {MAX_LEVELS} per sweep")
    return levels


def parse_slos(values: tuple[str, ...] | list[str]) -> Slo | None:
    """`ttft:500`, `tpot:50`, `e2el:2000` (ms; as vLLM's --goodput) into an Slo, or None."""
    limits: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition(":")
        name = name.strip().lower()
        try:
            limit = float(number)
        except ValueError:
            limit = math.nan
        if not sep or name not in ("ttft", "tpot", "e2el") or not limit > 0 or \
                math.isinf(limit):
            raise UsageError(f"--slo {value!r}: write METRIC:MS with METRIC ttft, tpot or e2el "
                             "and MS > 0, e.g. --slo ttft:500")
        if name in limits:
            raise UsageError(f"--slo gives {name} twice")
        limits[name] = limit
    if not limits:
        return None
    return Slo(ttft_ms=limits.get("ttft"), tpot_ms=limits.get("tpot"), e2el_ms=limits.get("e2el"))


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Everything `mls bench run` takes, as plain values (the CLI's options, the in-region
    app's arguments); `plan_run` checks them and turns them into what the runner needs."""

    url: str
    model: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    endpoint: str = "chat"
    concurrency: str | None = None  # "1,8,32": closed loop, a sweep
    rate: str | None = None  # "2,4,inf": open loop, a sweep
    arrival: str = "poisson"
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_requests: int | None = None
    duration: float | None = None
    warmup: float = 0.0
    cooldown: float = 0.0
    input_len: str = "128"
    output_len: str | None = None
    dataset: Path | None = None
    tokenizer: str | None = None
    turns: int = 1
    session_header: str = "Modal-Session-ID"
    ignore_eos: bool = True
    min_tokens: bool = False
    prewarm: bool = True
    slos: tuple[str, ...] = ()
    timeout: float = 600.0
    stall_timeout: float = 120.0
    retries: int = 0
    seed: int = 0
    transport: str = "raw"
    workers: int | None = None  # processes per level (None: one per 128 streams, per core)
    # one part of a load split over machines (the in-region app's containers), started at
    # one wall-clock moment
    part: tuple[tuple[int, int], ...] = ()
    start_at_unix: float | None = None


def plan_run(options: BenchOptions) -> tuple[BenchConfig, list[Level], Workload]:
    """The options checked and turned into a config, the load levels and the workload."""
    from modal_llm_serving.bench.data import parse_length

    o = options
    normalize_base_url(o.url)  # a bad URL fails here, before any folder or request
    check_headers({**o.headers, **({"Authorization": f"Bearer {o.api_key}"} if o.api_key
                                   else {})})
    for name, value, minimum, strict in (
            ("--burstiness", o.burstiness, 0.0, True), ("--duration", o.duration, 0.0, True),
            ("--warmup", o.warmup, 0.0, False), ("--cooldown", o.cooldown, 0.0, False),
            ("--timeout", o.timeout, 0.0, True), ("--stall-timeout", o.stall_timeout, 0.0, True)):
        if value is None:
            continue
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise UsageError(f"{name} {value!r} must be a finite number "
                             f"{'>' if strict else '>='} {minimum:g}")
    levels = parse_levels(concurrency=o.concurrency, rate=o.rate)
    if o.dataset is not None and not o.dataset.is_file():
        raise UsageError(f"--dataset {o.dataset} does not exist")
    workload = Workload(
        input_len=parse_length(o.input_len, option="--input-len"),
        output_len=parse_length(o.output_len, option="--output-len") if o.output_len else None,
        dataset=o.dataset,
        dataset_format=("synthetic" if o.dataset is None else
                        "jsonl" if o.dataset.suffix == ".jsonl" else "sharegpt"),
        tokenizer=o.tokenizer, pool=min(o.num_requests or PROMPT_POOL, PROMPT_POOL), seed=o.seed)
    config = BenchConfig(
        base_url=o.url, model=o.model or "", endpoint=o.endpoint, api_key=o.api_key,
        headers=tuple(o.headers.items()), arrival=o.arrival, burstiness=o.burstiness,
        max_concurrency=o.max_concurrency,
        num_requests=o.num_requests if o.num_requests or o.duration else 100,
        duration_s=o.duration, warmup_s=o.warmup, cooldown_s=o.cooldown, turns=o.turns,
        session_header=o.session_header, ignore_eos=o.ignore_eos, min_tokens=o.min_tokens,
        timeout_s=o.timeout, stall_timeout_s=o.stall_timeout, retries=o.retries,
        slo=parse_slos(o.slos), seed=o.seed, transport=o.transport, prewarm=o.prewarm,
        workers=o.workers, part=tuple((int(k), int(n)) for k, n in o.part),
        start_at_unix=o.start_at_unix)
    for level in levels:
        check_config(level.apply(config))
    return config, levels, workload


def check_config(config: BenchConfig) -> None:
    """Cross-option checks the option types cannot express."""
    if config.num_requests is None and config.duration_s is None:
        raise UsageError("bound the run: give --num-requests and/or --duration")
    if config.arrival not in ARRIVALS:
        raise UsageError(f"--arrival {config.arrival!r}: choose one of {', '.join(ARRIVALS)}")
    if config.arrival == "gamma" and config.burstiness <= 0:
        raise UsageError("--burstiness must be > 0 (1 is Poisson; < 1 burstier)")
    if config.duration_s is not None and config.warmup_s + config.cooldown_s >= config.duration_s:
        raise UsageError("--warmup plus --cooldown leave nothing of --duration to measure")
    unbounded_burst = (config.rate is not None and math.isinf(config.rate)
                       and config.num_requests is None and config.max_concurrency is None)
    if unbounded_burst:
        raise UsageError("--rate inf with only --duration would start requests without limit; "
                         "add --num-requests or --max-concurrency")
    if config.workers is not None and not 1 <= config.workers <= MAX_WORKERS:
        raise UsageError(f"--workers {config.workers}: give 1 to {MAX_WORKERS} processes")
    try:
        config.share()
    except ValueError as exc:
        raise UsageError(f"cannot split this load: {exc}; use fewer parts") from None
    if config.endpoint not in ("chat", "completions"):
        raise UsageError("--endpoint is chat or completions")


def resolve_model(base_url: str, model: str | None, *, headers: dict[str, str]) -> tuple[
        str, list[str] | None]:
    """The model to send (given, or the only one served) and the served list, if it answered."""
    served: list[str] | None = None
    try:
        response = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=10.0)
        if response.status_code == 200:
            served = read_models(parse_object(response.text, what="/v1/models"))
    except MalformedResponse:
        served = None
    except httpx.HTTPError as exc:
        raise_if_client_side(exc, base_url)
        served = None
    if model:
        return model, served
    if served is None:
        raise UsageError(f"could not list models at {redact_url(base_url)}/v1/models (is the URL "
                         "right and the server up?); pass --model to run anyway")
    if len(served) != 1:
        raise UsageError(f"{redact_url(base_url)} serves {len(served)} models "
                         f"({', '.join(served) or 'none'}); pick one with --model")
    return served[0], served


def prepare_prompts(workload: Workload, *, base_url: str, model: str,
                    headers: dict[str, str], count: int) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompt pool and a description of it (tokenizer used, exactness) for the summary."""
    tokenizer = make_tokenizer(base_url=base_url, model=model, headers=headers,
                               tokenizer=workload.tokenizer)
    try:
        return _prompt_pool(workload, tokenizer, count=count)
    finally:
        tokenizer.close()  # the server tokenizer holds a connection pool


def _prompt_pool(workload: Workload, tokenizer: Tokenizer, *,
                 count: int) -> tuple[list[Prompt], dict[str, Any]]:
    info: dict[str, Any] = {"tokenizer_source": tokenizer.source,
                            "dataset": workload.dataset_format}
    size = max(1, min(count, workload.pool))
    if workload.dataset_format == "synthetic":
        output_len = workload.output_len or LengthSpec("fixed", 128)
        prompts, exact = synthetic_prompts(tokenizer, count=size, input_len=workload.input_len,
                                           output_len=output_len, seed=workload.seed)
        info.update(input_len=str(workload.input_len), output_len=str(output_len),
                    exact_input_fraction=exact)
    else:
        assert workload.dataset is not None
        if workload.dataset_format == "jsonl":
            prompts = load_jsonl(workload.dataset, tokenizer=tokenizer,
                                 output_len=workload.output_len, seed=workload.seed)
        else:
            prompts = load_sharegpt(workload.dataset, tokenizer=tokenizer,
                                    output_len=workload.output_len, seed=workload.seed,
                                    limit=size)
        info.update(dataset_path=str(workload.dataset),
                    output_len=str(workload.output_len) if workload.output_len else "from data")
    info["prompt_pool"] = len(prompts)
    info["mean_input_len"] = sum(p.input_len for p in prompts) / len(prompts)
    info["mean_output_len"] = sum(p.output_len for p in prompts) / len(prompts)
    return prompts, info


def run_bench(options: BenchOptions, *, out_dir: Path | None = None, overwrite: bool = False,
              on_out_dir: Callable[[Path], None] | None = None,
              progress: Callable[[Level, Progress], None] | None = None,
              on_level: Callable[[Level, dict[str, Any]], None] | None = None,
              on_info: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`mls bench run` as one call: check the options, then the output folder (`out_dir`, or a
    new `results/bench-<time>`; told to `on_out_dir`), before any work; then run every level
    and save it. A run that fails before writing anything leaves no folder behind."""
    config, levels, workload = plan_run(options)
    created = out_dir is None or not out_dir.is_dir()
    if out_dir is None:
        out_dir = new_out_dir(Path("results"), "bench")
    else:
        prepare_out_dir(out_dir, overwrite=overwrite)
    if on_out_dir:
        on_out_dir(out_dir)
    try:
        return run_benchmark(config, levels, workload, out_dir=out_dir, progress=progress,
                             on_level=on_level, on_info=on_info)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if still empty: whatever finished stays
        raise


def run_benchmark(config: BenchConfig, levels: list[Level], workload: Workload, *,
                  out_dir: Path, progress: Callable[[Level, Progress], None] | None = None,
                  on_level: Callable[[Level, dict[str, Any]], None] | None = None,
                  on_info: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every level (each to its bounds) and save results; return the level summaries."""
    base_url = normalize_base_url(config.base_url)
    for level in levels:
        check_config(level.apply(config))
    headers = dict(config.headers)
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    model, served = resolve_model(base_url, config.model or None, headers=headers)
    say = on_info or (lambda _m: None)
    if served is not None and model not in served:
        say(f"warning: {model!r} is not among the served models ({', '.join(served)}); "
            "requests will likely fail with 404")
    config = dataclasses.replace(config, base_url=base_url, model=model)
    budget = config.num_requests or workload.pool
    prompts, data_info = prepare_prompts(workload, base_url=base_url, model=model,
                                         headers=headers, count=budget)
    say(f"prompts: {len(prompts)} ({data_info['tokenizer_source']})")
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[dict[str, Any]] = []
    slugs = [level.slug for level in levels]
    if len(levels) > 1:  # from the start: an interrupted sweep still names its levels
        write_sweep(out_dir, slugs, summaries)
    for level in levels:
        level_config = level.apply(config)
        folder = out_dir / level.slug if len(levels) > 1 else out_dir
        level_progress = None
        if progress is not None:
            level_progress = functools.partial(progress, level)
        level_config = dataclasses.replace(
            level_config, workers=choose_workers(level_config, config.workers))
        with JsonlSink(folder / "requests.jsonl") as sink:
            summary = run_level(level_config, prompts, sink=sink, progress=level_progress)
        summary.update(_context(level_config, level, data_info))
        write_json(folder / "summary.json", summary)
        summaries.append(summary)
        if len(levels) > 1:
            write_sweep(out_dir, slugs, summaries)
        if on_level:
            on_level(level, summary)
    return summaries


def _context(config: BenchConfig, level: Level, data_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if config.endpoint == "chat" else "openai",
        "base_url": redact_url(config.base_url),
        "level": {"kind": level.kind, "value": level.value, "slug": level.slug},
        "config": config.public_dict(),
        "data": data_info,
        "formulas": FORMULAS,
        "client": {"python": platform.python_version(), "platform": sys.platform,
                   "transport": config.transport},
    }
