"""`recipes`: finding a recipe, loading it, and asking it for its own engine command."""

from __future__ import annotations

from pathlib import Path

import pytest

from modal_llm_serving.errors import RecipeError
from modal_llm_serving.recipes.files import (
    RECIPES,
    load_recipe,
    recipe_command,
    recipe_llm_kwargs,
    recipe_path,
    resolve_recipe,
)

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
    assert all(recipe_path(name).is_file() for name in RECIPES)


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
