"""`recipes`: the table, finding a recipe, loading it, and asking it for its own engine command."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import UnionType
from typing import Any

import pytest

from modal_llm_serving.errors import RecipeError
from modal_llm_serving.facts.workload import workload_from_mapping
from modal_llm_serving.plan import make_plan
from modal_llm_serving.recipes import table
from modal_llm_serving.recipes.files import (
    load_recipe,
    recipe_command,
    recipe_path,
    resolve_recipe,
)
from modal_llm_serving.recipes.table import RECIPE_NAMES

from .verify import recipe_llm_kwargs

HEAD = "import modal\napp = modal.App('x')\n"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "app.py"
    path.write_text(HEAD + body)
    return path


def test_resolve_takes_a_file_or_a_recipe_name(tmp_path: Path) -> None:
    assert resolve_recipe("vllm_online") == recipe_path("vllm_online")
    assert resolve_recipe("vllm_cold_start.py") == recipe_path("vllm_cold_start")
    path = write(tmp_path, "")
    assert resolve_recipe(str(path)) == path
    with pytest.raises(RecipeError, match=r"no recipe file at nope\.py; give a path or one of"):
        resolve_recipe("nope.py")
    with pytest.raises(RecipeError, match="is not a file"):
        resolve_recipe(str(tmp_path))


def test_every_recipe_name_has_its_file() -> None:
    assert all(recipe_path(name).is_file() for name in RECIPE_NAMES)


def test_overrides_reach_the_recipe_function() -> None:
    module = load_recipe(recipe_path("vllm_online"))
    argv = recipe_command(module, model="/m", revision=None, served_model_name="s",
                          host="127.0.0.1", port=1234)
    assert argv[:3] == ["vllm", "serve", "/m"] and "--revision" not in argv
    assert argv[argv.index("--port") + 1] == "1234"
    assert recipe_command(module)[2] == module.MODEL_NAME


@pytest.mark.parametrize(("body", "words"), [
    ("", "defines no engine_command()"),
    ("def engine_command():\n    return ['vllm', 'serve', 'm']\n", "takes no model, port keyword"),
    ("def engine_command(**kw):\n    return 'vllm serve m'\n", "not a non-empty list of strings"),
    ("def engine_command(**kw):\n    return ['vllm', 'serve', 1]\n", "not a non-empty list"),
    ("def llm_kwargs(**kw):\n    return {}\n", "is a batch recipe"),
])
def test_files_that_build_no_usable_command_are_one_clear_error(
        tmp_path: Path, body: str, words: str) -> None:
    module = load_recipe(write(tmp_path, body))
    with pytest.raises(RecipeError, match=words):
        recipe_command(module, model="m", port=1)


def test_a_file_that_fails_to_import_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"importing .* failed: ZeroDivisionError"):
        load_recipe(write(tmp_path, "1 / 0\n"))


def test_batch_recipe_kwargs_with_overrides() -> None:
    module = load_recipe(recipe_path("qwen3_throughput"))
    kwargs = recipe_llm_kwargs(module, model="/m", revision=None)
    assert kwargs["model"] == "/m" and kwargs["max_num_seqs"] == module.MAX_NUM_SEQS


# --- the recipe table against the files and the plans --------------------------------------------


def _constants(path: Path) -> dict[str, Any]:
    """A file's module-level UPPER_CASE constants and their values, read from its syntax tree."""
    values: dict[str, Any] = {}
    for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, node = stmt.target, stmt.value
        else:
            continue
        if isinstance(target, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", target.id):
            assert target.id not in values, f"{path.name} assigns {target.id} twice"
            values[target.id] = _value(node, values)
    return values


def _value(node: ast.expr, earlier: dict[str, Any]) -> Any:
    """A literal, an earlier constant's name, or a product of those (`20 * MINUTES`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _value(node.left, earlier) * _value(node.right, earlier)
    if isinstance(node, ast.Name):
        return earlier[node.id]
    return ast.literal_eval(node)


def _has_type(value: Any, kind: type | UnionType) -> bool:
    """`isinstance`, except that a bool is no int here (True is no GPU count)."""
    return isinstance(value, kind) and (isinstance(value, bool) == (kind is bool))


def test_every_recipe_file_has_a_row_in_the_table() -> None:
    files = {path.stem for path in recipe_path(RECIPE_NAMES[0]).parent.glob("*.py")}
    assert files == set(RECIPE_NAMES)


@pytest.mark.parametrize("recipe", table.RECIPES, ids=lambda recipe: recipe.name)
def test_each_recipe_defines_exactly_the_settings_of_its_row(recipe: table.Recipe) -> None:
    declared = {setting.name: setting.type for setting in recipe.settings}
    assert len(declared) == len(recipe.settings), "a setting is listed twice"
    constants = _constants(recipe_path(recipe.name))
    assert set(constants) == set(declared)
    wrong = {name: value for name, value in constants.items()
             if not _has_type(value, declared[name])}
    assert wrong == {}, f"not of the declared type in {recipe.file_name}"


REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
ROW_WORKLOADS = {
    "vllm_online": {"concurrency": 32},
    "vllm_cold_start": {"cold_start_s": 30},
    "sglang_low_latency": {"goal": "low-latency"},
    "qwen3_throughput": {"offline": True},
    "vllm_server": {"goal": "low-latency", "proxy_auth": True},
    # 810 GB of bf16 weights: more than one 8x H100 host holds, so a plan on a cluster
    "vllm_multi_node": {"model": "meta-llama/Llama-3.1-405B-Instruct", "precision": "bf16",
                        "gpu": "H100"},
}
# Rows no plan chooses yet: their settings are the file's (none now; the planner sizes clusters).
NOT_PLANNED: set[str] = set()


def test_every_row_is_planned_or_named_as_not_yet() -> None:
    assert set(RECIPE_NAMES) == set(ROW_WORKLOADS) | NOT_PLANNED


@pytest.mark.parametrize("name", sorted(ROW_WORKLOADS))
def test_a_plan_fills_each_setting_its_row_maps_with_the_declared_type(name: str) -> None:
    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B-FP8", "revision": REV,
                                            **ROW_WORKLOADS[name]}))
    assert plan.recipe_row == table.recipe_named(name)
    settings = plan.recipe_settings()
    mapped = [setting for setting in plan.recipe_row.settings if setting.source]
    assert list(settings) == [setting.name for setting in mapped]
    assert all(_has_type(settings[setting.name], setting.type) for setting in mapped), settings


def test_the_table_picks_the_server_form_only_for_proxy_auth_clients() -> None:
    assert table.recipe_for("low-latency").name == "sglang_low_latency"
    assert table.recipe_for("low-latency", proxy_auth=True).name == "vllm_server"
    assert table.recipe_for("cold-start", proxy_auth=True).name == "vllm_server"
    assert table.recipe_for("online", proxy_auth=True).name == "vllm_online"
