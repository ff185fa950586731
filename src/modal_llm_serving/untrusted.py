"""The one reader of JSON that came from outside: a server's answer or stream chunk, the Hub, a
model's config.json, a summary or record read back from disk.

`json.loads` trusts what it reads: ten thousand nested brackets raise RecursionError (not a
ValueError), a 400-digit integer becomes an int that overflows the first float() it meets, `NaN`
and `1e999` become floats no JSON writer takes back, `"\\ud800"` becomes text no UTF-8 writer can
encode. `read_json` refuses each of these with `UntrustedDataError` (a ValueError), naming what
was read, so its caller fails that one request or that one file and goes on.

>>> read_json(b'{"usage": {"prompt_tokens": 3}}', what="the chunk")
{'usage': {'prompt_tokens': 3}}
>>> read_json('{"n": 1' + '0' * 400 + '}', what="the chunk")
Traceback (most recent call last):
...
modal_llm_serving.errors.UntrustedDataError: the chunk holds an integer of 401 digits
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import UntrustedDataError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_INT", "read_json", "read_json_file"]

MAX_DEPTH = 64  # nesting: OpenAI answers, configs and summaries use under 10
MAX_BYTES = 64 * 1024 * 1024  # the largest safetensors index of a public model is ~10 MB
MAX_INT = 2**63 - 1  # beyond any count, id or size a server or a file has reason to send


class _Refused(ValueError):
    """A bound broken while decoding (raised from the decoder's hooks, reworded below)."""


def _integer(literal: str) -> int:
    if len(literal.lstrip("-")) > 19:  # checked before int() builds a huge number
        raise _Refused(f"holds an integer of {len(literal.lstrip('-'))} digits")
    value = int(literal)
    if abs(value) > MAX_INT:
        raise _Refused("holds an integer beyond 64 bits")
    return value


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(f"holds a number out of range ({literal[:24]})")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not JSON")


# One decoder, built once: json.loads with hooks would build a new one per call (per chunk).
_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_float, parse_constant=_constant)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def read_json(data: bytes | str, *, what: str, max_bytes: int = MAX_BYTES) -> Any:
    """`data` decoded as JSON within the bounds, or UntrustedDataError saying which it broke.

    **Parameters:** `what` names the data in the message ("the answer to /v1/models");
    `max_bytes` bounds its length (characters, for text).
    """
    if len(data) > max_bytes:
        raise UntrustedDataError(f"{what} is larger than {max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedDataError(f"{what} is not UTF-8") from None
    else:
        text = data
        if not text.isascii():
            _check_text(text, what)  # e.g. decoded with surrogateescape
    # Only text with more brackets than the bound can nest past it: the exact scan is rare.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise UntrustedDataError(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        value = _DECODER.decode(text)
    except _Refused as exc:
        raise UntrustedDataError(f"{what} {exc}") from None
    except RecursionError:  # a backstop: the scan above should have refused it
        raise UntrustedDataError(f"{what} nests too deep") from None
    except json.JSONDecodeError as exc:
        raise UntrustedDataError(f"{what} is not JSON ({exc.msg} at {exc.pos})") from None
    except ValueError as exc:  # int() past Python's digit limit, or the like
        raise UntrustedDataError(f"{what} is not JSON ({exc})") from None
    if "\\u" in text:  # an escape may have made a lone surrogate
        _check_strings(value, what)
    return value


def read_json_file(path: Path, *, what: str | None = None, max_bytes: int = MAX_BYTES) -> Any:
    """A JSON file read with `read_json`'s bounds; OSError as `open` raises it."""
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # never more than the bound into memory
    return read_json(data, what=what or str(path), max_bytes=max_bytes)


def _depth(text: str) -> int:
    """How deep the brackets outside strings nest."""
    bare = _STRING.sub("", text)
    return max(itertools.accumulate(map(_STEP.__getitem__, _BRACKETS.findall(bare))),
               default=0)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UntrustedDataError(f"{what} holds a lone surrogate (text no UTF-8 can carry)") \
            from None


def _check_strings(value: Any, what: str) -> None:
    """Every string (keys too) of a decoded value is encodable text."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                _check_text(item, what)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
