"""The import check: the file imported with the real Modal SDK in a child process (MLS017,
MLS018).

Modal's decorators validate their arguments at import (e.g. `max_inputs` with `http_server`
raises), so importing the file finds what `modal deploy` would refuse. It runs only where that is
safe, where module-level code only defines things; a file that crashes or hangs
on import becomes a finding, never a traceback.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import dotted
from modal_llm_serving.errors import UsageError

__all__ = ["import_findings", "import_skipped_reason"]

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
        elif isinstance(stmt, ast.If) and dotted(getattr(stmt.test, "left", stmt.test)) == (
                "__name__"):
            continue  # `if __name__ == "__main__":` does not run on import
        else:
            nodes = [stmt]
        for node in nodes:
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                name = dotted(call.func)
                if _UNSAFE_AT_IMPORT.search(name) and not name.startswith("modal."):
                    return f"module-level call {name}() at line {call.lineno}"
    return None


def import_findings(path: Path, tree: ast.Module, *, timeout: float,
                    python: str) -> list[Finding]:
    """MLS017 / MLS018 for the file at `path` (parsed as `tree`), imported by `python`."""
    unsafe = _safe_to_import(tree)
    if unsafe:
        return []  # static checks only; the CLI notes the skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        result = subprocess.run([python, "-c", _IMPORT_RUNNER, str(path.resolve())],
                                capture_output=True, text=True, timeout=timeout, env=env,
                                cwd=path.parent, check=False)
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
        return _safe_to_import(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # (UnicodeDecodeError is a ValueError) the static checks report it
