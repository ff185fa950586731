"""`mls bench`: a streaming benchmark harness for OpenAI-compatible endpoints.

Layers (inward dependencies only): `options` (what to run: one checked value) → `transport`/
`rawhttp` (HTTP, stamps bytes on arrival) → `stream` (one request: SSE events, token-bearing
rule, record) → `runner` (closed/open loop, sessions, bounds) and `shards` (a level over worker
processes) → `metrics`/`health` (the numbers, harness health) → `summary` (one typed value per
level, and its JSON) → `results`/`report` (JSONL, summary JSON, Markdown + PNG).
`api.run_benchmark` is the one call the CLI makes; `coldstart` and `modal_app` (the in-region
client) reuse the same pieces.
"""

from __future__ import annotations

from modal_llm_serving.bench.api import run_bench, run_benchmark
from modal_llm_serving.bench.metrics import FORMULAS, Measured
from modal_llm_serving.bench.options import BenchOptions, Level, Slo, parse_options
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.summary import LevelSummary

__all__ = ["FORMULAS", "BenchOptions", "Level", "LevelSummary", "Measured", "RequestRecord",
           "Slo", "parse_options", "run_bench", "run_benchmark"]
