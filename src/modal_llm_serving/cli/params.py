"""Option types for the CLI: values the library can act on, and credentials registered at once.

click's `float` and `FloatRange` accept `nan` and `inf` (a NaN compares false with every
bound), which then spin, wait forever or overflow deep inside a run. These types check once,
at the edge, and fail with click's one-line usage error (exit 2).

`SECRET`, `HEADER` and `URL` register what they read with `redact` as click reads it (from the
command line or the environment), before the command runs: from then on every output masks it.
"""

from __future__ import annotations

import math
from typing import Any

import click

from modal_llm_serving.redact import register_headers, register_secret, register_url

__all__ = ["HEADER", "LONGEST_WAIT_S", "SECRET", "URL", "Finite"]

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



class _Registered(click.ParamType):  # type: ignore[type-arg]
    """Text, given to `redact` to mask (the whole value, a secret header's value, or a URL's
    credentials) before the command sees it."""

    def __init__(self, name: str, register: Any) -> None:
        self.name, self._register = name, register

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value)
        self._register(text)
        return text


def _register_header(text: str) -> None:
    name, _, content = text.partition(":")
    register_headers({name.strip(): content.strip()})


SECRET = _Registered("text", register_secret)  # an API key or token
HEADER = _Registered("text", _register_header)  # 'NAME: VALUE'
URL = _Registered("url", register_url)
