"""What an OpenAI-compatible server sends, read as untrusted input.

A server is not ours: any field can be missing, null, or of another type than the API says
(`usage` a list, a `choices` entry a string, token counts as strings), and the JSON itself may
nest without end or hold a 400-digit number (read by `untrusted.read_json`, which bounds both).
Every field the toolkit uses is read here and type-checked; anything off raises
`MalformedResponse` with one line that names the field and what came, so the caller fails that
one request (the benchmark records it as `malformed_chunk` and goes on) instead of the whole run.

>>> chunk = read_chunk({"choices": [{"delta": {"content": "Hi"}}]}, chat=True)
>>> chunk.text, chunk.token_bearing
('Hi', True)
>>> read_chunk({"choices": ["x"]}, chat=True)
Traceback (most recent call last):
...
modal_llm_serving.endpoint.wire.MalformedResponse: choices[0] is a str, not an object
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, TypeGuard

from modal_llm_serving.errors import EndpointError, UntrustedDataError
from modal_llm_serving.redact import redact
from modal_llm_serving.untrusted import read_json

__all__ = ["MAX_TOKEN_COUNT", "ChatCompletion", "Chunk", "MalformedResponse", "error_message",
           "is_int", "one_line", "parse_object", "read_chat_completion", "read_chunk",
           "read_models"]

# More tokens than any model reads or writes in one request: a larger usage count is a bad answer.
MAX_TOKEN_COUNT = 2**31 - 1


class MalformedResponse(EndpointError):
    """A response (or one streamed chunk) that is not what an OpenAI-compatible server sends."""


@dataclasses.dataclass(slots=True)  # not frozen: made per token event, a frozen init costs 2x
class Chunk:
    """One streamed event, checked: what the harness and the smoke test read from it."""

    id: str | None = None
    text: str = ""  # the content (chat) or text (completions) of its first choice
    token_bearing: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # from `usage`, when this chunk carries it
    completion_tokens: int | None = None
    # usage.prompt_tokens_details.cached_tokens: prompt tokens the server's prefix cache served
    # (vLLM sends it with --enable-prompt-tokens-details, SGLang with --enable-cache-report)
    cached_tokens: int | None = None
    server_timing: dict[str, int] | None = None
    error: str | None = None  # an in-stream error event's message


@dataclasses.dataclass(frozen=True)
class ChatCompletion:
    """A non-streamed chat completion, checked."""

    id: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def one_line(text: str, limit: int = 200) -> str:
    """Any text (an HTML error page, a multi-line message) as one short line for a table;
    secrets are masked before it is cut, so no part of one is left at the cut."""
    flat = re.sub(r"\s+", " ", redact(text)).strip()
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def parse_object(text: str | bytes, *, what: str) -> dict[str, Any]:
    """`text` as a JSON object, or MalformedResponse naming `what` it was meant to be."""
    try:
        value = read_json(text, what=what)
    except UntrustedDataError as exc:  # not JSON, or past a bound (depth, number, size, text)
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise MalformedResponse(f"{exc}: {one_line(shown, 80)!r}") from None
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what} is a JSON {_kind(value)}, not an object")
    return value


def read_chunk(payload: object, *, chat: bool) -> Chunk:
    """One streamed event's JSON; token-bearing as `vllm bench serve` counts (see records.py)."""
    if not isinstance(payload, dict):
        raise MalformedResponse(f"the chunk is a JSON {_kind(payload)}, not an object")
    choices = _optional(payload, "choices", list) or []
    if "error" in payload and not choices:
        return Chunk(error=_error_text(payload["error"]))
    prompt_tokens = completion_tokens = cached_tokens = None
    if (usage := _optional(payload, "usage", dict)) is not None:
        prompt_tokens = _count(usage, "prompt_tokens")
        completion_tokens = _count(usage, "completion_tokens")
        details = _optional(usage, "prompt_tokens_details", dict, where="usage")
        if details is not None:
            cached_tokens = _count(details, "cached_tokens")
    timing = payload.get("server_timing")
    server_timing = ({key: value for key, value in timing.items()
                      if isinstance(key, str) and is_int(value)}
                     if isinstance(timing, dict) else None)  # optional extra: never fatal
    chunk_id = _optional(payload, "id", str)
    if not choices:
        return Chunk(id=chunk_id, prompt_tokens=prompt_tokens,
                     completion_tokens=completion_tokens, cached_tokens=cached_tokens,
                     server_timing=server_timing)
    for index, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise MalformedResponse(f"choices[{index}] is a {_kind(choice)}, not an object")
    first = choices[0]
    finish = _optional(first, "finish_reason", str, where="choices[0]")
    if chat:
        delta = _optional(first, "delta", dict, where="choices[0]") or {}
        text = _optional(delta, "content", str, where="choices[0].delta") or ""
        opener = "role" in delta and not text and not finish and not any(
            value for key, value in delta.items() if key not in ("role", "content"))
        bearing = not opener  # the role-only chunk that opens a chat stream carries no token
    else:
        text = _optional(first, "text", str, where="choices[0]") or ""
        bearing = True
    return Chunk(id=chunk_id, text=text, token_bearing=bearing, finish_reason=finish,
                 prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 cached_tokens=cached_tokens, server_timing=server_timing)


def read_chat_completion(body: dict[str, Any]) -> ChatCompletion:
    """A non-streamed chat completion's id, first message text, finish reason and usage."""
    choices = _required(body, "choices", list)
    if not choices:
        raise MalformedResponse("choices is empty")
    if not isinstance(choices[0], dict):
        raise MalformedResponse(f"choices[0] is a {_kind(choices[0])}, not an object")
    message = _required(choices[0], "message", dict, where="choices[0]")
    usage = _required(body, "usage", dict)
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    if prompt is None or completion is None:
        raise MalformedResponse("usage lacks prompt_tokens or completion_tokens")
    return ChatCompletion(
        id=_required(body, "id", str),
        text=_optional(message, "content", str, where="choices[0].message") or "",
        finish_reason=_optional(choices[0], "finish_reason", str, where="choices[0]"),
        prompt_tokens=prompt, completion_tokens=completion)


def read_models(body: dict[str, Any]) -> list[str]:
    """The model ids of a GET /v1/models answer."""
    data = _required(body, "data", list)
    ids = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise MalformedResponse(f"data[{index}] is a {_kind(entry)}, not an object")
        ids.append(_required(entry, "id", str, where=f"data[{index}]"))
    return ids


def error_message(body: bytes) -> str:
    """The server's error message (OpenAI/vLLM JSON shape) or its body, as one short line."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = read_json(text, what="the error body")
    except UntrustedDataError:
        return one_line(text) or "(empty body)"
    if isinstance(payload, dict):
        return _error_text(payload.get("error", payload))
    return one_line(text)


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        return one_line(str(message)) if message else one_line(json.dumps(error)[:400])
    return one_line(str(error)) or "(empty error)"


def _optional(container: dict[str, Any], key: str, kind: type, *, where: str = "") -> Any:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = f"{where}.{key}" if where else key
        raise MalformedResponse(f"{name} is a {_kind(value)}, not {_KINDS[kind]}")
    return value


def _required(container: dict[str, Any], key: str, kind: type, *, where: str = "") -> Any:
    value = _optional(container, key, kind, where=where)
    if value is None:
        raise MalformedResponse(f"{f'{where}.' if where else ''}{key} is missing")
    return value


def _count(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    if value is None:
        return None
    if not is_int(value) or not 0 <= value <= MAX_TOKEN_COUNT:
        raise MalformedResponse(f"usage.{key} is {value!r:.40}, not a token count")
    return value


def is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a bool (JSON's true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "str", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)
