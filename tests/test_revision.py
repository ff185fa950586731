"""`mls revision`: the Hub's answer or a clear refusal, never a guessed hash."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from tests.ports import REFUSING_URL

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str | None]]]:
    """A stand-in Hub API on loopback (HF_ENDPOINT): a public, a gated and a broken model."""
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            routes = {"/api/models/org/public/revision/main": (200, {"sha": SHA}),
                      "/api/models/org/public/revision/v1": (200, {"sha": SHA[::-1]}),
                      "/api/models/org/gated/revision/main": (401, {"error": "gated"}),
                      "/api/models/org/broken/revision/main": (200, {"sha": "main"})}
            status, body = routes.get(self.path, (404, {"error": "not found"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # bound here, once
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield seen
    server.shutdown()
    server.server_close()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["revision", *args])
    return result.exit_code, result.output


def test_resolves_a_branch_and_a_tag(hub: list[tuple[str, str | None]]) -> None:
    assert run("org/public") == (0, SHA + "\n")
    assert run("org/public", "--ref", "v1") == (0, SHA[::-1] + "\n")


def test_gated_unknown_and_odd_answers_give_no_hash(hub: list[tuple[str, str | None]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for model, words in (("org/gated", "gated or private"), ("org/missing", "has no model"),
                         ("org/broken", "without a commit hash")):
        code, output = run(model)
        assert code == 1 and words in output, output
        assert not any(len(word) == 40 for word in output.split())
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    run("org/public")
    assert hub[-1][1] == "Bearer hf_test"


def test_offline_refuses_to_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", REFUSING_URL)  # a port that refuses
    code, output = run("org/public")
    assert code == 1 and "cannot be known offline: do not guess" in output
    code, output = run("not-a-hub-id")
    assert code == 2 and "not a Hub model id" in output
