"""Option types for the CLI that admit only values the library can act on.

click's `float` and `FloatRange` accept `nan` and `inf` (a NaN compares false with every
bound), which then spin, wait forever or overflow deep inside a run. These types check once,
at the edge, and fail with click's one-line usage error (exit 2).
"""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["LONGEST_WAIT_S", "Finite"]

# No wait, timeout or pause in the toolkit needs longer (and asyncio cannot sleep for 1e300 s).
LONGEST_WAIT_S = 1e6


class Finite(click.ParamType):  # type: ignore[type-arg]
    """A finite number within [min, max] (either end open if asked)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False) -> None:
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_bad = self.min is not None and (number < self.min or (self.min_open
                                                                  and number == self.min))
        if low_bad or (self.max is not None and number > self.max):
            self.fail(f"{value!r} is not in {self._range()}", param, ctx)
        return number

    def _range(self) -> str:
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        return f"{'(' if self.min_open else '['}{low}, {high}]"

