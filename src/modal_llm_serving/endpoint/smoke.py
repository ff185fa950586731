"""The smoke test: is this OpenAI-compatible endpoint up and answering correctly?

Steps, in order: wait until ready (retrying what a starting or scaled-to-zero server answers:
connection refused, 502/503/504; not 401/403/404, which waiting will not fix), then GET /health,
GET /v1/models, one chat completion and one streamed chat completion with a usage chunk. Each step
checks structure, not wording: ids present, usage counts positive and consistent, `[DONE]` seen.
A failed step stops the ones that depend on it; each failure says what came back and what to try.

Deadlines, not per-read timeouts: the readiness wait ends by `ready_timeout` seconds after it
starts, the GET it has in flight included; every later step's request ends within
`request_timeout` in all, however slowly the server sends (`deadline.py`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from modal_llm_serving.deadline import DeadlineExceeded
from modal_llm_serving.endpoint.client import OpenAIClient, normalize_base_url, raise_if_client_side
from modal_llm_serving.endpoint.wire import one_line
from modal_llm_serving.errors import EndpointError, EndpointStatusError, EndpointTimeout
from modal_llm_serving.redact import redact_url

__all__ = ["SmokeReport", "SmokeStep", "run_smoke", "wait_until_ready"]

RETRYABLE_STATUS = frozenset({502, 503, 504})
PROMPT = "What is the capital of France? Answer in one sentence."

_HINTS = {
    401: "the server wants an API key: pass --api-key or set MLS_API_KEY",
    403: "the key was refused: check --api-key / MLS_API_KEY against the server's key",
    404: "nothing is served at that path: check the URL (the server root, not a /v1 path "
         "of another app) and the model name",
}


@dataclasses.dataclass
class SmokeStep:
    """One step's outcome; `status` is "pass", "fail" or "skip"."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    hint: str = ""


@dataclasses.dataclass
class SmokeReport:
    """Everything the smoke test found, ready for a table or `--json`."""

    base_url: str
    model: str | None
    steps: list[SmokeStep]

    @property
    def ok(self) -> bool:
        return all(step.status == "pass" for step in self.steps)

    @property
    def failed(self) -> SmokeStep | None:
        return next((step for step in self.steps if step.status == "fail"), None)

    def to_dict(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "ok": self.ok,
                "steps": [dataclasses.asdict(step) for step in self.steps]}


# A GET with less time than this left could only time out: the wait ends with the last answer.
MIN_POLL_S = 0.05


def wait_until_ready(client: OpenAIClient, *, timeout: float,
                     on_wait: Callable[[str], None] = lambda _: None) -> float:
    """Poll GET /health with backoff until 200 or `timeout` seconds; return the seconds waited.

    Raises `EndpointTimeout` at the deadline (not before: the last pause and the last GET are
    cut to fit it; a first GET gets at least 1 s, so `timeout=0` is one try),
    `EndpointStatusError` at once for a status that waiting cannot change, and `UsageError` at
    once for a mistake on our side (a bad header, TLS to a plain-HTTP server), which no amount
    of waiting fixes.
    """
    start = time.monotonic()
    delay, last, polled = 0.5, "no answer yet", False
    while True:
        remaining = timeout - (time.monotonic() - start)
        if polled and remaining < MIN_POLL_S:  # no time for a GET: say what the last one met
            raise EndpointTimeout(f"{redact_url(client.base_url)} not ready after "
                                  f"{timeout:.0f} s (last: {last})")
        cut = min(30.0, remaining) if polled else max(1.0, min(30.0, remaining))
        polled = True
        try:
            response = client.get("/health", timeout=cut)
            if response.status_code == 200:
                return time.monotonic() - start
            if response.status_code not in RETRYABLE_STATUS:
                raise EndpointStatusError(
                    f"GET /health answered {response.status_code}: {one_line(response.text)}",
                    status=response.status_code, url=f"{client.base_url}/health")
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            raise_if_client_side(exc, client.base_url)
            last = type(exc).__name__
        except DeadlineExceeded:
            last = f"GET /health unanswered after {cut:.1f} s"
        waited = time.monotonic() - start
        if waited >= timeout:
            raise EndpointTimeout(f"{redact_url(client.base_url)} not ready after {waited:.0f} s "
                                  f"(last: {last})")
        pause = min(delay, timeout - waited)
        on_wait(f"not ready after {waited:.0f} s ({last}); retrying in {pause:.1f} s")
        time.sleep(pause)
        delay = min(delay * 2, 5.0)


def run_smoke(base_url: str, *, api_key: str | None = None, model: str | None = None,
              headers: Mapping[str, str] | None = None, ready_timeout: float = 300.0,
              request_timeout: float = 120.0,
              on_wait: Callable[[str], None] = lambda _: None) -> SmokeReport:
    """Run every step against `base_url` and return the report (it never raises for a failure).

    `ready_timeout` bounds the readiness wait, `request_timeout` each later request, in all.
    """
    report = SmokeReport(base_url=redact_url(normalize_base_url(base_url)), model=model, steps=[])
    with OpenAIClient(base_url, api_key=api_key, headers=headers,
                      timeout=request_timeout) as client:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("ready", lambda: _ready(client, ready_timeout, on_wait)),
            ("health", lambda: _health(client)),
            ("models", lambda: _models(client, report)),
            ("chat", lambda: _chat(client, report)),
            ("chat-stream", lambda: _chat_stream(client, report)),
        ]
        for name, step in steps:
            if report.failed:
                report.steps.append(SmokeStep(name, "skip", "an earlier step failed"))
                continue
            start = time.monotonic()
            try:
                detail = step()
            except (EndpointError, httpx.HTTPError) as exc:
                status = getattr(exc, "status", None)
                hint = _HINTS.get(status, "") if isinstance(status, int) else ""
                report.steps.append(SmokeStep(
                    name, "fail", one_line(f"{type(exc).__name__}: {exc}", 300),
                    time.monotonic() - start, hint or _hint_for(name)))
            else:
                report.steps.append(SmokeStep(name, "pass", detail, time.monotonic() - start))
    return report


def _hint_for(step: str) -> str:
    return {
        "ready": "is the server starting? raise --ready-timeout, or read the server's logs",
        "health": "the server is up but unhealthy: read its logs",
        "models": "pass --model if the server serves several models",
        "chat": "the model could not answer: check its chat template and context length",
        "chat-stream": "streaming broke: check proxies that buffer or cut server-sent events",
    }[step]


def _ready(client: OpenAIClient, timeout: float, on_wait: Callable[[str], None]) -> str:
    return f"ready after {wait_until_ready(client, timeout=timeout, on_wait=on_wait):.1f} s"


def _health(client: OpenAIClient) -> str:
    response = client.get("/health")
    if response.status_code != 200:
        raise EndpointStatusError(f"GET /health answered {response.status_code}",
                                  status=response.status_code, url=f"{client.base_url}/health")
    return "200 OK"


def _models(client: OpenAIClient, report: SmokeReport) -> str:
    served = client.models()
    if report.model is None:
        if len(served) != 1:
            raise EndpointError(f"the server lists {len(served)} models {served}; "
                                "choose one with --model")
        report.model = served[0]
    elif report.model not in served:
        raise EndpointError(f"{report.model!r} is not served; the server lists {served}")
    return f"serves {', '.join(served)}"


def _chat(client: OpenAIClient, report: SmokeReport) -> str:
    assert report.model is not None  # set by the models step
    result = client.chat(report.model, PROMPT)
    if not result.id:
        raise EndpointError("the completion has no id")
    if result.prompt_tokens <= 0 or result.completion_tokens <= 0:
        raise EndpointError(f"usage counts are not positive: prompt={result.prompt_tokens} "
                            f"completion={result.completion_tokens}")
    if not result.text.strip():
        raise EndpointError("the completion's text is empty")
    return f"{result.completion_tokens} tokens: {one_line(result.text, 60)!r}"


def _chat_stream(client: OpenAIClient, report: SmokeReport) -> str:
    assert report.model is not None
    result = client.chat_stream(report.model, PROMPT)
    if not result.saw_done:
        raise EndpointError(f"the stream ended without data: [DONE] after {result.chunks} chunks")
    if not result.id:
        raise EndpointError("stream chunks have no id")
    if result.completion_tokens is None or result.prompt_tokens is None:
        raise EndpointError("no usage chunk although stream_options.include_usage was set")
    if result.completion_tokens <= 0 or not result.text.strip():
        raise EndpointError(f"the stream carried no text ({result.completion_tokens} tokens)")
    return f"{result.chunks} chunks, {result.completion_tokens} tokens, [DONE]"
