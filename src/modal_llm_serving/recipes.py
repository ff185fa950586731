"""The four serving recipes: where they live, how to load one, and their copy of the engine block.

The recipes live once, in the skill (`skills/modal-llm-serving/scripts/` in a checkout); a wheel
carries the same folder as package data (`modal_llm_serving/_skill/scripts`). Each recipe must
import with only `modal` installed, so it carries verbatim copies of the toolkit code it runs:
the block between the `BEGIN/END engine-command` markers of `engines.py` (every recipe), and the
`BEGIN/END forwarder` block of `forwarder.py` (the vLLM servers). `engine_block` reads a block,
`stale_recipes` names the recipes whose copies drifted, and `sync_recipes` rewrites them
(`mls dev sync-recipes`).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from modal_llm_serving import engines, forwarder
from modal_llm_serving.errors import RecipeError

__all__ = [
    "BLOCKS",
    "RECIPES",
    "blocks_in",
    "engine_block",
    "load_recipe",
    "recipe_path",
    "recipes_dir",
    "source_block",
    "stale_recipes",
    "sync_recipes",
]

RECIPES = ("vllm_online", "vllm_cold_start", "sglang_low_latency", "qwen3_throughput")
# Copied block name -> the module that is its single source. Every recipe has "engine-command".
BLOCKS = {"engine-command": engines, "forwarder": forwarder}
_REQUIRED = "engine-command"


def _pattern(name: str) -> re.Pattern[str]:
    # From the BEGIN marker's line to the end of the END marker's line.
    begin, end = re.escape(f"# BEGIN {name}"), re.escape(f"# END {name}")
    return re.compile(rf"^{begin}(?: .*)?\n.*?^{end}[^\n]*\n?", re.M | re.S)


def recipes_dir() -> Path:
    """The recipes folder: the checkout's skill if this runs from one, else the wheel's copy."""
    package = Path(__file__).resolve().parent
    checkout = package.parents[1] / "skills" / "modal-llm-serving" / "scripts"
    for candidate in (checkout, package / "_skill" / "scripts"):
        if candidate.is_dir():
            return candidate
    raise RecipeError(f"no recipes folder at {checkout} or {package / '_skill' / 'scripts'}; "
                      "reinstall the package (pip install -e .) from a full checkout")


def recipe_path(name: str) -> Path:
    """The file of recipe `name` (one of RECIPES, with or without `.py`)."""
    stem = name.removesuffix(".py")
    if stem not in RECIPES:
        raise RecipeError(f"no recipe named {name!r}; choose one of {', '.join(RECIPES)}")
    return recipes_dir() / f"{stem}.py"


def load_recipe(path: Path, *, module_name: str | None = None) -> ModuleType:
    """Import the recipe at `path` as a fresh module (its Modal app is defined, nothing runs)."""
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}")
    name = module_name or f"mls_recipe_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def engine_block(source: str, *, name: str = _REQUIRED, where: str = "the source") -> str:
    """The block `name` in `source`, markers included; exactly one must be present."""
    found = _pattern(name).findall(source)
    if len(found) != 1:
        raise RecipeError(f"{where} has {len(found)} '# BEGIN {name}' ... '# END {name}' blocks; "
                          f"it needs exactly one (copy it from {_source_path(name)})")
    block: str = found[0]
    return block if block.endswith("\n") else block + "\n"


def blocks_in(source: str) -> list[str]:
    """Names of the copied blocks whose BEGIN marker appears in `source`."""
    return [name for name in BLOCKS if re.search(rf"^# BEGIN {re.escape(name)}\b", source, re.M)]


def source_block(name: str = _REQUIRED) -> str:
    """The block as its module defines it: the single source of every copy."""
    path = _source_path(name)
    return engine_block(path.read_text(encoding="utf-8"), name=name, where=str(path))


def stale_recipes(folder: Path | None = None) -> list[Path]:
    """Recipes with a copied block that differs from its source, in RECIPES order."""
    folder = folder or recipes_dir()
    return [path for path in _recipe_files(folder)
            if _synced(path.read_text(encoding="utf-8"), where=str(path)) is not None]


def sync_recipes(folder: Path | None = None) -> list[Path]:
    """Rewrite each stale copy with its source's block; return the files changed.

    Every file is checked before any is written, so a malformed one leaves all untouched.
    """
    folder = folder or recipes_dir()
    updates: list[tuple[Path, str]] = []
    for path in _recipe_files(folder):
        text = _synced(path.read_text(encoding="utf-8"), where=str(path))
        if text is not None:
            updates.append((path, text))
    for path, text in updates:
        temporary = path.with_suffix(".py.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)  # atomic: a reader never sees half a recipe
    return [path for path, _ in updates]


def _source_path(name: str) -> Path:
    return Path(str(BLOCKS[name].__file__))


def _synced(text: str, *, where: str) -> str | None:
    """`text` with every copied block replaced by its source, or None if nothing differs."""
    names = blocks_in(text)
    if _REQUIRED not in names:
        engine_block(text, where=where)  # raises: says the block is missing
    new = text
    for name in names:
        want = source_block(name)
        current = engine_block(new, name=name, where=where)
        if current != want:
            new = new.replace(current, want, 1)
    return None if new == text else new


def _recipe_files(folder: Path) -> list[Path]:
    paths = [folder / f"{name}.py" for name in RECIPES]
    if missing := [path.name for path in paths if not path.is_file()]:
        raise RecipeError(f"{folder} lacks {', '.join(missing)}")
    return paths
