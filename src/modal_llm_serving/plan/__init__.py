"""From a workload and its facts to a plan: decide in data, then explain in words.

`make_plan` decides (`decide.py`, with the arithmetic in `sizing.py` and the rules' numbers in
`rules.py`) and returns a `Plan` value (`types.py`); `explain` words it (`explain.py`).
"""

from __future__ import annotations

from modal_llm_serving.plan.decide import latency_frontier, make_plan, routing_region
from modal_llm_serving.plan.explain import explain
from modal_llm_serving.plan.rules import SLO_MARGIN, TP_SIZES
from modal_llm_serving.plan.types import Candidate, Plan, Prediction, Rejection

__all__ = [
    "SLO_MARGIN",
    "TP_SIZES",
    "Candidate",
    "Plan",
    "Prediction",
    "Rejection",
    "explain",
    "latency_frontier",
    "make_plan",
    "routing_region",
]
