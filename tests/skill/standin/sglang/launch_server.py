"""A stand-in for `python -m sglang.launch_server`: SGLang's start-up as its clients see it.

With the folder above this package first on PYTHONPATH, the recipe's own engine command runs
this file instead of SGLang. Standard library only, so any `python` runs it. It speaks what the
recipe's container start calls:

- /health (and /health_generate): 503 while "starting" (SGLang's answer until its warm-up is
  done), as many times as the test scripts, then 200; no key needed, as in SGLang.
- POST /v1/chat/completions: 401 without `Authorization: Bearer <--api-key>` (or, as vLLM reads
  it, $VLLM_API_KEY), 503 before /health has answered 200, else a short answer, streamed as
  server-sent events when asked.

A `vllm` on PATH that execs this module stands in for `vllm serve` the same way (the OpenAI
routes and /health are the same; vLLM's other arguments are left unread).

It serves on the listening socket the test bound (received over a Unix socket: the port is bound
once, by the test) and exits with an error if that is not the `--port` it was given. Each request
is appended to a log, one JSON line, before it is answered. Its settings are one JSON object in
the environment variable MLS_SGLANG_STANDIN: "handoff" (the Unix socket's path), "log" (a file),
"health" (the statuses /health answers first, or "never": 503 forever), "exit" (a code to exit
with at once, as an engine that fails while loading).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SETTINGS: dict[str, Any] = json.loads(os.environ["MLS_SGLANG_STANDIN"])
LOCK = threading.Lock()
STATE = {"up": False}


def receive_listener(path: str) -> socket.socket:
    """The listening socket the test bound, passed over the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        _, fds, _, _ = socket.recv_fds(conn, 1, 1)
    return socket.socket(fileno=fds[0])


def health_status() -> int:
    with LOCK:
        script = SETTINGS["health"]
        if script == "never":
            return 503
        status = script.pop(0) if script else 200
        STATE["up"] = STATE["up"] or status == 200
        return int(status)


class Handler(BaseHTTPRequestHandler):
    api_key = ""

    def do_GET(self) -> None:
        if self.path in ("/health", "/health_generate"):
            self.answer(health_status())
        else:
            self.answer(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path != "/v1/chat/completions":
            self.answer(404)
        elif self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.answer(401)
        elif not STATE["up"]:
            self.answer(503)
        elif body.get("stream"):
            self.stream()
        else:
            self.answer(200, {"choices": [{"message": {"role": "assistant", "content": "Paris."}}],
                              "usage": {"completion_tokens": 2}})

    def answer(self, status: int, data: dict[str, Any] | None = None) -> None:
        self.record(status)
        payload = json.dumps(data).encode() if data is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def stream(self) -> None:
        """Two content events, a usage event, [DONE]; the connection closes at the end."""
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [{"choices": [{"index": 0, "delta": {"content": piece}}]}
                  for piece in ("Par", "is.")]
        events.append({"choices": [], "usage": {"completion_tokens": 2}})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def record(self, status: int) -> None:
        entry = {"method": self.command, "path": self.path, "status": status,
                 "authorization": self.headers.get("Authorization")}
        with LOCK, open(SETTINGS["log"], "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the log file is the record


def main() -> None:
    parser = argparse.ArgumentParser(prog="sglang.launch_server (stand-in)")
    parser.add_argument("--port", type=int, required=True)
    key = os.environ.get("VLLM_API_KEY")  # `vllm serve` reads its key from the environment
    parser.add_argument("--api-key", required=key is None, default=key)
    args, _ = parser.parse_known_args()  # the rest is SGLang's to check (the parser tests)
    if SETTINGS.get("exit") is not None:
        sys.exit(SETTINGS["exit"])
    listener = receive_listener(SETTINGS["handoff"])
    if listener.getsockname()[1] != args.port:
        sys.exit(f"stand-in: told --port {args.port}, given {listener.getsockname()[1]}")
    Handler.api_key = args.api_key
    server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.serve_forever()


if __name__ == "__main__":
    main()
