"""The recipe files: where they live, how to load one, and how to ask it for its command.

The recipes live once, in the skill (`skills/modal-llm-serving/scripts/` in a checkout); a wheel
carries the same folder as package data (`modal_llm_serving/_skill/scripts`); their names are the
recipe table's (`table.py`). Each recipe builds its own engine command in plain Python: the
servers define `engine_command(*, model, revision, served_model_name, host, port) -> list[str]`,
the batch worker `llm_kwargs(*, model, revision) -> dict`. The toolkit never writes a command of
its own: it loads the recipe with the real Modal SDK (module-level code only defines things) and
calls those functions: in a child process with a timeout (`recipe_commands`), so a recipe
that hangs, exits or raises at import or in its function is one RecipeError, never a hang, a
silent exit or a traceback here.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from modal_llm_serving.errors import RecipeError, UsageError
from modal_llm_serving.recipes.table import RECIPE_NAMES
from modal_llm_serving.skill import skill_dir

__all__ = [
    "RECIPE_TIMEOUT_S",
    "SERVER_OVERRIDES",
    "load_recipe",
    "recipe_command",
    "recipe_commands",
    "recipe_path",
    "recipes_dir",
    "resolve_recipe",
]

# What may differ off Modal: the keyword arguments every server recipe's engine_command() takes.
SERVER_OVERRIDES = ("model", "revision", "served_model_name", "host", "port")


def recipes_dir() -> Path:
    """The recipes folder: `scripts/` of the skill this installation carries."""
    try:
        return skill_dir() / "scripts"
    except UsageError as exc:
        raise RecipeError(str(exc)) from None


def recipe_path(name: str) -> Path:
    """The file of recipe `name` (a name in the recipe table, with or without `.py`)."""
    stem = name.removesuffix(".py")
    if stem not in RECIPE_NAMES:
        raise RecipeError(f"no recipe named {name!r}; choose one of {', '.join(RECIPE_NAMES)}")
    return recipes_dir() / f"{stem}.py"


def resolve_recipe(value: str) -> Path:
    """A `--recipe` value: an existing file (any app, e.g. one `mls new` wrote) or a recipe name."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise RecipeError(f"{value} is not a file; give a recipe file or one of "
                          f"{', '.join(RECIPE_NAMES)}")
    if value.removesuffix(".py") in RECIPE_NAMES:
        return recipe_path(value)
    raise RecipeError(f"no recipe file at {value}; give a path or one of "
                      f"{', '.join(RECIPE_NAMES)}")


def load_recipe(path: Path, *, module_name: str | None = None) -> ModuleType:
    """Import the recipe at `path` as a fresh module (its Modal app is defined, nothing runs)."""
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}")
    name = module_name or f"mls_recipe_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # dataclasses and pickling look a module up in sys.modules while it runs
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a recipe's sys.exit() is a failure to load too
        sys.modules.pop(name, None)
        raise RecipeError(f"importing {path} failed: {type(exc).__name__}: {exc} "
                          f"(try `mls check {path}`)") from exc
    return module


def _function(module: ModuleType, name: str, *, keywords: tuple[str, ...]) -> Any:
    where = getattr(module, "__file__", module.__name__)
    function = getattr(module, name, None)
    if not callable(function):
        raise RecipeError(f"{where} defines no {name}(); a recipe builds its engine command in "
                          f"{name}({', '.join(keywords)}) (see the skill's scripts/)")
    accepted = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if missing := [key for key in keywords if key not in accepted and not takes_any]:
        raise RecipeError(f"{name}() in {where} takes no {', '.join(missing)} keyword(s); it "
                          f"needs {', '.join(keywords)} so the command can run off Modal")
    return function


def recipe_command(module: ModuleType, **overrides: Any) -> list[str]:
    """The recipe's own engine argv, with `overrides` (a subset of SERVER_OVERRIDES) applied."""
    if unknown := set(overrides) - set(SERVER_OVERRIDES):
        raise RecipeError(f"unknown engine_command() override(s): {', '.join(sorted(unknown))}")
    if not hasattr(module, "engine_command") and hasattr(module, "llm_kwargs"):
        raise RecipeError(f"{module.__file__} is a batch recipe (vLLM's LLM in a worker, no "
                          "HTTP server): there is no engine command to serve")
    function = _function(module, "engine_command", keywords=tuple(overrides))
    where = module.__file__
    if without := [p.name for p in inspect.signature(function).parameters.values()
                   if p.default is p.empty and p.kind is not p.VAR_KEYWORD
                   and p.name not in overrides]:
        raise RecipeError(f"engine_command() in {where} has no default for "
                          f"{', '.join(without)}: the recipe's own command is engine_command() "
                          "called with none, so give each keyword its recipe constant as "
                          "default, as the skill's recipes do")
    try:
        argv = function(**overrides)
    except (Exception, SystemExit) as exc:
        raise RecipeError(f"engine_command() in {where} raised {type(exc).__name__}: {exc} "
                          "(fix the recipe; `mls local command --recipe FILE` tries it)") from exc
    if not (isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv)):
        raise RecipeError(f"engine_command() in {module.__file__} returned {argv!r}, not a "
                          "non-empty list of strings")
    return argv


# The child's part: load the recipe, call engine_command() once per set of overrides, and
# print the argvs as JSON on the last line (the recipe may print too).
_ASK_RECIPE = """
import json, sys
from pathlib import Path
from modal_llm_serving.errors import RecipeError
from modal_llm_serving.recipes.files import load_recipe, recipe_command
try:
    module = load_recipe(Path(sys.argv[1]))
    answer = {"argvs": [recipe_command(module, **o) for o in json.loads(sys.argv[2])]}
except RecipeError as exc:
    answer = {"error": str(exc)}
print("\\n" + json.dumps(answer))
"""
RECIPE_TIMEOUT_S = 60.0  # importing Modal and a recipe takes a second or two


def recipe_commands(path: Path, requests: list[dict[str, Any]], *,
                    timeout: float = RECIPE_TIMEOUT_S) -> list[list[str]]:
    """`recipe_command(load_recipe(path), **overrides)` for each overrides in `requests`, asked
    in a child process: the recipe's code (its module level and its function) cannot hang,
    exit or crash this one. A recipe that does is one RecipeError."""
    package_root = str(Path(__file__).resolve().parents[2])  # so the child imports this mls
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-c", _ASK_RECIPE, str(path), json.dumps(requests)],
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise RecipeError(f"importing {path} and asking it for its engine command took more "
                          f"than {timeout:g} s (work at import time?); `mls check {path}` "
                          "says more") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise RecipeError(f"importing {path} ended before it gave an engine command "
                          f"({last[:200]}); `mls check {path}` says more")
    if "error" in answer:
        raise RecipeError(str(answer["error"]))
    return [list(map(str, argv)) for argv in answer["argvs"]]
