"""`mls check`: a Modal LLM app file checked against the serving rules.

Most rules read the file's syntax tree (`ast`), resolving module-level constants so that
`gpu=f"{GPU_TYPE}:{N_GPU}"` or `MODEL_REVISION = "..."` count as what they say. Then, where it is
safe (the file parses and runs nothing but definitions at import), the file is imported with the
real Modal SDK in a child process with a timeout: Modal's decorators validate their arguments at
import (e.g. `max_inputs` with `http_server` raises), and a file that crashes or hangs on import
becomes a finding, never a traceback.

Each rule has an id, a one-line message (why it matters) and a fix; `RULES` lists them all.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import UsageError

__all__ = ["RULES", "Finding", "Rule", "check_file", "check_files", "check_source"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: its id, a short name, why it matters and how to fix it."""

    id: str
    name: str
    message: str
    fix: str


RULES: tuple[Rule, ...] = (
    Rule("MLS001", "unpinned-revision",
         "the model is pulled from a mutable registry without a pinned commit: a push to the "
         "repo silently changes what you serve",
         "set MODEL_REVISION to a commit hash and pass it (revision=MODEL_REVISION / --revision)"),
    Rule("MLS002", "weights-not-on-volume",
         "model weights are not cached on a modal.Volume, so every cold start downloads them",
         "mount a Volume at the Hugging Face cache, e.g. volumes={'/root/.cache/huggingface': "
         "modal.Volume.from_name('hf-cache', create_if_missing=True)}"),
    Rule("MLS003", "compile-cache",
         "engine compilation artifacts (torch.compile, CUDA graphs, DeepGEMM) are not on a "
         "Volume of their own, so each cold start recompiles, or a cache wipe takes the weights",
         "mount a second Volume at the engine's cache (/root/.cache/vllm for vLLM, "
         "~/.cache/deepgemm for SGLang), separate from the weights Volume"),
    Rule("MLS004", "no-hf-xet",
         "HF_XET_HIGH_PERFORMANCE=1 is not set, so the first weight download runs far below "
         "the network's speed",
         "add .env({'HF_XET_HIGH_PERFORMANCE': '1'}) to the image"),
    Rule("MLS005", "no-readiness-check",
         "nothing polls /health: Modal's web_server readiness is only a TCP check, so success "
         "can be reported (and requests routed) before the model is loaded",
         "poll http://127.0.0.1:PORT/health until 200 (and process.poll() for a crash) before "
         "the server function returns or the smoke test reports success"),
    Rule("MLS006", "no-smoke-path",
         "there is no @app.local_entrypoint, so `modal run FILE` cannot prove the app answers",
         "add an @app.local_entrypoint() that waits for /health and sends one OpenAI chat "
         "request (a client under `if __name__ == \"__main__\":` doing both also counts)"),
    Rule("MLS007", "several-patterns",
         "more than one serving pattern in one file: their knobs and lifecycles conflict",
         "keep one pattern per file (split online, low-latency and offline into their own apps)"),
    Rule("MLS008", "max-inputs-with-http-server",
         "@modal.concurrent(max_inputs=...) with modal.experimental.http_server raises "
         "TypeError at import",
         "use @modal.concurrent(target_inputs=N) only with http_server"),
    Rule("MLS009", "dev-mode-public",
         "vLLM dev mode (sleep mode) is on behind a public endpoint (@modal.web_server, or "
         "@app.server with unauthenticated=True): anyone with the URL can call /sleep, "
         "/wake_up or /collective_rpc",
         "bind vLLM to 127.0.0.1 on its own port behind an allow-list forwarder, or keep proxy "
         "auth (requires_proxy_auth=True; a Server's default)"),
    Rule("MLS010", "low-latency-no-region",
         "a low-latency server without a pinned region: the GPU may run far from the proxy "
         "and clients, adding a round trip to every token",
         "set region=... on the class (and proxy_regions=[...] on http_server) to where your "
         "users are"),
    Rule("MLS011", "low-latency-no-503-retry",
         "a scaled-to-zero http_server answers 503 while it scales up; a client that does not "
         "retry fails the first request",
         "retry on HTTP 503 (and timeouts) with a deadline in the smoke test / client"),
    Rule("MLS012", "secret-in-code",
         "a secret (API key, token, password) is written in the file: it lands in git, logs "
         "and images",
         "read it from a modal.Secret (modal.Secret.from_name) and os.environ at run time"),
    Rule("MLS013", "unpinned-engine",
         "the engine version or base image is not pinned (`vllm` without ==, an image tag "
         "'latest' or none): a rebuild can change the engine under you",
         "pin the engine (vllm==X.Y.Z, sglang==X.Y.Z) and use a fixed image tag"),
    Rule("MLS014", "gpu-snapshot-multi-gpu",
         "GPU memory snapshots are enabled with several GPUs per container, which snapshots "
         "do not support",
         "use one GPU with enable_gpu_snapshot, or turn GPU snapshots off for tensor parallelism"),
    Rule("MLS015", "extra-endpoints",
         "the app exposes more ports or endpoints than serving needs (several web endpoints, "
         "tunnels), widening what the public can reach",
         "expose one web endpoint for the server; drop extra endpoints and modal.forward "
         "tunnels"),
    Rule("MLS016", "syntax-error",
         "the file does not parse as Python", "fix the syntax error at the reported line"),
    Rule("MLS017", "import-failed",
         "importing the file with the Modal SDK fails, so `modal deploy` would fail too",
         "run `python -c 'import runpy; runpy.run_path(\"FILE\")'` and fix the error shown"),
    Rule("MLS018", "import-timeout",
         "importing the file did not finish in time: it does work (or waits) at import",
         "move work at import time into functions (@modal.enter, the local_entrypoint)"),
    Rule("MLS019", "server-routing-far-from-compute",
         "a Server's routing_region is in another part of the world than its compute_region: "
         "every request crosses regions (tens of ms each way) before it reaches a GPU",
         "set routing_region to the region nearest compute_region (us-east, us-west, eu-west "
         "or ap-south), or move compute_region"),
    Rule("MLS020", "unauthenticated-api-without-key",
         "a Server with unauthenticated=True serves an OpenAI-compatible API that requires no "
         "key: anyone with the URL can generate on your GPUs",
         "keep proxy auth (drop unauthenticated=True), or have the engine require an API key "
         "from a modal.Secret (VLLM_API_KEY / SGLang --api-key)"),
    Rule("MLS021", "concurrent-on-server",
         "@modal.concurrent (or @modal.method) on an @app.server class: Servers take "
         "target_concurrency/max_concurrency in @app.server and expose only HTTP",
         "remove @modal.concurrent / @modal.method; set target_concurrency= and "
         "max_concurrency= on @app.server"),
)
# Where a Server's routing regions are; a compute region belongs to the area it starts with.
_ROUTING_AREAS = {"us-east": "us", "us-west": "us", "eu-west": "eu", "ap-south": "ap"}
# Region prefix -> the part of the world whose routing region serves it (None: none nearby).
_AREAS = {"us": "us", "ca": "us", "mx": "us", "eu": "eu", "uk": "eu", "ap": "ap", "jp": "ap",
          "au": "ap", "me": None, "sa": None, "af": None}
_BY_ID = {rule.id: rule for rule in RULES}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule broken at one place."""

    rule: Rule
    path: str
    line: int
    detail: str  # what exactly was found here

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.id, "name": self.rule.name, "path": self.path,
                "line": self.line, "detail": self.detail, "why": self.rule.message,
                "fix": self.rule.fix}

    def location(self) -> str:
        return f"{self.path}:{self.line}"


class _Unknown:
    """A value the checker cannot work out statically."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Any = _Unknown()
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
_VERSION = re.compile(r"^\d+(\.\d+){1,3}([a-z0-9.+-]*)$")
_TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style key
    re.compile(r"\b(ak|as)-[A-Za-z0-9]{20,}\b"),  # Modal token id / secret
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MODEL_IN_COMMAND = re.compile(r"(?:vllm\s+serve|--model(?:-path)?)[ =]+([\w.-]+/[\w.-]+)")
_REVISION_IN_COMMAND = re.compile(r"--revision[ =]+[0-9a-f]{7,40}\b")
_SECRET_NAME = re.compile(r"(?i)(^|_)(api_?key|token|password|passwd|secret_?key|access_?key)$")
_PLACEHOLDER = re.compile(r"(?i)^(empty|unused|none|null|fake|test|changeme)$|your|example|"
                          r"placeholder|dummy|not[-_ ]?(used|needed|a[-_ ]?secret)|no[-_ ]?key|"
                          r"xxxx|[<{$]")
_ENGINE_PACKAGES = ("vllm", "sglang")
_WEB_DECORATORS = ("web_server", "http_server", "fastapi_endpoint", "web_endpoint", "asgi_app",
                   "wsgi_app")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return ""


class _Module:
    """The parsed file plus what the rules ask of it."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.tree = tree
        self.source = source
        nodes = list(ast.walk(tree))
        # Inside a function, a parameter resolves to its default, e.g. `"--host", host` in
        # engine_command(*, host="127.0.0.1"): `scopes` maps each node in a function to those.
        self.scopes: dict[int, dict[str, ast.expr]] = {}
        for function in nodes:
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                args = function.args
                positional = args.posonlyargs + args.args
                pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults,
                              strict=True),
                         *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                           if d is not None)]
                scope = {arg.arg: default for arg, default in pairs}
                for inner in ast.walk(function):  # walked outer first: the innermost wins
                    self.scopes[id(inner)] = scope
        self.constants: dict[str, Any] = {}
        self.constant_lines: dict[str, int] = {}
        for stmt in tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            for target in targets:
                if isinstance(target, ast.Name) and value is not None:
                    self.constants[target.id] = self.resolve(value)
                    self.constant_lines[target.id] = stmt.lineno
        self.calls = [n for n in nodes if isinstance(n, ast.Call)]
        self.strings = [n for n in nodes
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        self.sequences = [n for n in nodes if isinstance(n, ast.List | ast.Tuple)]
        self.decorated = [n for n in ast.walk(tree)
                          if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]

    def resolve(self, node: ast.AST | None) -> Any:
        """The value of an expression built from literals and module constants, else UNKNOWN."""
        if node is None:
            return UNKNOWN
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            default = self.scopes.get(id(node), {}).get(node.id)
            if default is not None and not (isinstance(default, ast.Name)
                                            and default.id == node.id):
                return self.resolve(default)
            return self.constants.get(node.id, UNKNOWN)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "str" and len(node.args) == 1):
            value = self.resolve(node.args[0])
            return UNKNOWN if value is UNKNOWN else str(value)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                part = self.resolve(value.value if isinstance(value, ast.FormattedValue)
                                    else value)
                if part is UNKNOWN:
                    return UNKNOWN
                parts.append(str(part))
            return "".join(parts)
        if isinstance(node, ast.BinOp):
            left, right = self.resolve(node.left), self.resolve(node.right)
            if left is UNKNOWN or right is UNKNOWN:
                return UNKNOWN
            try:
                if isinstance(node.op, ast.Mult):
                    return left * right
                if isinstance(node.op, ast.Add):
                    return left + right
            except TypeError:
                return UNKNOWN
            return UNKNOWN
        if isinstance(node, ast.List | ast.Tuple):
            return [self.resolve(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            mapping: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values, strict=True):
                resolved = self.resolve(key) if key is not None else UNKNOWN  # None: **spread
                if isinstance(resolved, str | int | float | bool):  # hashable literal keys only
                    mapping[resolved] = self.resolve(value)
            return mapping
        return UNKNOWN

    def calls_named(self, *suffixes: str) -> Iterator[ast.Call]:
        for call in self.calls:
            name = _dotted(call.func)
            if any(name == s or name.endswith("." + s) for s in suffixes):
                yield call

    def decorators(self, *suffixes: str) -> Iterator[tuple[ast.AST, ast.expr]]:
        """(decorated definition, decorator) pairs whose decorator name ends with a suffix."""
        for definition in self.decorated:
            assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for decorator in definition.decorator_list:
                name = _dotted(decorator)
                if any(name == s or name.endswith("." + s) for s in suffixes):
                    yield definition, decorator

    def has_string(self, needle: str) -> bool:
        return any(needle in str(s.value) for s in self.strings)

    def mentions(self, name: str) -> bool:
        return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
                   for n in ast.walk(self.tree))


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _line(node: ast.AST | None) -> int:
    return getattr(node, "lineno", 1) or 1


class _Checker:
    def __init__(self, module: _Module, path: str) -> None:
        self.m = module
        self.path = path
        self.findings: list[Finding] = []

    def add(self, rule_id: str, line: int, detail: str) -> None:
        self.findings.append(Finding(_BY_ID[rule_id], self.path, line, detail))

    # what the file is
    def model_reference(self) -> tuple[str, int] | None:
        """(Hub id, line) of the model the file serves, if it names one."""
        name = self.m.constants.get("MODEL_NAME")
        if isinstance(name, str) and "/" in name and not name.startswith(("/", ".")):
            return name, self.m.constant_lines["MODEL_NAME"]
        for call in self.m.calls_named("snapshot_download", "hf_hub_download", "LLM",
                                       "from_pretrained"):
            value = self.m.resolve(_kwarg(call, "model") or _kwarg(call, "repo_id")
                                   or (call.args[0] if call.args else None))
            if isinstance(value, str) and "/" in value and not value.startswith(("/", ".")):
                return value, _line(call)
        for flag, value, line in self._argv_pairs():  # ["vllm", "serve", M] / ["--model", M]
            if flag in ("serve", "--model", "--model-path") and isinstance(value, str) and (
                    _HUB_ID.match(value)):
                return value, line
        for string in self.m.strings:  # a shell command line in one string
            if match := _MODEL_IN_COMMAND.search(str(string.value)):
                return match.group(1), _line(string)
        return None

    def engines(self) -> set[str]:
        """Engines the file installs, imports or launches (not ones it merely could build)."""
        found: set[str] = set()
        for node in ast.walk(self.m.tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names} & set(_ENGINE_PACKAGES)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module.split(".")[0]} & set(_ENGINE_PACKAGES)
        for spec, _ in self.package_specs():
            package = re.split(r"[\[=<>~! ]", spec.strip(), maxsplit=1)[0].lower()
            if package in _ENGINE_PACKAGES:
                found.add(package)
        for call in self.m.calls_named("from_registry"):
            tag = self.m.resolve(call.args[0]) if call.args else UNKNOWN
            found |= {e for e in _ENGINE_PACKAGES if isinstance(tag, str) and e in tag.lower()}
        for call in self.m.calls:
            name = _dotted(call.func).split(".")[-1]
            if name == "LLM":
                found.add("vllm")
        return found

    def package_specs(self) -> Iterator[tuple[str, int]]:
        for call in self.m.calls_named("pip_install", "uv_pip_install"):
            for arg in call.args:
                values = self.m.resolve(arg)
                for spec in values if isinstance(values, list) else [values]:
                    if isinstance(spec, str):
                        yield spec, _line(call)

    def patterns(self) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for _, decorator in self.m.decorators("web_server"):
            found.append(("web_server", _line(decorator)))
        for _, decorator in self.m.decorators("http_server"):
            found.append(("http_server", _line(decorator)))
        for _, decorator in self.m.decorators("app.server", "server"):
            if _dotted(decorator).split(".")[-1] == "server":
                found.append(("app.server", _line(decorator)))
        for call in self.m.calls_named("LLM"):
            found.append(("offline LLM", _line(call)))
        return found

    def run(self) -> list[Finding]:
        model = self.model_reference()
        engines = self.engines()
        patterns = self.patterns()
        http_kinds = {kind for kind, _ in patterns if kind != "offline LLM"}
        low_latency = bool(http_kinds & {"http_server", "app.server"})
        self.revision(model)
        self.volumes(model, engines)
        if model and not self._xet_on():
            self.add("MLS004", model[1], "HF_XET_HIGH_PERFORMANCE is never set to '1'")
        if http_kinds and not (self.m.has_string("/health")):
            self.add("MLS005", patterns[0][1], "no request to /health anywhere in the file")
        entrypoints = list(self.m.decorators("local_entrypoint"))
        if not entrypoints and not self._main_block_client():
            self.add("MLS006", 1, "no @app.local_entrypoint() (nor a __main__ client that hits "
                     "/health and one chat completion)")
        kinds = sorted({kind for kind, _ in patterns})
        if len(kinds) > 1 or len(engines) > 1:
            what = ", ".join(kinds) if len(kinds) > 1 else " and ".join(sorted(engines))
            self.add("MLS007", sorted(line for _, line in patterns)[-1] if patterns else 1,
                     f"found {what}")
        for definition in self.servers("http_server"):
            for decorator in definition.decorator_list:
                if (isinstance(decorator, ast.Call) and _dotted(decorator.func).endswith(
                        "concurrent") and _kwarg(decorator, "max_inputs") is not None):
                    self.add("MLS008", _line(decorator), "@modal.concurrent(max_inputs=...) on "
                             "an http_server class")
        self.dev_mode()
        self.modal_servers()
        if low_latency:
            self.region(entrypoints)
        self.secrets()
        self.pins()
        self.gpu_snapshot()
        self.endpoints()
        return self.findings

    def _main_block_client(self) -> bool:
        """An `if __name__ == "__main__":` block in a file that calls /health and chat."""
        has_main = any(isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test)
                       for stmt in self.m.tree.body)
        chat = self.m.has_string("chat/completions") or any(
            _dotted(c.func).endswith("chat.completions.create") for c in self.m.calls)
        return has_main and chat and self.m.has_string("/health")

    def revision(self, model: tuple[str, int] | None) -> None:
        if model is None:
            return
        revision = self.m.constants.get("MODEL_REVISION", UNKNOWN)
        line = self.m.constant_lines.get("MODEL_REVISION", model[1])
        passed = [self.m.resolve(_kwarg(c, "revision")) for c in self.m.calls
                  if _kwarg(c, "revision") is not None]
        if "MODEL_REVISION" in self.m.constants:
            if not (isinstance(revision, str) and _HEX.match(revision)):
                self.add("MLS001", line, f"MODEL_REVISION = {revision!r} is not a commit hash")
            elif not self.m.mentions("MODEL_REVISION") and not passed:
                self.add("MLS001", line, "MODEL_REVISION is defined but never passed on")
            return
        pinned = [v for v in passed if isinstance(v, str) and _HEX.match(v)]
        if not pinned and not self._revision_in_argv():
            self.add("MLS001", model[1], f"{model[0]} is loaded with no pinned revision")

    def _revision_in_argv(self) -> bool:
        if any(flag == "--revision" and isinstance(value, str) and _HEX.match(value)
               for flag, value, _ in self._argv_pairs()):
            return True
        return any(_REVISION_IN_COMMAND.search(str(s.value)) for s in self.m.strings)

    def _xet_on(self) -> bool:
        for call in self.m.calls_named("env"):
            for arg in call.args:
                mapping = self.m.resolve(arg)
                if isinstance(mapping, dict) and str(mapping.get("HF_XET_HIGH_PERFORMANCE")) in (
                        "1", "True", "true"):
                    return True
        for node in ast.walk(self.m.tree):  # os.environ["HF_XET_HIGH_PERFORMANCE"] = "1"
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
                key = self.m.resolve(node.targets[0].slice)
                if key == "HF_XET_HIGH_PERFORMANCE" and str(self.m.resolve(node.value)) == "1":
                    return True
        return False

    def _volume_names(self) -> dict[str, str]:
        """Variable name -> Volume name for `x = modal.Volume.from_name("name", ...)`."""
        names: dict[str, str] = {}
        for stmt in ast.walk(self.m.tree):
            if (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Call)
                    and _dotted(stmt.value.func).endswith("Volume.from_name")):
                value = self.m.resolve(stmt.value.args[0]) if stmt.value.args else UNKNOWN
                names[stmt.targets[0].id] = value if isinstance(value, str) else stmt.targets[0].id
        return names

    def _mounts(self) -> list[tuple[str, str, int]]:
        """(mount path, volume identity, line) for every volumes={...} entry."""
        names = self._volume_names()
        mounts = []
        for call in self.m.calls:
            value = _kwarg(call, "volumes")
            if not isinstance(value, ast.Dict):
                continue
            for key, vol in zip(value.keys, value.values, strict=True):
                path = self.m.resolve(key)
                if isinstance(vol, ast.Name):
                    ident = names.get(vol.id, vol.id)
                elif isinstance(vol, ast.Call) and vol.args:
                    ident = str(self.m.resolve(vol.args[0]))
                else:
                    ident = ast.unparse(vol)
                mounts.append((str(path), ident, _line(call)))
        return mounts

    def volumes(self, model: tuple[str, int] | None, engines: set[str]) -> None:
        mounts = self._mounts()
        server_line = next((_line(d) for _, d in self.m.decorators("function", "cls")),
                           model[1] if model else 1)
        weight_mounts = [m for m in mounts if re.search(r"hugging|/hf|hf[-_]|models?\b|weights",
                                                        m[0], re.I)]
        if model and not weight_mounts:
            self.add("MLS002", server_line, "no Volume is mounted at the Hugging Face cache "
                     "(or a models/weights folder)")
        if not engines:
            return
        compile_mounts = [m for m in mounts if re.search(r"vllm|compile|inductor|triton|deepgemm|"
                                                         r"sglang|torch", m[0], re.I)]
        broad = [m for m in mounts if m[0].rstrip("/") in ("/root/.cache", "/root", "/cache")]
        if broad:
            self.add("MLS003", broad[0][2], f"one Volume at {broad[0][0]} holds weights and "
                     "compile caches together")
            return
        if not compile_mounts:
            self.add("MLS003", server_line, "no Volume for the engine's compile cache")
            return
        weight_ids = {m[1] for m in weight_mounts}
        for path, ident, line in compile_mounts:
            if ident in weight_ids:
                self.add("MLS003", line, f"the compile cache at {path} shares the weights "
                         f"Volume {ident!r}")

    def _argv_pairs(self) -> Iterator[tuple[Any, Any, int]]:
        """(flag, next value, line) for adjacent items of list/tuple literals (argv)."""
        for node in self.m.sequences:
            values = [self.m.resolve(e) for e in node.elts]
            for i, value in enumerate(values[:-1]):
                yield value, values[i + 1], _line(node)

    def dev_mode(self) -> None:
        dev = any(self.m.resolve(_kwarg(c, "enable_sleep_mode")) is True for c in self.m.calls)
        dev = dev or any(s.value == "--enable-sleep-mode" for s in self.m.strings)
        for node in ast.walk(self.m.tree):
            if isinstance(node, ast.Dict):
                mapping = self.m.resolve(node)
                if str(mapping.get("VLLM_SERVER_DEV_MODE")) in ("1", "True", "true"):
                    dev = True
        if not dev:
            return
        hosts: set[Any] = set()
        ports: set[Any] = set()
        for flag, value, _ in self._argv_pairs():
            if flag == "--host":
                hosts.add(value)
            elif flag == "--port":
                ports.add(value)
        loopback = bool(hosts) and hosts <= {"127.0.0.1", "localhost", "::1"}
        for _, decorator in self.m.decorators("web_server"):
            call = decorator if isinstance(decorator, ast.Call) else None
            if call is not None and self.m.resolve(_kwarg(call, "requires_proxy_auth")) is True:
                continue
            port = self.m.resolve((_kwarg(call, "port") or (call.args[0] if call.args else None))
                                  if call else None)
            if loopback and port is not UNKNOWN and port not in ports:
                continue  # the engine is private; the public port is something in front of it
            self.add("MLS009", _line(decorator), "sleep mode / VLLM_SERVER_DEV_MODE with the "
                     "engine reachable on the public web_server port")
        for _, call in self._server_calls():  # a Server is public only if unauthenticated
            if self.m.resolve(_kwarg(call, "unauthenticated")) is not True:
                continue
            port_node = _kwarg(call, "port")
            port = self.m.resolve(port_node) if port_node is not None else 8000
            if loopback and port is not UNKNOWN and port not in ports:
                continue
            self.add("MLS009", _line(call), "sleep mode / VLLM_SERVER_DEV_MODE on a Server "
                     "with unauthenticated=True, the engine on its public port")

    def _server_calls(self) -> list[tuple[ast.AST, ast.Call]]:
        """(class, its `@app.server(...)` call) for every Modal Server in the file."""
        found = []
        for definition, decorator in self.m.decorators("server"):
            if isinstance(decorator, ast.Call) and not _dotted(decorator.func).endswith(
                    ("web_server", "http_server")):
                found.append((definition, decorator))
        return found

    def _requires_api_key(self) -> bool:
        """The engine is started with an API key (vLLM's env var or flag, SGLang's flag)."""
        if self.m.has_string("VLLM_API_KEY") or self.m.has_string("--api-key"):
            return True
        return any(_kwarg(call, "api_key") is not None for call in self.m.calls)

    def modal_servers(self) -> None:
        """Rules of `@app.server`: proxy auth, routing vs compute region, its decorators."""
        for definition, call in self._server_calls():
            unauthenticated = self.m.resolve(_kwarg(call, "unauthenticated")) is True
            if unauthenticated and not self._requires_api_key():
                self.add("MLS020", _line(call), "unauthenticated=True and no API key for the "
                         "engine")
            routing = self.m.resolve(_kwarg(call, "routing_region")) if _kwarg(
                call, "routing_region") is not None else "us-east"  # the SDK's default
            compute = self.m.resolve(_kwarg(call, "compute_region"))
            computes = compute if isinstance(compute, list) else [compute]
            area = _ROUTING_AREAS.get(routing) if isinstance(routing, str) else None
            for region in computes:
                if not (isinstance(region, str) and area):
                    continue
                region_area = next((_AREAS[prefix] for prefix in _AREAS if region == prefix
                                    or region.startswith(prefix + "-")), None)
                if region_area is not None and region_area != area:
                    self.add("MLS019", _line(call), f"routing_region {routing!r} with "
                             f"compute_region {region!r}")
            assert isinstance(definition, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            forbidden = [d for d in definition.decorator_list
                         if _dotted(d).split(".")[-1] == "concurrent"]
            if isinstance(definition, ast.ClassDef):
                forbidden += [d for item in definition.body
                              if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                              for d in item.decorator_list
                              if _dotted(d).split(".")[-1] == "method"]
            for decorator in forbidden:
                name = _dotted(decorator).split(".")[-1]
                self.add("MLS021", _line(decorator), f"@modal.{name} on a Server")

    def servers(self, *kinds: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
        """Definitions carrying one of the `kinds` decorators (e.g. http_server)."""
        found = []
        for definition in self.m.decorated:
            assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            names = [_dotted(d).split(".")[-1] for d in definition.decorator_list]
            if any(kind in names for kind in kinds):
                found.append(definition)
        return found

    def region(self, entrypoints: list[tuple[ast.AST, ast.expr]]) -> None:
        for definition in self.servers("http_server", "server"):
            for call in definition.decorator_list:
                if not (isinstance(call, ast.Call)
                        and _dotted(call.func).split(".")[-1] in ("cls", "function", "server")):
                    continue
                given = [_kwarg(call, key) for key in ("region", "compute_region")]
                values = [self.m.resolve(node) for node in given if node is not None]
                # a value the checker cannot work out (an env lookup) gets the benefit of doubt
                if not any(v is UNKNOWN or v not in (None, "", []) for v in values):
                    self.add("MLS010", _line(call), "no region=... on the low-latency server")
        has_503 = any(isinstance(n, ast.Constant) and n.value == 503
                      for n in ast.walk(self.m.tree))
        if not has_503:
            line = _line(entrypoints[0][1]) if entrypoints else 1
            self.add("MLS011", line, "no retry on HTTP 503 in the file's client")

    def secrets(self) -> None:
        for string in self.m.strings:
            if any(pattern.search(str(string.value)) for pattern in _TOKEN_PATTERNS):
                self.add("MLS012", _line(string), "a string that looks like a live token")
        for stmt in ast.walk(self.m.tree):
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    name = (target.id if isinstance(target, ast.Name) else
                            str(self.m.resolve(target.slice)) if isinstance(target, ast.Subscript)
                            else "")
                    if _SECRET_NAME.search(name) and self._literal_secret(stmt.value):
                        self.add("MLS012", _line(stmt), f"{name} is assigned a literal value")
        for call in self.m.calls:
            for keyword in call.keywords:
                if keyword.arg and _SECRET_NAME.search(keyword.arg) and self._literal_secret(
                        keyword.value):
                    self.add("MLS012", _line(call), f"{keyword.arg}= is passed a literal value")
            if _dotted(call.func).endswith("Secret.from_dict") and call.args:
                mapping = self.m.resolve(call.args[0])
                if isinstance(mapping, dict) and any(isinstance(v, str) and v
                                                     for v in mapping.values()):
                    self.add("MLS012", _line(call), "modal.Secret.from_dict with literal values")
        for sequence in self.m.sequences:
            for i, item in enumerate(sequence.elts[:-1]):
                flag, value = self.m.resolve(item), sequence.elts[i + 1]
                if flag in ("--api-key", "--hf-token", "--token") and isinstance(
                        value, ast.Constant) and self._literal_secret(value):
                    self.add("MLS012", _line(sequence), f"{flag} followed by a literal value")

    def _literal_secret(self, node: ast.expr) -> bool:
        if not isinstance(node, ast.Constant | ast.JoinedStr):
            return False
        value = self.m.resolve(node)
        return isinstance(value, str) and len(value) >= 8 and not _PLACEHOLDER.search(value)

    def pins(self) -> None:
        for name in ("VLLM_VERSION", "SGLANG_VERSION"):
            value = self.m.constants.get(name)
            if name in self.m.constants and not (isinstance(value, str)
                                                 and _VERSION.match(value)):
                self.add("MLS013", self.m.constant_lines[name], f"{name} = {value!r}")
        for spec, line in self.package_specs():
            package = re.split(r"[\[=<>~! ]", spec.strip(), maxsplit=1)[0].lower()
            if package in _ENGINE_PACKAGES and "==" not in spec:
                self.add("MLS013", line, f"{spec!r} is not pinned with ==")
        for call in self.m.calls_named("from_registry"):
            tag = self.m.resolve(call.args[0]) if call.args else UNKNOWN
            if isinstance(tag, str):
                image_tag = tag.rsplit("/", 1)[-1]
                if ":" not in image_tag and "@sha256" not in tag:
                    self.add("MLS013", _line(call), f"image {tag!r} has no tag")
                elif image_tag.endswith(":latest"):
                    self.add("MLS013", _line(call), f"image {tag!r} uses 'latest'")

    def gpu_snapshot(self) -> None:
        on = self.m.constants.get("ENABLE_GPU_SNAPSHOT") is True
        line = self.m.constant_lines.get("ENABLE_GPU_SNAPSHOT", 1)
        for call in self.m.calls:
            options = self.m.resolve(_kwarg(call, "experimental_options"))
            if isinstance(options, dict) and options.get("enable_gpu_snapshot") is True:
                on, line = True, _line(call)
        if not on:
            return
        counts: list[int] = []
        if isinstance(self.m.constants.get("N_GPU"), int):
            counts.append(self.m.constants["N_GPU"])
        for call in self.m.calls:
            gpu = self.m.resolve(_kwarg(call, "gpu"))
            for spec in gpu if isinstance(gpu, list) else [gpu]:
                if isinstance(spec, str) and ":" in spec:
                    with contextlib.suppress(ValueError):
                        counts.append(int(spec.rsplit(":", 1)[1]))
        if any(count > 1 for count in counts):
            self.add("MLS014", line, f"enable_gpu_snapshot with {max(counts)} GPUs")

    def endpoints(self) -> None:
        web = [d for _, d in self.m.decorators(*_WEB_DECORATORS)]
        web += [d for _, d in self.m.decorators("server")
                if _dotted(d).split(".")[-1] == "server"]
        for decorator in sorted(web, key=_line)[1:]:
            self.add("MLS015", _line(decorator), "a second web endpoint in the same app")
        for call in self.m.calls_named("forward"):
            if _dotted(call.func).startswith("modal."):
                self.add("MLS015", _line(call), "a modal.forward tunnel opens an extra port")


_IMPORT_RUNNER = """
import importlib.util, json, sys
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("mls_checked_app", path)
module = importlib.util.module_from_spec(spec)
sys.modules["mls_checked_app"] = module
spec.loader.exec_module(module)
import modal
apps = [name for name, value in vars(module).items() if isinstance(value, modal.App)]
print(json.dumps({"apps": apps}))
"""

# Module-level calls that do real work (deploys, processes, network) make an import unsafe.
_UNSAFE_AT_IMPORT = re.compile(
    r"^(subprocess|requests|httpx|socket|shutil)\."
    r"|^(os\.(system|popen|remove|unlink|rmdir|kill)|urllib\.request\.urlopen|exec|eval)$"
    r"|\.(remote|remote_gen|spawn|deploy|map|starmap|for_each)$|^app\.run$")


def _safe_to_import(tree: ast.Module) -> str | None:
    """None when module-level code only defines things; else what makes the import unsafe."""
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            # decorators run at import: allow Modal's own
            nodes: list[ast.AST] = list(stmt.decorator_list)
        elif isinstance(stmt, ast.If) and _dotted(getattr(stmt.test, "left", stmt.test)) == (
                "__name__"):
            continue  # `if __name__ == "__main__":` does not run on import
        else:
            nodes = [stmt]
        for node in nodes:
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                name = _dotted(call.func)
                if _UNSAFE_AT_IMPORT.search(name) and not name.startswith("modal."):
                    return f"module-level call {name}() at line {call.lineno}"
    return None


def _import_findings(path: Path, tree: ast.Module, *, timeout: float,
                     python: str) -> list[Finding]:
    unsafe = _safe_to_import(tree)
    if unsafe:
        return []  # static checks only; the CLI notes the skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        result = subprocess.run([python, "-c", _IMPORT_RUNNER, str(path.resolve())],
                                capture_output=True, text=True, timeout=timeout, env=env,
                                cwd=path.parent, check=False)
    except subprocess.TimeoutExpired:
        return [Finding(_BY_ID["MLS018"], str(path), 1, f"no result after {timeout:g} s")]
    except OSError as exc:  # not a program, not executable, gone: the option is wrong
        raise UsageError(f"--python {python} cannot be run ({exc.strerror or exc}); give the "
                         "interpreter behind your `modal` CLI (see `mls doctor`)") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        if lines and lines[-1].endswith("No module named 'modal'"):
            # the interpreter is wrong, not the file: say so instead of blaming the app
            raise UsageError(f"{python} cannot import modal, so it cannot import {path}: pass "
                             "--python with the interpreter behind your `modal` CLI (see "
                             "`mls doctor`), or --no-import")
        last = lines[-1] if lines else f"exit code {result.returncode}"
        line = 1
        for text in reversed(lines):  # the deepest frame inside the checked file
            match = re.search(r'File "(.+)", line (\d+)', text)
            if match and Path(match.group(1)).resolve() == path.resolve():
                line = int(match.group(2))
                break
        return [Finding(_BY_ID["MLS017"], str(path), line, last[:300])]
    try:
        apps = json.loads(result.stdout.strip().splitlines()[-1])["apps"]
    except (ValueError, IndexError, KeyError):
        apps = []
    if not apps:
        return [Finding(_BY_ID["MLS017"], str(path), 1, "the file defines no modal.App")]
    return []


def check_source(source: str, *, path: str = "<source>") -> list[Finding]:
    """Static checks of `source` (no import)."""
    try:
        tree = ast.parse(source, filename=path)
        findings = _Checker(_Module(tree, source), path).run()
    except SyntaxError as exc:
        return [Finding(_BY_ID["MLS016"], path, exc.lineno or 1, f"{exc.msg}")]
    except ValueError as exc:  # e.g. null bytes: not Python source at all
        return [Finding(_BY_ID["MLS016"], path, 1, str(exc))]
    except (RecursionError, MemoryError):  # Python's own parser gives up on such nesting too
        return [Finding(_BY_ID["MLS016"], path, 1, "nested too deeply to parse or analyze")]
    return sorted(findings, key=lambda f: (f.line, f.rule.id))


def check_file(path: Path, *, import_check: bool = True, import_timeout: float = 60.0,
               python: str | None = None) -> list[Finding]:
    """All checks of one file: static, then (where safe) an import with the real Modal SDK."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Finding(_BY_ID["MLS017"], str(path), 1, f"cannot read the file: {exc}")]
    findings = check_source(source, path=str(path))
    if import_check and not any(f.rule.id == "MLS016" for f in findings):
        tree = ast.parse(source)
        findings += _import_findings(path, tree, timeout=import_timeout,
                                     python=python or sys.executable)
    return sorted(findings, key=lambda f: (f.line, f.rule.id))


def import_skipped_reason(path: Path) -> str | None:
    """Why the import check would be skipped for `path` (None: it runs)."""
    try:
        return _safe_to_import(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # (UnicodeDecodeError is a ValueError) the static checks report it


def check_files(paths: list[Path], *, import_check: bool = True, import_timeout: float = 60.0,
                python: str | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        findings += check_file(path, import_check=import_check, import_timeout=import_timeout,
                               python=python)
    return findings
