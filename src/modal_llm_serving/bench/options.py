"""The options of one `mls bench run` as one typed value, parsed and checked once.

`parse_options` is the only place where the user's words become a `BenchOptions`: it reads the
strings (`--concurrency 1,8,32`, `--input-len uniform:64:256`, `--slo ttft:500`) into typed
values, checks each of them and how they combine, and returns a frozen value. From there the same
value travels unchanged: through the run (api.py), into each worker process (shards.py, which
pickles it) and into each container of the in-region app (modal_app.py, which passes the value,
never strings to parse again). On the way only `dataclasses.replace` narrows it: the model once
resolved, the workers chosen for a level, the part of the load a process runs.

>>> options = parse_options("http://127.0.0.1:8000", concurrency="1,8", num_requests=200)
>>> [level.slug for level in options.levels]
['c1', 'c8']
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from modal_llm_serving.bench.data import MAX_TOKENS, LengthSpec, parse_length
from modal_llm_serving.bench.partition import Part, resolve
from modal_llm_serving.bench.slo import Slo, parse_slos, require_percentiles
from modal_llm_serving.endpoint.client import check_headers, normalize_base_url
from modal_llm_serving.errors import UsageError

__all__ = ["ARRIVALS", "MAX_WORKERS", "RETRY_STATUSES", "SEARCHES", "BenchOptions", "Level",
           "Search", "Slo", "check_split", "parse_levels", "parse_options", "parse_shared_prefix",
           "parse_slos", "parse_trace_levels"]

ARRIVALS = ("constant", "poisson", "gamma")
SEARCHES = ("concurrency", "rate")
MAX_LEVELS = 64
MAX_WORKERS = 256
# Distinct prompts per run; longer runs cycle through them. 1000 apart, a repeat is far outside
# any prefix cache's reach at these lengths, and building them stays a few seconds.
PROMPT_POOL = 1000
# The answers `--retries` retries: "too many requests" and "unavailable" say "try again later".
RETRY_STATUSES = (429, 503)


@dataclasses.dataclass(frozen=True)
class Level:
    """One load level of a sweep: streams in flight (closed loop) or requests/s (open loop)."""

    kind: Literal["concurrency", "rate", "trace"]
    value: float  # a whole number of streams, requests/s (inf: all at once), or a trace's speed

    @property
    def concurrency(self) -> int | None:
        return int(self.value) if self.kind == "concurrency" else None

    @property
    def rate(self) -> float | None:
        return self.value if self.kind == "rate" else None

    @property
    def slug(self) -> str:
        """The level's folder name in a sweep: c8, r2.5, r-inf."""
        if self.kind == "concurrency":
            return f"c{int(self.value)}"
        if self.kind == "trace":
            return f"trace-x{self.value:g}"
        return "r-inf" if math.isinf(self.value) else f"r{self.value:g}"

    def label(self, arrival: str) -> str:
        """How reports title the level: "concurrency 8", "rate 2/s (poisson)"."""
        if self.kind == "concurrency":
            return f"concurrency {int(self.value)}"
        if self.kind == "trace":
            return f"trace replay x{self.value:g}"
        rate = "inf" if math.isinf(self.value) else f"{self.value:g}"
        return f"rate {rate}/s ({arrival})"


@dataclasses.dataclass(frozen=True)
class Search:
    """`--search`: the highest level of this kind that holds every SLO (capacity.py)."""

    kind: Literal["concurrency", "rate"]
    max_level: float | None  # the highest level tried (None: no bound but the level budget)
    max_levels: int  # at most this many levels run
    max_seconds: float | None  # no level starts after this long (None: no time budget)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Everything one benchmark run needs, checked (build it with `parse_options`).

    Times are seconds (`_s`); the names are those summary.json's "config" saves.
    """

    base_url: str  # the server's root, normalized
    model: str | None  # None until resolved: the only model the server lists
    api_key: str | None
    headers: tuple[tuple[str, str], ...]  # sent with every request (sessions add their own)
    endpoint: str  # chat | completions
    levels: tuple[Level, ...]  # run one after another: a sweep when more than one
    arrival: str  # open loop: constant | poisson | gamma
    burstiness: float  # gamma shape: 1 is Poisson, < 1 burstier
    max_concurrency: int | None  # open loop: cap on requests in flight
    num_requests: int | None  # per level; None: bounded by `duration_s` alone
    duration_s: float | None  # per level: no new request starts after it
    warmup_s: float  # excluded from the measurement window at the start
    cooldown_s: float  # and at the end
    input_len: LengthSpec  # synthetic prompts' tokens
    output_len: LengthSpec | None  # None: 128, or what the dataset says
    dataset: Path | None  # None: synthetic prompts
    tokenizer: str | None  # None: the server's /tokenize
    turns: int  # turns per conversation (multi-turn sessions reuse their prefix)
    # synthetic prompts that open with one of N shared system prompts of LEN tokens: (N, LEN)
    shared_prefix: tuple[int, int] | None
    trace: Path | None  # replay this trace's arrivals and lengths (levels: its speeds)
    scrape_interval_s: float  # the engine's /metrics, scraped this often; 0: not at all
    session_header: str  # carries one id per conversation when turns > 1 (sticky routing)
    ignore_eos: bool
    # min_tokens too only when asked: on vLLM it adds a logits processor to every decode step
    # (measured ~8% slower TPOT on the CPU build), and ignore_eos alone already gives exact lengths
    min_tokens: bool
    prewarm: bool  # open the pool's connections before the clock starts
    slo: Slo | None  # for goodput
    timeout_s: float  # a request may take this long in all
    stall_timeout_s: float  # a stream may go this long without a byte
    retries: int  # of a RETRY_STATUSES answer
    seed: int  # prompts and arrivals
    transport: str  # raw | aiohttp | httpx
    workers: int | None  # processes per level (None: chosen from streams and cores)
    # which part of the load this is: splits (k, n), outermost first; () = all of it
    part: tuple[tuple[int, int], ...] = ()
    # parts on several machines start at one wall-clock moment (each container's own clock)
    start_at_unix: float | None = None
    # a capacity search from `levels[0]` instead of a sweep of `levels`
    search: Search | None = None

    @property
    def dataset_format(self) -> str:
        """synthetic, trace, jsonl or sharegpt."""
        if self.trace is not None:
            return "trace"
        if self.dataset is None:
            return "synthetic"
        return "jsonl" if self.dataset.suffix == ".jsonl" else "sharegpt"

    @property
    def prompt_pool(self) -> int:
        """How many distinct prompts to build (a run cycles through them)."""
        return min(self.num_requests or PROMPT_POOL, PROMPT_POOL)

    def request_headers(self) -> dict[str, str]:
        """The headers every request carries: the given ones and the bearer key."""
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def share(self, level: Level) -> Part:
        """This run's part of `level`: its streams, request budget, indices and arrivals."""
        return resolve(path=self.part, concurrency=level.concurrency,
                       max_concurrency=self.max_concurrency, num_requests=self.num_requests)


def parse_options(url: str, *, model: str | None = None, api_key: str | None = None,
                  headers: dict[str, str] | None = None, endpoint: str = "chat",
                  concurrency: str | None = None, rate: str | None = None,
                  arrival: str = "poisson", burstiness: float = 1.0,
                  max_concurrency: int | None = None, num_requests: int | None = None,
                  duration: float | None = None, warmup: float = 0.0, cooldown: float = 0.0,
                  input_len: str = "128", output_len: str | None = None,
                  dataset: Path | None = None, tokenizer: str | None = None, turns: int = 1,
                  session_header: str = "Modal-Session-ID", ignore_eos: bool = True,
                  min_tokens: bool = False, prewarm: bool = True,
                  slos: tuple[str, ...] | list[str] = (), timeout: float = 600.0,
                  stall_timeout: float = 120.0, retries: int = 0, seed: int = 0,
                  transport: str = "raw", workers: int | None = None,
                  shared_prefix: str | None = None, trace: Path | None = None,
                  trace_speed: str | None = None, scrape_interval: float = 1.0,
                  search: str | None = None, max_level: float | None = None,
                  search_levels: int = 12, search_time: float | None = None) -> BenchOptions:
    """`mls bench run`'s options (named and written as on its command line) as one checked
    value; anything that makes no sense is a UsageError naming the option."""
    given_headers = dict(headers or {})
    base_url = normalize_base_url(url)  # a bad URL fails here, before any folder or request
    check_headers({**given_headers, session_header: "session-id",
                   **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    for name, value, minimum, strict in (
            ("--burstiness", burstiness, 0.0, True), ("--duration", duration, 0.0, True),
            ("--warmup", warmup, 0.0, False), ("--cooldown", cooldown, 0.0, False),
            ("--timeout", timeout, 0.0, True), ("--stall-timeout", stall_timeout, 0.0, True),
            ("--max-level", max_level, 0.0, True), ("--search-time", search_time, 0.0, True)):
        if value is None:
            continue
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise UsageError(f"{name} {value!r} must be a finite number "
                             f"{'>' if strict else '>='} {minimum:g}")
    if search == "rate" and not rate and not concurrency:
        rate = "1"  # a rate search starts at 1 request/s unless told
    if trace is not None or trace_speed is not None:
        levels = parse_trace_levels(trace, trace_speed, given=bool(concurrency or rate))
    else:
        levels = parse_levels(concurrency=concurrency, rate=rate)
    for option, path in (("--dataset", dataset), ("--trace", trace)):
        if path is not None and not path.is_file():
            raise UsageError(f"{option} {path} does not exist")
    if not (math.isfinite(scrape_interval) and (scrape_interval == 0 or
                                                 MIN_SCRAPE_S <= scrape_interval <= 3600)):
        raise UsageError(f"--scrape-interval {scrape_interval!r}: give {MIN_SCRAPE_S:g} to 3600 "
                         "seconds, or 0 to leave the engine's /metrics alone")
    options = BenchOptions(
        base_url=base_url, model=model or None, api_key=api_key,
        headers=tuple(given_headers.items()), endpoint=endpoint, levels=tuple(levels),
        arrival=arrival, burstiness=burstiness, max_concurrency=max_concurrency,
        # without a duration, a level is 100 requests (or the whole trace): every run has a bound
        num_requests=num_requests if num_requests or duration or trace else 100,
        duration_s=duration, warmup_s=warmup, cooldown_s=cooldown,
        input_len=parse_length(input_len, option="--input-len"),
        output_len=parse_length(output_len, option="--output-len") if output_len else None,
        dataset=dataset, tokenizer=tokenizer, turns=turns, session_header=session_header,
        shared_prefix=parse_shared_prefix(shared_prefix) if shared_prefix else None,
        trace=trace, scrape_interval_s=scrape_interval,
        ignore_eos=ignore_eos, min_tokens=min_tokens, prewarm=prewarm, slo=parse_slos(slos),
        timeout_s=timeout, stall_timeout_s=stall_timeout, retries=retries, seed=seed,
        transport=transport, workers=workers,
        search=None if search is None else _search(search, max_level, search_levels,
                                                   search_time))
    _check_combinations(options)
    if options.search is not None:
        _check_search(options, options.search)
    return options


def _search(kind: str, max_level: float | None, max_levels: int,
            max_seconds: float | None) -> Search:
    if kind not in SEARCHES:
        raise UsageError(f"--search {kind!r}: choose concurrency (closed loop) or rate (open "
                         "loop)")
    if not 2 <= max_levels <= MAX_LEVELS:
        raise UsageError(f"--search-levels {max_levels}: give 2 to {MAX_LEVELS} levels")
    return Search("concurrency" if kind == "concurrency" else "rate", max_level, max_levels,
                  max_seconds)


def _check_search(options: BenchOptions, search: Search) -> None:
    """A search starts from one level of its own kind and judges each level by SLOs that
    have a percentile."""
    require_percentiles(options.slo, "--search")
    if options.trace is not None:
        raise UsageError("--search picks its own load levels; it does not combine with --trace")
    start = options.levels[0]
    flag = "--concurrency" if search.kind == "concurrency" else "--rate"
    if len(options.levels) > 1 or start.kind != search.kind:
        raise UsageError(f"--search {search.kind} starts from one level: give one {flag} "
                         "value (or none: 1), not a list or the other loop's option")
    if math.isinf(start.value):
        raise UsageError("--search rate starts from a finite --rate; inf has no level above")
    top, ceiling = search.max_level, MAX_STREAMS if search.kind == "concurrency" else MAX_RATE
    if top is not None and not start.value <= top <= ceiling:
        raise UsageError(f"--max-level {top:g} must be at least the start {flag} "
                         f"{start.value:g} and at most {ceiling:g}")
    if top is not None and search.kind == "concurrency" and not top.is_integer():
        raise UsageError(f"--max-level {top:g}: a concurrency search counts whole streams")


def _check_combinations(options: BenchOptions) -> None:
    """Checks across options, which no single option's type can express."""
    if options.arrival not in ARRIVALS:
        raise UsageError(f"--arrival {options.arrival!r}: choose one of {', '.join(ARRIVALS)}")
    if options.duration_s is not None and \
            options.warmup_s + options.cooldown_s >= options.duration_s:
        raise UsageError("--warmup plus --cooldown leave nothing of --duration to measure")
    unbounded_burst = any(level.rate is not None and math.isinf(level.rate)
                          for level in options.levels) and \
        options.num_requests is None and options.max_concurrency is None
    if unbounded_burst:
        raise UsageError("--rate inf with only --duration would start requests without limit; "
                         "add --num-requests or --max-concurrency")
    if options.workers is not None and not 1 <= options.workers <= MAX_WORKERS:
        raise UsageError(f"--workers {options.workers}: give 1 to {MAX_WORKERS} processes")
    if options.endpoint not in ("chat", "completions"):
        raise UsageError("--endpoint is chat or completions")
    if options.trace is not None and (options.dataset or options.shared_prefix or
                                      options.turns > 1):
        raise UsageError("--trace gives the prompts' lengths and sessions itself; leave out "
                         "--dataset, --shared-prefix and --turns")
    if options.shared_prefix is not None and options.dataset is not None:
        raise UsageError("--shared-prefix builds synthetic prompts; it does not combine with "
                         "--dataset")


def check_split(options: BenchOptions, parts: int) -> None:
    """Every level of `options` splits into `parts` parts (the in-region app's containers):
    each part gets at least one stream."""
    for level in options.levels:
        try:
            dataclasses.replace(options, part=((0, parts),)).share(level)
        except ValueError as exc:
            raise UsageError(f"cannot split this load: {exc}; use fewer parts") from None


MIN_SCRAPE_S = 0.1  # a scrape costs the engine a page of text; faster tells nothing more
MAX_SHARED_PREFIXES = PROMPT_POOL  # each prompt of the pool opens with one of them
MAX_TRACE_SPEED = 1e6


def parse_shared_prefix(spec: str) -> tuple[int, int]:
    """`--shared-prefix N:LEN`: N system prompts of LEN tokens each, shared by the prompts."""
    count, sep, length = spec.strip().partition(":")
    if not (sep and count.isdigit() and length.isdigit()):
        raise UsageError(f"--shared-prefix {spec!r}: write N:LEN (N shared system prompts of LEN "
                         "tokens each), e.g. --shared-prefix 4:512")
    if not 1 <= int(count) <= MAX_SHARED_PREFIXES or not 1 <= int(length) <= MAX_TOKENS:
        raise UsageError(f"--shared-prefix {spec!r}: N is 1 to {MAX_SHARED_PREFIXES} and LEN 1 "
                         f"to {MAX_TOKENS} tokens")
    return int(count), int(length)


def parse_trace_levels(trace: Path | None, speeds: str | None, *, given: bool) -> list[Level]:
    """`--trace FILE --trace-speed 1,2`: one level per speed (1: the trace's own clock)."""
    if trace is None:
        raise UsageError("--trace-speed scales a --trace; give the trace file too")
    if given:
        raise UsageError("--trace sets the load itself (its timestamps); scale it with "
                         "--trace-speed, not --concurrency or --rate")
    levels = []
    for item in (speeds or "1").split(","):
        try:
            speed = float(item)
        except ValueError:
            speed = math.nan
        if not 0 < speed <= MAX_TRACE_SPEED or math.isinf(speed):
            raise UsageError(f"--trace-speed {item.strip()!r}: give a factor > 0 and at most "
                             f"{MAX_TRACE_SPEED:g} (2 replays twice as fast), e.g. 1,2,4")
        levels.append(Level("trace", speed))
    return _distinct_levels("--trace-speed", speeds or "1", levels)


# Slower than one request in 11 days has no arrival inside any run (and its gaps overflow the
# clock); faster than this is `inf` in all but name.
MIN_RATE, MAX_RATE = 1e-6, 1e9
MAX_STREAMS = 100_000  # more than one client can hold


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
            if int(item) > MAX_STREAMS:
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
            if value < MIN_RATE or (math.isfinite(value) and value > MAX_RATE):
                raise UsageError(f"{option} {item!r} is outside {MIN_RATE:g} to {MAX_RATE:g} "
                                 "requests/s (inf = all at once); e.g. --rate 1,2,4")
            levels.append(Level("rate", value))
    return _distinct_levels(option, spec, levels)


def _distinct_levels(option: str, spec: str, levels: list[Level]) -> list[Level]:
    """`levels` as given by `option`, unless one repeats or there are too many for a sweep."""
    if len({level.value for level in levels}) != len(levels):
        raise UsageError(f"{option} {spec!r} repeats a value; each level runs once")
    if len(levels) > MAX_LEVELS:
        raise UsageError(f"{option} has {len(levels)} levels; at most {MAX_LEVELS} per sweep")
    return levels
