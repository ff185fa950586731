"""Each recipe's copies of toolkit blocks are exactly their sources'; syncing fixes drift.

Every recipe copies the `engine-command` block of engines.py; the vLLM servers (online, cold
start) also copy the `forwarder` block of forwarder.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.engines import EngineConfig, sglang_command, vllm_command
from modal_llm_serving.errors import RecipeError
from modal_llm_serving.recipes import (
    BLOCKS,
    RECIPES,
    blocks_in,
    engine_block,
    load_recipe,
    recipe_path,
    source_block,
    stale_recipes,
    sync_recipes,
)

EXPECTED_BLOCKS = {
    "vllm_online": ["engine-command", "forwarder"],
    "vllm_cold_start": ["engine-command", "forwarder"],
    "sglang_low_latency": ["engine-command"],
    "qwen3_throughput": ["engine-command"],
}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_copies_are_identical_to_their_sources(name: str) -> None:
    path = recipe_path(name)
    text = path.read_text()
    assert blocks_in(text) == EXPECTED_BLOCKS[name]
    for block in blocks_in(text):
        assert engine_block(text, name=block, where=str(path)) == source_block(block), (
            f"{path.name}'s {block} block drifted: run `mls dev sync-recipes`")


@pytest.mark.parametrize("block", list(BLOCKS))
def test_source_blocks_import_only_the_standard_library(block: str) -> None:
    import sys

    imports = [line.split()[1] for line in source_block(block).splitlines()
               if line.startswith(("import ", "from "))]
    assert imports
    assert all(module.split(".")[0] in sys.stdlib_module_names for module in imports), imports


@pytest.mark.parametrize("name", ["vllm_online", "vllm_cold_start", "qwen3_throughput"])
def test_recipe_copy_builds_the_same_vllm_command_as_the_package(name: str) -> None:
    recipe = load_recipe(recipe_path(name))
    import dataclasses

    settings = dataclasses.asdict(recipe.engine_config())
    assert recipe.vllm_command(recipe.engine_config()) == recipe.EngineCommand(
        **dataclasses.asdict(vllm_command(EngineConfig(**settings))))


def test_sglang_copy_builds_the_same_command_as_the_package() -> None:
    import dataclasses

    recipe = load_recipe(recipe_path("sglang_low_latency"))
    config = recipe.engine_config(api_key="k")
    ours = sglang_command(EngineConfig(**dataclasses.asdict(config)))
    assert recipe.sglang_command(config).argv == ours.argv


@pytest.fixture
def recipes_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name in RECIPES:
        shutil.copy(recipe_path(name), folder / f"{name}.py")
    return folder


def test_sync_rewrites_only_the_drifted_copy(recipes_copy: Path) -> None:
    target = recipes_copy / "vllm_online.py"
    original = target.read_text()
    drifted = original.replace('    host: str = "0.0.0.0"\n', '    host: str = "127.0.0.1"\n', 1)
    assert drifted != original
    target.write_text(drifted)
    untouched = (recipes_copy / "qwen3_throughput.py").stat().st_mtime_ns
    assert stale_recipes(recipes_copy) == [target]
    assert sync_recipes(recipes_copy) == [target]
    assert target.read_text() == original  # prose and code around the block kept as they were
    assert stale_recipes(recipes_copy) == []
    assert (recipes_copy / "qwen3_throughput.py").stat().st_mtime_ns == untouched
    assert sync_recipes(recipes_copy) == []


def test_sync_refuses_a_recipe_without_markers_and_writes_nothing(recipes_copy: Path) -> None:
    (recipes_copy / "vllm_online.py").write_text(
        (recipes_copy / "vllm_online.py").read_text().replace('    port: int = 8000\n',
                                                             '    port: int = 9\n'))
    broken = recipes_copy / "sglang_low_latency.py"
    broken.write_text(broken.read_text().replace("# END engine-command", "# END"))
    before = {path.name: path.read_text() for path in recipes_copy.iterdir()}
    with pytest.raises(RecipeError, match=r"sglang_low_latency\.py has 0"):
        sync_recipes(recipes_copy)
    assert {path.name: path.read_text() for path in recipes_copy.iterdir()} == before


def test_cli_check_fails_on_drift_and_sync_fixes_it(recipes_copy: Path) -> None:
    runner = CliRunner()
    target = recipes_copy / "vllm_cold_start.py"
    target.write_text(target.read_text().replace("    tensor_parallel_size: int = 1\n",
                                                 "    tensor_parallel_size: int = 2\n", 1))
    result = runner.invoke(cli, ["dev", "sync-recipes", "--check", "--dir", str(recipes_copy)])
    assert result.exit_code == 1
    assert "out of date: vllm_cold_start.py" in result.output
    result = runner.invoke(cli, ["dev", "sync-recipes", "--dir", str(recipes_copy)])
    assert result.exit_code == 0, result.output
    assert "1 recipe(s) updated" in result.output
    result = runner.invoke(cli, ["dev", "sync-recipes", "--check", "--dir", str(recipes_copy)])
    assert result.exit_code == 0, result.output


def test_cli_reports_a_missing_recipe_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dev", "sync-recipes", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "lacks vllm_online.py" in result.output
    assert "Traceback" not in result.output


def test_sync_rewrites_a_drifted_forwarder_copy(recipes_copy: Path) -> None:
    target = recipes_copy / "vllm_cold_start.py"
    original = target.read_text()
    drifted = original.replace('return web.json_response({"error": {"message": "not found"',
                               'return web.json_response({"error": {"message": "nope"', 1)
    assert drifted != original
    target.write_text(drifted)
    result = CliRunner().invoke(cli, ["dev", "sync-recipes", "--check", "--dir",
                                      str(recipes_copy)])
    assert result.exit_code == 1 and "vllm_cold_start.py" in result.output
    assert sync_recipes(recipes_copy) == [target]
    assert target.read_text() == original
