"""`mls smoke` and our client against the session's real vLLM, plus the official openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai import OpenAI

from modal_llm_serving.cli import cli
from modal_llm_serving.endpoint.client import OpenAIClient, normalize_base_url
from modal_llm_serving.endpoint.smoke import run_smoke
from modal_llm_serving.local.serve import LocalServer

from .conftest import TINY_API_KEY
from .ports import REFUSING_URL

pytestmark = pytest.mark.engine


def test_smoke_passes_against_real_vllm(tiny_server: LocalServer) -> None:
    result = CliRunner().invoke(cli, ["smoke", tiny_server.base_url, "--api-key", TINY_API_KEY])
    assert result.exit_code == 0, result.output
    for step in ("ready", "health", "models", "chat", "chat-stream"):
        assert f"PASS  {step}" in result.output
    assert "all steps passed" in result.output


def test_smoke_json_report_and_api_key_from_env(tiny_server: LocalServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLS_API_KEY", TINY_API_KEY)
    result = CliRunner().invoke(cli, ["smoke", f"{tiny_server.base_url}/v1/", "--json",
                                      "--header", "X-Trace: smoke-test"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["model"] == "tiny"
    assert [step["status"] for step in report["steps"]] == ["pass"] * 5
    assert TINY_API_KEY not in result.output


def test_smoke_without_key_fails_fast_at_models_with_a_hint(tiny_server: LocalServer) -> None:
    waits: list[str] = []
    report = run_smoke(tiny_server.base_url, ready_timeout=60, on_wait=waits.append)
    assert waits == [], "401 must not be retried"
    failed = report.failed
    assert failed is not None and failed.name == "models"
    assert "401" in failed.detail
    assert "--api-key" in failed.hint
    assert [step.status for step in report.steps][-2:] == ["skip", "skip"]


def test_smoke_wrong_model_name(tiny_server: LocalServer) -> None:
    result = CliRunner().invoke(cli, ["smoke", tiny_server.base_url, "--api-key", TINY_API_KEY,
                                      "--model", "not-served"])
    assert result.exit_code == 1
    assert "'not-served' is not served" in result.output
    assert "failed at 'models'" in result.output


def test_smoke_retries_until_deadline_on_closed_port() -> None:
    result = CliRunner().invoke(cli, ["smoke", REFUSING_URL, "--ready-timeout", "3"])
    assert result.exit_code == 1
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert retries and all("(ConnectError)" in line for line in retries), result.stderr
    assert "not ready after" in result.stdout and "ConnectError" in result.stdout
    assert result.stderr.splitlines()[-1].startswith("failed at 'ready'")


def test_smoke_bad_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["smoke", "localhost:8000"])
    assert result.exit_code == 2
    assert "not an http(s) URL" in result.output


def test_bad_header_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["smoke", "http://127.0.0.1:1", "--header", "nocolon"])
    assert result.exit_code == 2
    assert "is not 'Name: value'" in result.output


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    assert normalize_base_url(" https://x.modal.run ") == "https://x.modal.run"


def test_our_client_chat_and_stream(tiny_server: LocalServer) -> None:
    with OpenAIClient(tiny_server.base_url, api_key=TINY_API_KEY) as client:
        assert client.models() == ["tiny"]
        chat = client.chat("tiny", "hello", max_tokens=12)
        assert chat.id and chat.completion_tokens > 0 and chat.prompt_tokens > 0
        stream = client.chat_stream("tiny", "hello", max_tokens=12)
        assert stream.saw_done and stream.id
        assert stream.completion_tokens is not None and 0 < stream.completion_tokens <= 12


def test_openai_sdk_non_stream_and_stream(tiny_server: LocalServer) -> None:
    client = OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key=TINY_API_KEY)
    assert [model.id for model in client.models.list()] == ["tiny"]
    reply = client.chat.completions.create(
        model="tiny", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model="tiny", max_tokens=10, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}]))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None, "usage comes last, without choices"
    assert 0 < usage.completion_tokens <= 10
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_ready_wait_retries_503_but_not_401() -> None:
    """A scaled-to-zero endpoint answers 503 while it starts; a 401 will not change by waiting."""
    import http.server
    import threading

    answers = iter([503, 503, 503, 401])
    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = next(answers, 401)
            seen.append(status)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        waits: list[str] = []
        report = run_smoke(f"http://127.0.0.1:{server.server_port}", ready_timeout=30,
                           on_wait=waits.append)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [503, 503, 503, 401]
    assert len(waits) == 3 and all("HTTP 503" in message for message in waits)
    failed = report.failed
    assert failed is not None and failed.name == "ready" and "401" in failed.detail
    assert "--api-key" in failed.hint


@pytest.mark.engine
def test_proxy_auth_headers_are_sent_and_never_shown_or_stored(
        tiny_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal proxy auth (Servers, requires_proxy_auth) from env: used, never echoed or saved."""
    secret = "ws-proxy-secret-value-for-test"
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-proxy-id-for-test")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", secret)
    runner = CliRunner()
    smoke = runner.invoke(cli, ["smoke", tiny_server.base_url, "--api-key", TINY_API_KEY,
                                "--json"])
    assert smoke.exit_code == 0, smoke.output
    out = tmp_path / "bench"
    bench = runner.invoke(cli, ["bench", "run", tiny_server.base_url, "--api-key", TINY_API_KEY,
                                "-n", "2", "--input-len", "8", "--output-len", "4",
                                "--out", str(out)])
    assert bench.exit_code == 0, bench.output
    assert secret not in smoke.output + bench.output
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md"):
            assert secret not in path.read_text(), path
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["headers"] == {"Modal-Key": "***", "Modal-Secret": "***"}


def test_proxy_auth_needs_both_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODAL_PROXY_TOKEN_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["smoke", REFUSING_URL, "--proxy-token-id", "wk-x"])
    assert result.exit_code == 2 and "give both --proxy-token-id" in result.output
