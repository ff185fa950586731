"""A small synchronous client for OpenAI-compatible servers (vLLM, SGLang, Modal endpoints).

It speaks just what the smoke test and the local server need: list models, one chat completion,
one streamed chat completion (parsed with `SSEParser`, usage included). The benchmark harness has
its own asynchronous client tuned for measurement.

>>> client = OpenAIClient("http://127.0.0.1:8000", api_key="sk-...")  # doctest: +SKIP
>>> client.chat("SmolLM2-135M-Instruct", "What is the capital of France?").text  # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from modal_llm_serving.errors import EndpointError, EndpointStatusError, UsageError
from modal_llm_serving.sse import SSEParser

__all__ = ["ChatResult", "OpenAIClient", "StreamResult", "normalize_base_url"]


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `.../v1` all mean the server root."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r} is not an http(s) URL; write it like http://127.0.0.1:8000")
    return url.removesuffix("/v1")


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """A non-streamed chat completion: its id, text and usage counts."""

    id: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """A streamed chat completion: its text, chunk count, usage and whether [DONE] came."""

    id: str
    text: str
    chunks: int
    prompt_tokens: int | None
    completion_tokens: int | None
    saw_done: bool


class OpenAIClient:
    """Talks to one server; `api_key` goes in `Authorization: Bearer`, `headers` on every call."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        self.base_url = normalize_base_url(base_url)
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=all_headers, timeout=timeout)

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> httpx.Response:
        """A plain GET, for /health and friends; raises `httpx` transport errors as they come."""
        return self._http.get(path)

    def models(self) -> list[str]:
        """The served model ids from GET /v1/models."""
        body = self._json(self._http.get("/v1/models"))
        try:
            return [str(entry["id"]) for entry in body["data"]]
        except (KeyError, TypeError) as exc:
            raise EndpointError(f"/v1/models answered without data[].id: {body!r:.200}") from exc

    def chat(self, model: str, prompt: str, *, max_tokens: int = 32,
             temperature: float = 0.0) -> ChatResult:
        """One non-streamed chat completion with a single user message."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": temperature}
        body = self._json(self._http.post("/v1/chat/completions", json=payload))
        try:
            choice = body["choices"][0]
            return ChatResult(id=str(body["id"]), text=choice["message"]["content"] or "",
                              finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(body["usage"]["prompt_tokens"]),
                              completion_tokens=int(body["usage"]["completion_tokens"]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EndpointError(f"chat completion is missing {exc}: {body!r:.300}") from exc

    def chat_stream(self, model: str, prompt: str, *, max_tokens: int = 32,
                    temperature: float = 0.0) -> StreamResult:
        """One streamed chat completion, asking for a final usage chunk."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": temperature, "stream": True,
                   "stream_options": {"include_usage": True}}
        parser = SSEParser()
        ids: set[str] = set()
        text: list[str] = []
        chunks, usage, saw_done = 0, None, False
        with self._http.stream("POST", "/v1/chat/completions", json=payload) as response:
            if response.status_code != 200:
                response.read()
                self._json(response)  # raises with the status and body
            for raw in response.iter_bytes():
                for event in parser.feed(raw):
                    if event.data == "[DONE]":
                        saw_done = True
                        continue
                    chunk = _parse_json(event.data)
                    chunks += 1
                    ids.add(str(chunk.get("id")))
                    for choice in chunk.get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or "")
                    usage = chunk.get("usage") or usage
            for event in parser.close():
                saw_done = saw_done or event.data == "[DONE]"
        if len(ids) > 1:
            raise EndpointError(f"stream chunks carry different ids: {sorted(ids)}")
        return StreamResult(
            id=ids.pop() if ids else "", text="".join(text), chunks=chunks, saw_done=saw_done,
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            completion_tokens=usage.get("completion_tokens") if usage else None)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise EndpointStatusError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code}: {response.text[:300]}",
                status=response.status_code, url=str(response.request.url))
        return _parse_json(response.text)


def _parse_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise EndpointError(f"expected JSON, got {text[:200]!r}") from exc
    if not isinstance(value, dict):
        raise EndpointError(f"expected a JSON object, got {text[:200]!r}")
    return value
