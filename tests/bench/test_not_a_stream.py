"""An answer that is not a plain event stream (an HTML page, a gzip body) is a failed request
that names what came, never a bare "no tokens"."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli

STREAM = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
ANSWERS = {  # name: (headers, body)
    "html": ({"Content-Type": "text/html; charset=utf-8"}, b"<html><body>login</body></html>"),
    "gzip": ({"Content-Type": "text/event-stream", "Content-Encoding": "gzip"},
             gzip.compress(STREAM)),
    "no-type": ({}, b"nothing to see"),
}


@pytest.fixture(params=sorted(ANSWERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    headers, body = ANSWERS[request.param]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200 if self.path.startswith("/v1/") else 404)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", request.param
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("transport", ["raw", "httpx", "aiohttp"])
def test_the_content_type_is_named(server: tuple[str, str], transport: str,
                                   tmp_path: Path) -> None:
    url, name = server
    result = CliRunner().invoke(cli, ["bench", "run", url, "--model", "m", "-n", "1",
                                      "--input-len", "4", "--transport", transport,
                                      "--out", str(tmp_path / "o"), "--no-report"])
    assert result.exit_code == 1, result.output
    record = json.loads((tmp_path / "o" / "requests.jsonl").read_text())
    expected = {"html": "Content-Type text/html", "gzip": "Content-Encoding gzip",
                "no-type": "Content-Type missing"}[name]
    assert record["error"] == "no_tokens" and expected in record["error_detail"], record
