"""Measured cost per million tokens: what the GPUs cost an hour over what a level produced.

    USD per hour  = price per GPU-hour × GPUs × region multiplier
    $/M output    = USD per hour / (3600 × output tok/s) × 1e6
    $/M total     = USD per hour / (3600 × total tok/s) × 1e6

The GPUs come from flags (`--gpu H100 --gpus 2 --region us-east`), from an app file (read as
`mls check` reads it) or from a plan (`mls plan --json`); the price from the GPU catalog (or a
plan's own price), the region multiplier by the plan's rule (`plan.decide.price_multiplier`).
A plan also brings its prediction (`cost_per_mtok_output_usd`, at full load) and the error of it
is shown beside each level. The result goes into each level's summary.json under "cost", so a
report or a comparison rendered later shows it; a summary is input, so it is checked when read.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.results import read_summary, sweep_levels, write_json
from modal_llm_serving.display import markdown_text
from modal_llm_serving.errors import UsageError
from modal_llm_serving.untrusted import read_json_file

__all__ = ["FORMULA", "Pricing", "attach_cost", "capacity_cost_line", "choose_pricing",
           "cost_lines", "cost_markdown",
           "level_cost", "pricing_from_app", "pricing_from_flags", "pricing_from_plan", "read_cost"]

FORMULA = ("$/M tok = price_per_gpu_hour × n_gpu × region_multiplier / (3600 × tok/s) × 1e6, "
           "one container at the measured throughput")


@dataclasses.dataclass(frozen=True)
class Pricing:
    """The GPUs one container holds and what they cost; a plan's prediction when one is given."""

    gpu: str
    n_gpu: int
    price_per_gpu_hour: float  # USD, list price before the region multiplier
    region_multiplier: float
    source: str  # where the GPUs came from: "flags", "app FILE", "plan FILE"
    predicted_usd_per_mtok_output: float | None = None  # the plan's, at full load
    plan_workload: tuple[int, int] | None = None  # the plan's (input, output) tokens

    @property
    def usd_per_hour(self) -> float:
        return self.price_per_gpu_hour * self.n_gpu * self.region_multiplier


def _catalog_price(gpu: str, gpu_catalog: Path | None) -> tuple[str, float]:
    from modal_llm_serving.facts.gpus import catalog_gpu, load_gpu_catalog

    catalog, _platform = load_gpu_catalog(gpu_catalog)
    entry = catalog_gpu(gpu, catalog)
    if entry is None:
        raise UsageError(f"GPU {gpu!r} is not in the GPU catalog (known: {', '.join(catalog)}); "
                         "give one of those, or add it with --gpu-catalog FILE")
    return entry.name, entry.price_per_hour


def _multiplier(regions: list[str]) -> float:
    """The plan's rule; of several regions (Modal picks one), the dearest."""
    from modal_llm_serving.plan.decide import price_multiplier

    return max((price_multiplier(region) for region in regions), default=price_multiplier(None))


def pricing_from_flags(gpu: str, n_gpu: int, *, region: str | None = None,
                       gpu_catalog: Path | None = None) -> Pricing:
    """`--gpu H100 --gpus 2 [--region us-east]`, priced from the catalog."""
    from modal_llm_serving.facts.workload import BROAD_REGIONS, NARROW_REGIONS

    if region is not None and region not in BROAD_REGIONS + NARROW_REGIONS:
        raise UsageError(f"--region {region!r} is not a Modal region the price rule knows; "
                         f"give one of {', '.join(BROAD_REGIONS + NARROW_REGIONS)}")
    name, price = _catalog_price(gpu, gpu_catalog)
    return Pricing(name, n_gpu, price, _multiplier([region] if region else []), "flags")


def pricing_from_app(path: Path, *, gpu_catalog: Path | None = None) -> Pricing:
    """The GPU type, count and region of the app file's GPU function, read as `mls check` reads
    them; UsageError when the file asks for no GPU, several kinds, or what cannot be worked out."""
    import ast

    from modal_llm_serving.check.settings import gpu_requests
    from modal_llm_serving.check.source import Source, kwarg, read_python_source

    try:
        src = Source(ast.parse(read_python_source(path), filename=str(path)), str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise UsageError(f"--app {path}: cannot read it as Python ({exc}); give the app file "
                         "that served the benchmark") from None
    requests, unknown = gpu_requests(src)
    kinds = sorted({(request.type, request.count) for request in requests})
    if unknown or len(kinds) != 1:
        found = ", ".join([f"{kind}:{count}" for kind, count in kinds] + unknown) or "no GPU"
        raise UsageError(f"--app {path} asks for {found}; say which served the benchmark with "
                         "--gpu TYPE --gpus N instead")
    request = next(r for r in requests if (r.type, r.count) == kinds[0])
    regions: list[str] = []
    for key in ("region", "compute_region"):
        node = kwarg(request.call, key)
        if node is None:
            continue
        value = src.resolve(node)
        values = [item for item in (value if isinstance(value, list) else [value])
                  if item is not None]  # region=None: unpinned
        if not all(isinstance(item, str) for item in values):
            raise UsageError(f"--app {path}: cannot work out {key}={ast.unparse(node)}; pass "
                             "--gpu, --gpus and --region instead")
        regions += values
    name, price = _catalog_price(request.type, gpu_catalog)
    return Pricing(name, request.count, price, _multiplier(regions), f"app {path}")


def pricing_from_plan(path: Path) -> Pricing:
    """The plan's GPU, count, price and region multiplier, and its predicted $/M output."""
    try:
        plan = read_json_file(path)
    except OSError as exc:
        raise UsageError(f"--plan {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"--plan {path} is not JSON ({exc}); write it with "
                         "`mls plan ... --json > plan.json`") from None
    try:
        gpu, n_gpu = plan["gpu"], plan["n_gpu"]
        prediction = next(p for p in plan["predictions"]
                          if p["name"] == "cost_per_mtok_output_usd")
        price, multiplier = gpu["price_per_hour"], prediction["inputs"]["region_multiplier"]
        workload = (plan["workload"]["input_tokens"], plan["workload"]["output_tokens"])
        numbers = (price, multiplier, prediction["value"], *workload)
        if not (isinstance(gpu["name"], str) and _count(n_gpu) and all(
                _positive(value) for value in numbers)):
            raise TypeError
    except (KeyError, TypeError, StopIteration):
        raise UsageError(f"--plan {path} is not a plan from `mls plan --json` (no GPU, count, "
                         "price or cost prediction)") from None
    return Pricing(gpu["name"], n_gpu, float(price), float(multiplier), f"plan {path}",
                   float(prediction["value"]), (int(workload[0]), int(workload[1])))


def choose_pricing(*, gpu: str | None, n_gpu: int | None, region: str | None,
                   app: Path | None, plan: Path | None,
                   gpu_catalog: Path | None) -> Pricing | None:
    """The pricing one source gives (flags, --app or --plan), or None when none is given."""
    flags = [name for name, value in (("--gpu", gpu), ("--gpus", n_gpu), ("--region", region))
             if value is not None]
    if app is not None and plan is not None:
        raise UsageError("give the GPUs once: --app or --plan, not both")
    if (app is not None or plan is not None) and flags:
        source = "--app" if app is not None else "--plan"
        raise UsageError(f"{source} says which GPUs served; drop {', '.join(flags)} (or drop "
                         f"{source} and give --gpu TYPE --gpus N)")
    if plan is not None:
        return pricing_from_plan(plan)
    if app is not None:
        return pricing_from_app(app, gpu_catalog=gpu_catalog)
    if gpu is None:
        if flags:
            raise UsageError(f"{', '.join(flags)} needs --gpu TYPE (e.g. --gpu H100 --gpus 2)")
        return None
    return pricing_from_flags(gpu, n_gpu or 1, region=region, gpu_catalog=gpu_catalog)


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _per_mtok(usd_per_hour: float, tok_s: object) -> float | None:
    if not _positive(tok_s):
        return None  # nothing produced: no cost per token to give
    assert isinstance(tok_s, int | float)
    return usd_per_hour / (3600 * tok_s) * 1e6


def level_cost(summary: dict[str, Any], pricing: Pricing) -> dict[str, Any]:
    """A level's "cost" entry: the price, $/M output and total tokens, the plan's error."""
    out = _per_mtok(pricing.usd_per_hour, summary.get("output_throughput"))
    cost: dict[str, Any] = {
        "gpu": pricing.gpu, "n_gpu": pricing.n_gpu,
        "price_per_gpu_hour_usd": pricing.price_per_gpu_hour,
        "region_multiplier": pricing.region_multiplier, "usd_per_hour": pricing.usd_per_hour,
        "usd_per_mtok_output": out,
        "usd_per_mtok_total": _per_mtok(pricing.usd_per_hour,
                                        summary.get("total_token_throughput")),
        "source": pricing.source, "formula": FORMULA,
    }
    if pricing.predicted_usd_per_mtok_output is not None:
        predicted = pricing.predicted_usd_per_mtok_output
        cost["plan_usd_per_mtok_output"] = predicted
        cost["plan_error_pct"] = None if out is None else (out - predicted) / predicted * 100
        cost["plan_workload_tokens"] = list(pricing.plan_workload or ())
    return cost


def attach_cost(folder: Path, pricing: Pricing) -> None:
    """Write the cost of each level of the run (or sweep) in `folder` into its summary.json
    (and a sweep's index), so reports and comparisons rendered later show it."""
    slugs = sweep_levels(folder)
    paths = [folder / slug for slug in slugs] if slugs is not None else [folder]
    costs = {}
    for path in paths:
        checked = read_summary(path)  # a missing or broken summary is rebuilt and saved first
        saved = read_json_file(path / "summary.json")  # written as it was, plus the cost
        saved["cost"] = costs[path.name] = level_cost(checked, pricing)
        write_json(path / "summary.json", saved)
    sweep = folder / "sweep.json"
    if slugs is not None and sweep.is_file():
        try:
            index = read_json_file(sweep)
        except (OSError, ValueError):
            return  # an unreadable index: the levels' summaries hold the cost
        levels, saved = index.get("levels"), index.get("summaries")
        if isinstance(levels, list) and isinstance(saved, list):
            for slug, summary in zip(levels, saved, strict=False):
                if isinstance(summary, dict) and slug in costs:
                    summary["cost"] = costs[slug]
            write_json(sweep, index)


_NUMBERS = ("price_per_gpu_hour_usd", "region_multiplier", "usd_per_hour")
_OPTIONAL = ("usd_per_mtok_output", "usd_per_mtok_total", "plan_usd_per_mtok_output",
             "plan_error_pct")


def read_cost(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A saved summary's "cost", checked (a file is input); None when absent or malformed."""
    cost = summary.get("cost")
    if not (isinstance(cost, dict) and isinstance(cost.get("gpu"), str)
            and isinstance(cost.get("source"), str) and _count(cost.get("n_gpu"))
            and all(_positive(cost.get(key)) for key in _NUMBERS)):
        return None
    for key in _OPTIONAL:
        value = cost.get(key)
        if value is not None and not (isinstance(value, int | float) and not isinstance(
                value, bool) and math.isfinite(value)):
            return None
    return cost


def capacity_cost_line(capacity: dict[str, Any], folder: Path) -> str | None:
    """What a million tokens cost at the SLO capacity (the capacity level's saved cost): the
    price of serving at the highest load that met every SLO. None without a capacity or a
    cost."""
    slug = capacity.get("capacity_slug")
    # only a level folder of this sweep: the name comes from a file anyone could have edited
    if not isinstance(slug, str) or slug not in (sweep_levels(folder) or []):
        return None
    try:  # read as every other summary is: checked, rebuilt from requests.jsonl if need be
        cost = read_cost(read_summary(folder / slug))
    except (OSError, ValueError, UsageError):  # unreadable: the report says so elsewhere
        return None
    if cost is None or cost.get("usd_per_mtok_output") is None:
        return None
    line = (f"cost at the capacity ({slug}): ${_usd(cost['usd_per_mtok_output'])} per million "
            f"output tokens, ${_usd(cost.get('usd_per_mtok_total'))} per million total "
            f"({cost['n_gpu']}x {cost['gpu']} at ${_usd(cost['usd_per_hour'])}/h)")
    if cost.get("plan_error_pct") is not None:
        line += (f"; the plan predicted ${_usd(cost.get('plan_usd_per_mtok_output'))} "
                 f"({_pct(cost['plan_error_pct'])})")
    return line


def _usd(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def cost_lines(summary: dict[str, Any]) -> list[str]:
    """The terminal view's cost line (nothing when the summary has no cost)."""
    cost = read_cost(summary)
    if cost is None:
        return []
    line = (f"  cost: {cost['n_gpu']}x {cost['gpu']} at ${cost['usd_per_hour']:.2f}/h: "
            f"${_usd(cost['usd_per_mtok_output'])}/M output tokens, "
            f"${_usd(cost['usd_per_mtok_total'])}/M total tokens")
    if cost.get("plan_usd_per_mtok_output") is not None:
        line += (f"; plan predicted ${_usd(cost['plan_usd_per_mtok_output'])}/M output at full "
                 f"load ({_pct(cost.get('plan_error_pct'))})")
    return [line]


def _pct(error: float | None) -> str:
    return "–" if error is None else f"measured {error:+.0f}%"


def _plan_workload(cost: dict[str, Any]) -> str:
    tokens = cost.get("plan_workload_tokens")
    if not (isinstance(tokens, list) and len(tokens) == 2 and all(_count(t) for t in tokens)):
        return ""
    return f" ({tokens[0]} input, {tokens[1]} output tokens a request)"


def cost_markdown(levels: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The report's cost section: one row per level that has a cost (nothing if none has)."""
    rows = [(slug, summary, cost) for slug, summary in levels
            if (cost := read_cost(summary)) is not None]
    if not rows:
        return []
    first = rows[0][2]
    lines = ["## Cost per million tokens", "",
             f"GPUs from {markdown_text(first['source'])}. {FORMULA}."
             + (f" The plan's figure is its prediction at full load for its own workload"
                f"{_plan_workload(first)}; the error is measured − predicted."
                if first.get("plan_usd_per_mtok_output") is not None else ""), "",
             "| level | GPUs | USD/h | $/M output | $/M total | plan $/M output | error |",
             "|---|---|---|---|---|---|---|"]
    for slug, summary, cost in rows:
        lines.append(
            f"| {markdown_text(str(summary.get('label') or slug or 'run'))} | "
            f"{cost['n_gpu']}x {markdown_text(cost['gpu'])} | {cost['usd_per_hour']:.2f} "
            f"(×{cost['region_multiplier']:g} region) | {_usd(cost['usd_per_mtok_output'])} | "
            f"{_usd(cost['usd_per_mtok_total'])} | "
            f"{_usd(cost.get('plan_usd_per_mtok_output'))} | "
            f"{_pct(cost.get('plan_error_pct')).removeprefix('measured ')} |")
    return [*lines, ""]
