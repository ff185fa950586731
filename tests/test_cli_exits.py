"""The README's exit codes, through the real `mls` command line, one documented exit at a time.

`mls new`: written (0), an output that exists (2, untouched), an invalid workload (2), a model the
Hub does not have (2), each with its one line and nothing half-written. `mls smoke` against a
loopback server that answers one status: 502/503/504 are retried until --ready-timeout, 401/403/404
are not (the server counts the requests). `MLS_GPU_CATALOG`: a user catalog that changes the plan,
and one that is wrong (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from modal_llm_serving.cli import cli
from tests.hub_server import running_hub

REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
MODEL = ["--model", "Qwen/Qwen3-8B-FP8", "--revision", REV]
PROGRESS = "planning and writing the app; then importing it with the Modal SDK to check it"


def run(args: list[str], **env: str) -> Result:
    result = CliRunner().invoke(cli, args, env=env or None)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result


def error_line(result: Result) -> str:
    """The one `Error:` line of a failed command (and there is one only)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- mls new: each documented exit ----------------------------------------------------------


def test_new_writes_a_checked_app_and_exits_0(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    result = run(["new", *MODEL, "--concurrency", "4", "-o", str(app)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [PROGRESS]
    assert result.stdout.startswith(f"wrote {app} from vllm_online.py")
    assert "mls check: no findings in 1 file" in result.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["app.py"]  # no temporary left
    assert 'MODEL_NAME = "Qwen/Qwen3-8B-FP8"' in app.read_text()


def test_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("# mine\n")
    result = run(["new", *MODEL, "-o", str(app)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        PROGRESS, f"Error: {app} exists; pass --force to overwrite it or choose another path"]
    assert result.stdout == ""
    assert app.read_text() == "# mine\n" and [p.name for p in tmp_path.iterdir()] == ["app.py"]


def test_new_refuses_an_invalid_workload_naming_the_field(tmp_path: Path) -> None:
    workload = tmp_path / "workload.toml"
    workload.write_text(f'model = "Qwen/Qwen3-8B-FP8"\nrevision = "{REV}"\nconcurrency = 0\n')
    result = run(["new", str(workload), "-o", str(tmp_path / "app.py")])
    assert result.exit_code == 2
    assert error_line(result) == ("Error: workload field 'concurrency': must be at least 1, "
                                  "got 0")
    assert result.stderr.splitlines()[-1].startswith("Error:") and result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["workload.toml"]


def test_new_refuses_a_model_the_hub_does_not_have(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub that answers (loopback) and has no such model: exit 2, the id named, no file."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    with running_hub({}) as hub:
        result = run(["new", "--model", "acme/no-such-model", "--revision", REV,
                      "-o", str(out / "app.py")], HF_ENDPOINT=hub.url)
        assert any("/api/models/acme/no-such-model/" in seen.path for seen in hub.requests)
    assert result.exit_code == 2
    line = error_line(result)
    assert f"{hub.url} has no model acme/no-such-model" in line and "check the id" in line
    assert result.stdout == "" and list(out.iterdir()) == []


# --- mls smoke: which statuses are retried --------------------------------------------------


@contextlib.contextmanager
def answering(status: int) -> Iterator[tuple[str, list[str]]]:
    """A loopback server answering every GET with `status`; yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b'{"error": "status %d"}' % status
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("status", [502, 504])
def test_smoke_retries_a_gateway_status_until_the_ready_timeout(status: int) -> None:
    with answering(status) as (url, asked):
        result = run(["smoke", url, "--ready-timeout", "2"])
    assert result.exit_code == 1
    assert len(asked) >= 2 and set(asked) == {"/health"}, asked  # retried, /health only
    *waits, last = result.stderr.splitlines()
    assert len(waits) >= len(asked) - 1  # a "retrying" line between two requests
    assert all(f"(HTTP {status}); retrying in" in wait for wait in waits), waits
    assert last == ("failed at 'ready'. Try: is the server starting? raise --ready-timeout, "
                    "or read the server's logs")
    assert "FAIL  ready" in result.stdout


@pytest.mark.parametrize(("status", "hint"), [
    (401, "the server wants an API key: pass --api-key or set MLS_API_KEY"),
    (403, "the key was refused: check --api-key / MLS_API_KEY against the server's key"),
    (404, "nothing is served at that path: check the URL"),
])
def test_smoke_does_not_retry_a_status_waiting_cannot_change(status: int, hint: str) -> None:
    """One request, then the one line; the ready timeout (30 s) is never waited out."""
    with answering(status) as (url, asked):
        result = run(["smoke", url, "--ready-timeout", "30"])
    assert result.exit_code == 1
    assert asked == ["/health"]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"failed at 'ready'. Try: {hint}"), line
    assert f"GET /health answered {status}" in result.stdout


# --- MLS_GPU_CATALOG ------------------------------------------------------------------------


def test_a_catalog_in_mls_gpu_catalog_changes_the_plan(tmp_path: Path) -> None:
    """The plan of a workload the built-in catalog puts on L4s moves to H100s once the user's
    catalog (named only by the environment) prices an H100 at a cent an hour."""
    plan = ["plan", *MODEL, "--concurrency", "8", "--json"]
    builtin = run(plan)
    assert builtin.exit_code == 0, builtin.output
    assert json.loads(builtin.stdout)["gpu"]["name"] != "H100"
    catalog = tmp_path / "my-gpus.toml"
    catalog.write_text("[gpus.H100]\nprice_per_hour = 0.01\n")
    mine = run(plan, MLS_GPU_CATALOG=str(catalog))
    assert mine.exit_code == 0, mine.output
    chosen = json.loads(mine.stdout)
    assert chosen["gpu"]["name"] == "H100" and chosen["gpu"]["price_per_hour"] == 0.01


@pytest.mark.parametrize(("text", "words"), [
    ("[gpus.H100]\nprice_per_hour = -1\n", "GPU 'H100' field 'price_per_hour' must be a finite"),
    ("[gpus.H100\n", "not valid TOML"),
    ("[gpu.H100]\nprice_per_hour = 1\n", "unknown table [gpu]"),
])
def test_a_bad_catalog_in_mls_gpu_catalog_is_one_line_and_exit_2(
        tmp_path: Path, text: str, words: str) -> None:
    catalog = tmp_path / "my-gpus.toml"
    catalog.write_text(text)
    result = run(["plan", *MODEL], MLS_GPU_CATALOG=str(catalog))
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and words in line, line
