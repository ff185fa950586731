"""Rules on who can reach what: vLLM's dev mode behind a public endpoint (MLS009), secrets
written in the file (MLS012), a Server open to anyone with no API key (MLS020), and commands built
as shell text (MLS030).
"""

from __future__ import annotations

import ast
import re
from typing import Any

from modal_llm_serving.check.app import argv_options, server_calls
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import UNKNOWN, Source, dotted, kwarg, line_of

__all__ = ["dev_mode_public", "secret_in_code", "shell_command", "unauthenticated_without_key"]

_TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style key
    re.compile(r"\b(ak|as)-[A-Za-z0-9]{20,}\b"),  # Modal token id / secret
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
)
_SECRET_NAME = re.compile(r"(?i)(^|_)(api_?key|token|password|passwd|secret_?key|access_?key)$")
_SECRET_FLAGS = ("--api-key", "--hf-token", "--token")
_PLACEHOLDER = re.compile(r"(?i)^(empty|unused|none|null|fake|test|changeme)$|your|example|"
                          r"placeholder|dummy|not[-_ ]?(used|needed|a[-_ ]?secret)|no[-_ ]?key|"
                          r"xxxx|[<{$]")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def dev_mode_public(src: Source) -> list[Finding]:
    """MLS009: sleep mode / VLLM_SERVER_DEV_MODE with the engine on a web_server's or
    Server's port, whatever auth is in front."""
    dev = any(src.resolve(kwarg(c, "enable_sleep_mode")) is True for c in src.calls)
    dev = dev or any(s.value == "--enable-sleep-mode" for s in src.strings)
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Dict):
            mapping = src.resolve(node)
            if str(mapping.get("VLLM_SERVER_DEV_MODE")) in ("1", "True", "true"):
                dev = True
    if not dev:
        return []
    hosts: set[Any] = set()
    ports: set[Any] = set()
    for _, option in argv_options(src):
        if option.flag == "--host" and option.value is not None:
            hosts.add(option.value)
        elif option.flag == "--port" and option.value is not None:
            ports.add(option.value)
    loopback = bool(hosts) and hosts <= _LOOPBACK
    public = [(line_of(d), src.resolve((kwarg(d, "port") or (d.args[0] if d.args else None))
                                       if isinstance(d, ast.Call) else None), "web_server")
              for _, d in src.decorators("web_server")]
    public += [(line_of(call), src.resolve(kwarg(call, "port")) if kwarg(call, "port")
                else 8000, "Server") for _, call in server_calls(src)]
    found = []
    # One posture, proxy auth or not: a proxy token is the workspace's, so every holder of one
    # could reach the dev endpoints; only an engine kept off the public port is private.
    for line, port, kind in public:
        if loopback and port is not UNKNOWN and str(port) not in {str(p) for p in ports}:
            continue  # the engine is private; the public port is something in front of it
        found.append(finding("MLS009", src.path, line, "sleep mode / VLLM_SERVER_DEV_MODE with "
                             f"the engine reachable on the {kind}'s public port"))
    return found


def _literal_secret(src: Source, node: ast.expr) -> bool:
    if not isinstance(node, ast.Constant | ast.JoinedStr):
        return False
    value = src.resolve(node)
    return isinstance(value, str) and len(value) >= 8 and not _PLACEHOLDER.search(value)


def secret_in_code(src: Source) -> list[Finding]:
    """MLS012: a token-shaped string, or a literal value given to a secret's name or flag."""
    found = []
    for string in src.strings:
        if any(pattern.search(str(string.value)) for pattern in _TOKEN_PATTERNS):
            found.append(finding("MLS012", src.path, line_of(string),
                                 "a string that looks like a live token"))
    for stmt in ast.walk(src.tree):
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                name = (target.id if isinstance(target, ast.Name) else
                        str(src.resolve(target.slice)) if isinstance(target, ast.Subscript)
                        else "")
                if _SECRET_NAME.search(name) and _literal_secret(src, stmt.value):
                    found.append(finding("MLS012", src.path, line_of(stmt),
                                         f"{name} is assigned a literal value"))
    for call in src.calls:
        for keyword in call.keywords:
            if keyword.arg and _SECRET_NAME.search(keyword.arg) and _literal_secret(
                    src, keyword.value):
                found.append(finding("MLS012", src.path, line_of(call),
                                     f"{keyword.arg}= is passed a literal value"))
        if dotted(call.func).endswith("Secret.from_dict") and call.args:
            mapping = src.resolve(call.args[0])
            if isinstance(mapping, dict) and any(isinstance(v, str) and v
                                                 for v in mapping.values()):
                found.append(finding("MLS012", src.path, line_of(call),
                                     "modal.Secret.from_dict with literal values"))
    for sequence, option in argv_options(src):
        # the value in a word of its own (`--api-key=...` in one string is the token patterns')
        if option.flag in _SECRET_FLAGS and option.end - option.start == 2:
            value = sequence.elts[option.start + 1]
            if isinstance(value, ast.Constant) and _literal_secret(src, value):
                found.append(finding("MLS012", src.path, line_of(sequence),
                                     f"{option.flag} followed by a literal value"))
    return found


def _requires_api_key(src: Source) -> bool:
    """The engine is started with an API key (vLLM's env var or flag, SGLang's flag)."""
    if src.has_string("VLLM_API_KEY") or src.has_string("--api-key"):
        return True
    return any(kwarg(call, "api_key") is not None for call in src.calls)


def unauthenticated_without_key(src: Source) -> list[Finding]:
    """MLS020: a Server with unauthenticated=True whose engine requires no API key."""
    found = []
    for _, call in server_calls(src):
        if src.resolve(kwarg(call, "unauthenticated")) is True and not _requires_api_key(src):
            found.append(finding("MLS020", src.path, line_of(call),
                                 "unauthenticated=True and no API key for the engine"))
    return found


_SUBPROCESS = ("Popen", "run", "call", "check_call", "check_output")


def shell_command(src: Source) -> list[Finding]:
    """MLS030: subprocess.*(..., shell=True) or os.system with a command that is not one literal
    string: joined, concatenated, formatted or read from a variable."""
    found = []
    for call in src.calls:
        name = dotted(call.func)
        command = call.args[0] if call.args else kwarg(call, "args")
        if name.split(".")[-1] in _SUBPROCESS and name.startswith(("subprocess.", *_SUBPROCESS)):
            if src.resolve(kwarg(call, "shell")) is not True:
                continue
        elif name not in ("os.system", "os.popen"):
            continue
        if command is not None and not isinstance(command, ast.Constant):
            found.append(finding("MLS030", src.path, line_of(call),
                                 f"{name}() runs `{ast.unparse(command)[:60]}` through a shell"))
    return found
