"""`mls local serve` and the local engine: bad input, a dying engine, and the real SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from modal_llm_serving import local
from modal_llm_serving.cli import cli
from modal_llm_serving.engines import EngineConfig, for_local_cpu
from modal_llm_serving.errors import EngineStartError, UsageError
from modal_llm_serving.local import free_port, resolve_model, start_server
from modal_llm_serving.model_cache import DEFAULT_MODEL_ID

REV = "0123456789abcdef0123456789abcdef01234567"


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


# --- bad input: one clear line, non-zero exit, no traceback -----------------------------------


def test_unknown_model_path_is_refused() -> None:
    code, output = run(["local", "serve", "--model", "/no/such/model"])
    assert code == 2
    assert "no model folder at /no/such/model" in output
    assert "Traceback" not in output


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    code, output = run(["local", "serve", "--model", str(tmp_path)])
    assert code == 2
    assert "has no config.json" in output


def test_hub_id_without_revision_is_refused() -> None:
    code, output = run(["local", "serve", "--model", "Qwen/Qwen3-0.6B"])
    assert code == 2
    assert "without a revision; revisions are pinned" in output


def test_branch_name_is_not_a_pinned_revision() -> None:
    with pytest.raises(UsageError, match="not a commit hash"):
        resolve_model("Qwen/Qwen3-0.6B", "main")


def test_hub_id_with_commit_hash_is_accepted() -> None:
    assert resolve_model("Qwen/Qwen3-0.6B", REV) == ("Qwen/Qwen3-0.6B", REV, "Qwen/Qwen3-0.6B")


def test_revision_without_hub_id_is_refused() -> None:
    with pytest.raises(UsageError, match="applies to a Hub model id"):
        resolve_model(None, REV)


def test_port_already_taken(tiny_model_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, output = run(["local", "serve", "--model", str(tiny_model_path),
                            "--port", str(port)])
    assert code == 2
    assert f"port {port} is already in use" in output
    assert "--port" in output


def test_engine_not_installed(monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> None:
    monkeypatch.setattr(local, "engine_build", lambda: None)
    code, output = run(["local", "serve", "--model", str(tiny_model_path)])
    assert code == 1
    assert "vLLM is not installed" in output
    assert "pip install" in output and "make serve" in output
    assert "Traceback" not in output


@pytest.mark.engine
def test_engine_dying_at_start_shows_its_log(tmp_path: Path, tiny_model_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_path.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    config["model_type"] = "no-such-model-type"
    (broken / "config.json").write_text(json.dumps(config))
    server = start_server(for_local_cpu(EngineConfig(model=str(broken), port=free_port())),
                          log_path=tmp_path / "engine.log")
    with server, pytest.raises(EngineStartError) as caught:
        server.wait_ready(timeout=240)
    assert "exited with code" in str(caught.value)
    assert "no-such-model-type" in caught.value.log_tail or "NoSuchModel" in caught.value.log_tail


# --- the real packaged model, through the real CLI process -------------------------------------


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modal_llm_serving", "local", "serve", "--port", str(port),
         "--log-file", str(tmp_path / "smollm2.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield process, port
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.stdout is not None
    process.stdout.close()


@pytest.mark.engine
def test_smollm2_answers_paris_and_sigterm_leaves_no_orphans(
        serve_process: tuple[subprocess.Popen[str], int]) -> None:
    from openai import OpenAI

    process, port = serve_process
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 600  # first run converts the model (~25 s), then starts vLLM
    for line in process.stdout:
        output.append(line)
        if "Ctrl-C stops the engine" in line or time.monotonic() > deadline:
            break
    text = "".join(output)
    assert "all steps passed" in text, text
    assert "engine: vllm" in text
    assert f"base URL: http://127.0.0.1:{port}/v1" in text

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID, temperature=0, max_tokens=32,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in (reply.choices[0].message.content or "")

    engine = psutil.Process(process.pid).children(recursive=True)
    assert len(engine) >= 2, "the API server and its engine core"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(engine, timeout=10)
    assert alive == [], f"processes left after SIGTERM: {alive}"
