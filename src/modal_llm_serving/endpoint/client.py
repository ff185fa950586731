"""A small synchronous client for OpenAI-compatible servers (vLLM, SGLang, Modal endpoints).

It speaks just what the smoke test and the local server need: list models, one chat completion,
one streamed chat completion (parsed with `SSEParser`, usage included), a POST of JSON. The
benchmark harness has its own asynchronous client tuned for measurement.

`timeout` bounds each call in all (connect to last byte, see `deadline.py`), not each read: a
server that trickles or never ends its body fails that call with `DeadlineExceeded` when it is
up. An answer is read to at most `MAX_ANSWER_BYTES`.

>>> client = OpenAIClient("http://127.0.0.1:8000", api_key="sk-...")  # doctest: +SKIP
>>> client.chat("SmolLM2-135M-Instruct", "What is the capital of France?").text  # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

import dataclasses
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from modal_llm_serving.deadline import bounded, fetch, within
from modal_llm_serving.endpoint.sse import SSEParser
from modal_llm_serving.endpoint.wire import (
    ChatCompletion,
    MalformedResponse,
    one_line,
    parse_object,
    read_chat_completion,
    read_chunk,
    read_models,
)
from modal_llm_serving.errors import (
    EndpointError,
    EndpointStatusError,
    UntrustedDataError,
    UsageError,
)
from modal_llm_serving.redact import redact_url

__all__ = ["CLIENT_HEADERS", "MAX_ANSWER_BYTES", "ChatResult", "OpenAIClient", "StreamResult",
           "check_headers", "normalize_base_url", "raise_if_client_side", "tls_failure"]

MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a non-streamed answer (a /tokenize of a long prompt: ~1 MB)


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `.../v1` all mean the server root.

    A URL is input: anything that cannot be a server's address (another scheme, no host, a port
    outside 1-65535, spaces or control characters) is a UsageError naming what is wrong.
    """
    url = url.strip().rstrip("/")
    shown = redact_url(url)
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{shown!r} is not an http(s) URL; write it like http://127.0.0.1:8000")
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        raise UsageError(f"{shown!r} holds spaces or control characters; check the URL")
    if not url.isascii():
        raise UsageError(f"{shown!r} is not ASCII; write host names in punycode and escape "
                         "paths with %XX")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Port could not be cast", ...
        raise UsageError(f"{shown!r} has a bad port ({exc}); ports are 1-65535") from None
    if not parts.hostname:
        raise UsageError(f"{shown!r} names no host; write it like http://127.0.0.1:8000")
    if port == 0:
        raise UsageError(f"{shown!r} has port 0; ports are 1-65535")
    if parts.query or parts.fragment:
        raise UsageError(f"{shown!r} has a query or fragment; give the server's root URL")
    return url.removesuffix("/v1")


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a header name (RFC 9110 token)
# Headers the client sets itself, from the URL and the body, or that change how the connection
# is used. Given again, the request carries two (two lengths, a length and chunking, two hosts):
# the shape of request smuggling, which a server and a proxy in front of it read differently.
CLIENT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                            "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                            "expect"})


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers that can go on the wire as given, or a UsageError naming the bad one.

    A newline in a value would end the header early (or inject another), and HTTP/1.1 values
    are ASCII: both are the user's mistake, reported now instead of as a server that never
    answers. A header the client sets itself (`CLIENT_HEADERS`) is refused. Values are never
    shown (they may be keys).
    """
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise UsageError(f"header name {name!r} is not a valid HTTP header name (letters, "
                             "digits and -)")
        if name.lower() in CLIENT_HEADERS:
            raise UsageError(f"header {name!r} is set by the client itself (from the URL and the "
                             "body); sent twice it would be a request-smuggling shape: drop it")
        if not isinstance(value, str) or any(
                ord(char) > 126 or (ord(char) < 32 and char != "\t") for char in value):
            raise UsageError(f"the value of header {name!r} holds a line break, a control "
                             "character or a non-ASCII character; HTTP header values are one "
                             "line of ASCII (check --header, --api-key and the proxy tokens)")
    return dict(headers)


def raise_if_client_side(exc: BaseException, base_url: str) -> None:
    """Raise a UsageError if `exc` is our mistake rather than the server's state: retrying it
    would only wait out a timeout and then blame a server that was never asked."""
    shown = redact_url(base_url)
    if isinstance(exc, httpx.LocalProtocolError):
        raise UsageError(f"the request to {shown} could not be sent ({exc}); check --header "
                         "and --api-key") from None
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        raise UsageError(f"{shown}: {exc}; write the URL like http://127.0.0.1:8000") from None
    if (tls := tls_failure(exc)) is not None:
        raise UsageError(f"{shown}: {tls}") from None


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong if `exc` (or what caused it) is a TLS failure, with what to do."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return (f"the server's TLS certificate was refused ({current.verify_message}); "
                    "check the host name, or the machine's CA certificates")
        if isinstance(current, ssl.SSLError):
            return (f"TLS handshake failed ({current.reason or current}); if the server speaks "
                    "plain HTTP, use an http:// URL")
        current = current.__cause__ or current.__context__
    return None


# A non-streamed chat completion (id, text, finish reason, usage), checked as wire.py reads it.
ChatResult = ChatCompletion


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
    """Talks to one server; `api_key` goes in `Authorization: Bearer`, `headers` on every call,
    and each call ends within `timeout` seconds in all."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        self.base_url = normalize_base_url(base_url)
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        check_headers(all_headers)
        self.timeout = timeout
        self._http = bounded(httpx.Client(base_url=self.base_url, headers=all_headers,
                                          timeout=timeout))

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, *, timeout: float | None = None) -> httpx.Response:
        """A plain GET, for /health and friends, ending within `timeout` (or the client's);
        raises `httpx` transport errors as they come, `DeadlineExceeded` at the deadline."""
        return self._fetch("GET", path, timeout=timeout)

    def post_json(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST `payload` as JSON; the answer's JSON object (checked as untrusted input)."""
        return self._json(self._fetch("POST", path, json=payload))

    def models(self, *, timeout: float | None = None) -> list[str]:
        """The served model ids from GET /v1/models (within `timeout`, or the client's)."""
        return read_models(self._json(self._fetch("GET", "/v1/models", timeout=timeout)))

    def chat(self, model: str, prompt: str, *, max_tokens: int = 32,
             temperature: float = 0.0) -> ChatResult:
        """One non-streamed chat completion with a single user message."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": temperature}
        return read_chat_completion(
            self._json(self._fetch("POST", "/v1/chat/completions", json=payload)))

    def chat_stream(self, model: str, prompt: str, *, max_tokens: int = 32,
                    temperature: float = 0.0) -> StreamResult:
        """One streamed chat completion, asking for a final usage chunk."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "temperature": temperature, "stream": True,
                   "stream_options": {"include_usage": True}}
        parser = SSEParser()
        ids: set[str] = set()
        text: list[str] = []
        chunks, saw_done = 0, False
        prompt_tokens = completion_tokens = None
        with within(self.timeout, what="POST /v1/chat/completions (streamed)"), \
                self._http.stream("POST", "/v1/chat/completions", json=payload) as response:
            if response.status_code != 200:
                response.read()
                self._json(response)  # raises with the status and body
            events = [event for raw in response.iter_bytes() for event in parser.feed(raw)]
            for event in [*events, *parser.close()]:
                if event.data == "[DONE]":
                    saw_done = True
                    continue
                chunk = read_chunk(parse_object(event.data, what="a stream chunk"), chat=True)
                if chunk.error is not None:
                    raise EndpointError(f"the stream carried an error: {chunk.error}")
                chunks += 1
                ids.add(chunk.id or "")
                text.append(chunk.text)
                if chunk.prompt_tokens is not None:  # the usage chunk (usually the last)
                    prompt_tokens = chunk.prompt_tokens
                if chunk.completion_tokens is not None:
                    completion_tokens = chunk.completion_tokens
        if len(ids) > 1:
            raise EndpointError(f"stream chunks carry different ids: {sorted(ids)}")
        return StreamResult(id=ids.pop() if ids else "", text="".join(text), chunks=chunks,
                            saw_done=saw_done, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens)

    def _fetch(self, method: str, path: str, *, timeout: float | None = None,
               **request: Any) -> httpx.Response:
        """One call, whole, within its deadline; its body read to at most MAX_ANSWER_BYTES."""
        try:
            return fetch(self._http, method, path, seconds=self.timeout if timeout is None
                         else timeout, max_bytes=MAX_ANSWER_BYTES, **request)
        except UntrustedDataError as exc:  # too large: a bad answer, like any other
            raise MalformedResponse(str(exc)) from None

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise EndpointStatusError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code}: {one_line(response.text)}",
                status=response.status_code, url=str(response.request.url))
        return parse_object(response.content, what=f"the answer to {response.request.url.path}")
