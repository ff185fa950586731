"""A strict reader of the Prometheus text format (what an engine's `GET /metrics` answers).

The answer is a server's text, so it is read as hostile input: at most `MAX_BYTES` and
`MAX_LINES`, UTF-8, and every line either blank, a `#` comment (HELP, TYPE, OpenMetrics' EOF) or
one sample `name{label="value",...} value [timestamp]`. Anything else raises
`PrometheusTextError` (a ValueError) naming the line, so an HTML error page or a JSON answer on
/metrics reads as "not Prometheus text", never as numbers. Only the samples whose names the
caller asks for are kept, so an engine's hundreds of histogram buckets cost a match each.

>>> parse(b'# TYPE vllm:num_requests_running gauge\\n'
...       b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\\n'
...       b'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\\n',
...       names={"vllm:num_requests_running"})
[('vllm:num_requests_running', (('engine', '0'), ('model_name', 'm')), 3.0)]
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["MAX_BYTES", "MAX_LINES", "PrometheusTextError", "Sample", "parse"]

# vLLM's /metrics is ~60 KB and ~700 lines (SGLang's, with every histogram, a few times that);
# far beyond either is not an engine's metrics page.
MAX_BYTES = 4 * 1024 * 1024
MAX_LINES = 100_000
MAX_LINE = 64 * 1024  # characters; a label value holds at most a model's name or a path
MAX_LABELS = 32  # per sample; vLLM's carry 2-4

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# The value: a Go float as Prometheus writes it (NaN, +Inf, -Inf, 1e-05, 3, ...).
_VALUE = r"[+-]?(?:[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.|Inf|inf|NaN|nan)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})?[ \t]+({_VALUE})(?:[ \t]+-?[0-9]{{1,19}})?[ \t]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Sample = tuple[str, tuple[tuple[str, str], ...], float]  # name, labels, value


class PrometheusTextError(ValueError):
    """The text is not Prometheus' text format, or is past a bound; the message names the line."""


def parse(data: bytes, *, names: Collection[str]) -> list[Sample]:
    """The samples of `data` whose metric name is in `names` (every line is checked).

    A histogram's or counter's series are asked for by their full names (`..._sum`,
    `..._count`, `..._total`).
    """
    if len(data) > MAX_BYTES:
        raise PrometheusTextError(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrometheusTextError(f"not UTF-8 (byte {exc.start})") from None
    lines = text.split("\n")
    if len(lines) > MAX_LINES:
        raise PrometheusTextError(f"more than {MAX_LINES} lines")
    samples: list[Sample] = []
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE:
            raise PrometheusTextError(f"line {number} is longer than {MAX_LINE} characters")
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise PrometheusTextError(f"line {number} is not a sample: {line[:60]!r}")
        name, labels, value = match.groups()
        if name not in names:
            continue
        # the value pattern admits only what float() reads
        samples.append((name, _labels(labels or "", number), float(value)))
    return samples


def _labels(text: str, number: int) -> tuple[tuple[str, str], ...]:
    labels: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None or match.end() == position:
            raise PrometheusTextError(f"line {number} has a malformed label set")
        name, raw, _comma = match.groups()
        labels.append((name, re.sub(r"\\.", lambda m: _ESCAPES.get(m.group(), m.group()), raw)))
        if len(labels) > MAX_LABELS:
            raise PrometheusTextError(f"line {number} has more than {MAX_LABELS} labels")
        position = match.end()
    return tuple(labels)


