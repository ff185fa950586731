"""`mls bench`: a streaming benchmark harness for OpenAI-compatible endpoints.

Layers (inward dependencies only): `transport`/`rawhttp` (HTTP, stamps bytes on arrival) →
`stream` (one request: SSE events, token-bearing rule, record) → `runner` (closed/open loop,
sessions, bounds) → `metrics`/`health` (summary, harness health) → `results`/`report` (JSONL,
summary JSON, Markdown + PNG). `api.run_benchmark` is the one call the CLI makes; `coldstart`
and `modal_app` (the in-region client) reuse the same pieces.
"""

from __future__ import annotations

from modal_llm_serving.bench.api import Level, Workload, parse_levels, parse_slos, run_benchmark
from modal_llm_serving.bench.metrics import FORMULAS, Slo
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.runner import BenchConfig

__all__ = ["FORMULAS", "BenchConfig", "Level", "RequestRecord", "Slo", "Workload",
           "parse_levels", "parse_slos", "run_benchmark"]
