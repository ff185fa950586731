"""A hostile OpenAI-compatible server on loopback that repeats what it was sent.

Every answer carries an echo: `leak` (text the test wants it to repeat: secrets it was never
sent, control characters), then each request header that is not plumbing (Authorization,
Modal-Key, X-Api-Key, ...) as sent, URL-encoded and JSON-quoted, then the request line and the
start of the body. `mode` picks where the echo goes:

- "ok": a working server whose model id is `model` and whose answers (the completion's text,
  every streamed token, the Hub's revision answer) are the echo;
- "error": every route answers 400 with the echo as the OpenAI-shaped error message;
- "stream-error": /v1/models works, and every stream carries the echo as an in-stream error.

/tokenize is always missing (404, echo in the body): the benchmark falls back to word counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["EchoServer", "echo_server"]

# Headers every client sends: leaving them out keeps the echo short (messages are cut at 200).
_PLUMBING = {"host", "content-type", "content-length", "accept", "accept-encoding",
             "connection", "user-agent"}


@dataclasses.dataclass
class EchoServer:
    """What the server does and what it saw: `url` once started, `echoes` every echo sent."""

    mode: str = "ok"
    model: str = "echo-model"
    leak: str = ""
    url: str = ""
    echoes: list[str] = dataclasses.field(default_factory=list)

    def echo(self, handler: BaseHTTPRequestHandler, body: bytes) -> str:
        parts = [self.leak]
        for name, value in handler.headers.items():
            if name.lower() not in _PLUMBING:
                parts.append(f"{name}: {value} / {urllib.parse.quote(value, safe='')} / "
                             f"{json.dumps(value)}")
        parts.append(f"{handler.command} {handler.path} {body[:60].decode('latin-1')}")
        text = " | ".join(part for part in parts if part)
        self.echoes.append(text)
        return text


@contextlib.contextmanager
def echo_server(**settings: Any) -> Iterator[EchoServer]:
    """Serve an `EchoServer(**settings)` on a free loopback port while the block runs."""
    state = EchoServer(**settings)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll: shutdown() waits for the loop to look up, and the redaction matrix starts
    # hundreds of these (the default half second each was a minute of the suite).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _streamed(body: bytes) -> bool:
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: EchoServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _answer(self, body: bytes) -> None:
        state, path = self.state, urllib.parse.urlsplit(self.path).path
        echo = state.echo(self, body)
        if path == "/tokenize" or path == "/detokenize":
            self._json(404, {"error": {"message": echo}})
        elif state.mode == "error":
            self._json(400, {"error": {"message": echo, "type": "BadRequestError"}})
        elif path == "/health":
            self._send(200, b"", "text/plain")
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": state.model, "object": "model"}]})
        elif path.startswith("/api/models/"):  # the Hub's revision answer
            self._json(200, {"sha": echo})
        elif _streamed(body):
            self._stream(echo)
        else:
            self._json(200, {"id": "c1", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": echo},
                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    def _stream(self, echo: str) -> None:
        if self.state.mode == "stream-error":
            events = [{"error": {"message": echo, "code": 500}}]
        else:
            events = [{"id": "c1", "choices": [{"index": 0, "delta": {"content": echo},
                                                "finish_reason": None}]},
                      {"id": "c1", "choices": [{"index": 0, "delta": {"content": " ok"},
                                                "finish_reason": "stop"}]},
                      {"id": "c1", "choices": [],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]
        data = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
        self._send(200, data + b"data: [DONE]\n\n", "text/event-stream")

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
