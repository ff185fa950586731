"""The import check: the file imported with the real Modal SDK in a child process (MLS017,
MLS018).

Modal's decorators validate their arguments at import (e.g. `max_inputs` with `http_server`
raises), so importing the file finds what `modal deploy` would refuse. The file is someone's
code, so it is imported only when its module-level code provably just defines things (an
allow-list: Modal's own calls and what is built on them, a few pure builtins; anything else, or
a module from the file's own folder, means static checks only, said in one note line), and then
only in a child process that cannot touch the caller's files or credentials: a fresh temporary
folder as its working directory and HOME, an environment without tokens or keys, proxies
pointed at a closed port, killed with everything it started after the timeout. A file that
crashes or hangs on import becomes a finding, never a traceback.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import site
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import dotted, read_python_source
from modal_llm_serving.errors import UsageError

__all__ = ["import_findings", "import_skipped_reason"]

_IMPORT_RUNNER = """
import importlib.machinery, importlib.util, json, sys
path = sys.argv[1]
loader = importlib.machinery.SourceFileLoader("mls_checked_app", path)  # any file name
spec = importlib.util.spec_from_loader("mls_checked_app", loader, origin=path)
module = importlib.util.module_from_spec(spec)
module.__file__ = path
sys.modules["mls_checked_app"] = module
loader.exec_module(module)
import modal
apps = [name for name, value in vars(module).items() if isinstance(value, modal.App)]
print(json.dumps({"apps": apps}))
"""

# Calls that only compute a value (no file, process, network or state outside the module).
_PURE_CALLS = frozenset({
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "float", "format", "frozenset",
    "int", "isinstance", "len", "list", "max", "min", "range", "repr", "reversed", "round",
    "set", "sorted", "str", "sum", "tuple", "zip", "print", "classmethod", "staticmethod",
    "property", "os.environ.get", "os.getenv", "os.path.join", "os.path.dirname",
    "os.path.basename", "Path", "pathlib.Path", "dataclass", "dataclasses.dataclass",
    "dataclasses.field", "field", "functools.lru_cache", "functools.cache", "lru_cache",
    "cache", "time.sleep", "typing.TypeVar", "TypeVar", "logging.getLogger", "os.getcwd",
})
# Methods of a string literal (`",".join(...)`, `"{}".format(...)`).
_STRING_METHODS = frozenset({"join", "format", "split", "strip", "replace", "lower", "upper"})


class _ModuleLevel:
    """What runs when a file is imported, walked statement by statement (function bodies do
    not run; decorators, defaults, class bodies and `with` blocks do)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.modal: set[str] = set()  # names bound to modal, or to values built by modal calls

    def unsafe(self, statements: list[ast.stmt]) -> str | None:
        for stmt in statements:
            if (reason := self._statement(stmt)) is not None:
                return reason
        return None

    def _statement(self, stmt: ast.stmt) -> str | None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            return self._import(stmt)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            return self._calls([*stmt.decorator_list, *stmt.args.defaults,
                                *(d for d in stmt.args.kw_defaults if d is not None)],
                               decorators=stmt.decorator_list)
        if isinstance(stmt, ast.ClassDef):
            return (self._calls([*stmt.decorator_list, *stmt.bases, *stmt.keywords],
                                decorators=stmt.decorator_list) or self.unsafe(stmt.body))
        if isinstance(stmt, ast.If) and "__name__" in ast.dump(stmt.test):
            return self.unsafe(stmt.orelse)  # `if __name__ == "__main__":` does not run
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign) and stmt.value:
            reason = self._calls([stmt.value])
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if reason is None and self._built_by_modal(stmt.value):
                self.modal.update(t.id for t in targets if isinstance(t, ast.Name))
            return reason
        if isinstance(stmt, ast.Expr | ast.Pass | ast.AnnAssign | ast.Assert):
            return self._calls([stmt])
        if isinstance(stmt, ast.If | ast.With | ast.Try):
            heads = ([stmt.test] if isinstance(stmt, ast.If) else
                     [item.context_expr for item in stmt.items] if isinstance(stmt, ast.With)
                     else [])
            handlers = [s for h in getattr(stmt, "handlers", []) for s in h.body]
            return self._calls(heads) or self.unsafe(
                [*stmt.body, *getattr(stmt, "orelse", []), *handlers,
                 *getattr(stmt, "finalbody", [])])
        return f"a module-level {type(stmt).__name__.lower()} statement at line {stmt.lineno}"

    def _import(self, stmt: ast.Import | ast.ImportFrom) -> str | None:
        modules = ([alias.name for alias in stmt.names] if isinstance(stmt, ast.Import)
                   else [stmt.module or ""] if not stmt.level else ["."])
        for module in modules:
            top = module.split(".")[0]
            local = self.folder is not None and top and (
                (self.folder / f"{top}.py").exists() or (self.folder / top).is_dir())
            if module == "." or local:
                return (f"it imports {module} from its own folder at line {stmt.lineno}, which "
                        "would run unchecked")
        if isinstance(stmt, ast.Import):
            self.modal.update(alias.asname or alias.name for alias in stmt.names
                              if alias.name == "modal")
        elif stmt.module == "modal" or (stmt.module or "").startswith("modal."):
            self.modal.update(alias.asname or alias.name for alias in stmt.names)
        return None

    def _built_by_modal(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Call) and dotted(node).split(".")[0] in self.modal

    def _calls(self, nodes: Sequence[ast.AST], *,
               decorators: Sequence[ast.expr] = ()) -> str | None:
        """None if every call in `nodes` is allowed (a bare `@name` decorator is a call too)."""
        called: list[tuple[str, int]] = [
            (dotted(d), d.lineno) for d in decorators if not isinstance(d, ast.Call)]
        for node in nodes:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call):
                    if isinstance(inner.func, ast.Attribute) and isinstance(
                            inner.func.value, ast.Constant) and isinstance(
                            inner.func.value.value, str):
                        if inner.func.attr not in _STRING_METHODS:
                            return f"a call of str.{inner.func.attr}() at line {inner.lineno}"
                        continue
                    called.append((dotted(inner), inner.lineno))
        for name, line in called:
            if name.split(".")[0] in self.modal or name in _PURE_CALLS:
                continue
            return f"module-level call {name or 'of a computed function'}() at line {line}"
        return None


def _safe_to_import(tree: ast.Module, folder: Path | None = None) -> str | None:
    """None when module-level code only defines things; else what makes the import unsafe."""
    return _ModuleLevel(folder).unsafe(tree.body)


def _sandbox_env(home: str) -> dict[str, str]:
    """The child's environment: enough to find Python and its packages, nothing else of the
    caller's (no tokens, keys or profiles), and no way out through a proxy."""
    kept = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONHOME", "SYSTEMROOT")
    env = {name: os.environ[name] for name in kept if name in os.environ}
    dead = "http://127.0.0.1:9"  # the discard port: refused at once
    env.update(HOME=home, TMPDIR=home, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1",
               PYTHONUSERBASE=os.environ.get("PYTHONUSERBASE") or site.getuserbase(),
               http_proxy=dead, https_proxy=dead, all_proxy=dead, HTTP_PROXY=dead,
               HTTPS_PROXY=dead, ALL_PROXY=dead, no_proxy="", NO_PROXY="")
    return env


def _run_sandboxed(python: str, path: Path, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """The import runner in its own session, folder and environment; its whole process group
    is killed at the timeout (subprocess.TimeoutExpired is raised then)."""
    with tempfile.TemporaryDirectory(prefix="mls-check-") as home:
        process = subprocess.Popen(
            [os.path.abspath(python), "-c", _IMPORT_RUNNER, str(path.absolute())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, errors="replace", cwd=home, env=_sandbox_env(home),
            start_new_session=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        finally:
            with contextlib.suppress(OSError):  # what the import left running
                os.killpg(process.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def import_findings(path: Path, tree: ast.Module, *, timeout: float,
                    python: str) -> list[Finding]:
    """MLS017 / MLS018 for the file at `path` (parsed as `tree`), imported by `python`."""
    unsafe = _safe_to_import(tree, path.parent)
    if unsafe:
        return []  # static checks only; the CLI notes the skip
    try:
        result = _run_sandboxed(python, path, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [finding("MLS018", str(path), 1, f"no result after {timeout:g} s")]
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
        return [finding("MLS017", str(path), line, last[:300])]
    try:
        apps = json.loads(result.stdout.strip().splitlines()[-1])["apps"]
    except (ValueError, IndexError, KeyError):
        apps = []
    if not apps:
        return [finding("MLS017", str(path), 1, "the file defines no modal.App")]
    return []


def import_skipped_reason(path: Path) -> str | None:
    """Why the import check would be skipped for `path` (None: it runs)."""
    try:
        return _safe_to_import(ast.parse(read_python_source(path)), path.parent)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # (UnicodeDecodeError is a ValueError) the static checks report it
