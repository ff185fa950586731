"""`mls new`: from each README workload to an app that passes `mls check` and the recipe tests.

The four workloads are read from the README itself, so the documented flow is the tested one.
The written files then go through the recipe verification of `test_recipes.py` (imported with the
real Modal SDK under spies, engine argv through vLLM's and SGLang's own parsers).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.errors import UsageError
from modal_llm_serving.recipes import load_recipe, recipe_path
from modal_llm_serving.render import render_source, write_app

from . import test_recipes as recipe_tests
from .test_recipes import Spied, sglang_parser, spy_load, vllm_parser  # noqa: F401 (fixtures)

README = Path(__file__).resolve().parents[1] / "README.md"
GOALS = {"online": "vllm_online", "cold-start": "vllm_cold_start",
         "low-latency": "sglang_low_latency", "throughput": "qwen3_throughput"}


def readme_workloads() -> dict[str, str]:
    """`# NAME.toml` code blocks of the README's "Plan, write and check an app" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Plan, write and check an app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n# ([\w-]+)\.toml[^\n]*\n(.*?)```", section, re.S)
    return dict(blocks)


def test_the_readme_has_one_workload_per_goal() -> None:
    assert set(readme_workloads()) == set(GOALS)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """plan -> new -> check for each README workload, through the CLI, as the README says."""
    folder = tmp_path_factory.mktemp("apps")
    runner = CliRunner()
    apps = {}
    for goal, body in readme_workloads().items():
        workload = folder / f"{goal}.toml"
        workload.write_text(body)
        plan = runner.invoke(cli, ["plan", str(workload), "--json"])
        assert plan.exit_code == 0, plan.output
        assert json.loads(plan.output)["pattern"] == goal
        output = folder / f"my_{goal.replace('-', '_')}.py"
        new = runner.invoke(cli, ["new", str(workload), "-o", str(output)])
        assert new.exit_code == 0, new.output
        assert "mls check: no findings" in new.output
        check = runner.invoke(cli, ["check", str(output)])
        assert check.exit_code == 0, check.output
        apps[goal] = output
    return apps


@pytest.mark.parametrize("goal", sorted(GOALS))
def test_only_settings_constants_change(goal: str, written: dict[str, Path]) -> None:
    recipe = recipe_path(GOALS[goal]).read_text()
    app = written[goal].read_text()
    old, new = ast.parse(recipe), ast.parse(app)
    changed = []
    for a, b in zip(old.body, new.body, strict=True):
        if ast.dump(a) != ast.dump(b):
            assert isinstance(b, ast.Assign) and isinstance(b.targets[0], ast.Name)
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", b.targets[0].id)
            changed.append(b.targets[0].id)
    assert changed, "the plan changed nothing"
    # byte for byte outside the changed values: every other line is identical
    old_lines, new_lines = recipe.splitlines(), app.splitlines()
    assert len(old_lines) == len(new_lines)
    differing = [n for n, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert all(re.match(r"^[A-Z][A-Z0-9_]* = ", new_lines[n]) for n in differing)


@pytest.mark.parametrize("goal", sorted(GOALS))
def test_written_app_carries_the_plan(goal: str, written: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["plan", str(written[goal].with_name(f"{goal}.toml")),
                                      "--json"])
    settings = json.loads(result.output)["recipe_settings"]
    module = load_recipe(written[goal], module_name=f"mls_new_{goal.replace('-', '_')}")
    for name, value in settings.items():
        if hasattr(module, name):
            assert getattr(module, name) == value, name


@pytest.fixture
def as_recipe(monkeypatch: pytest.MonkeyPatch, written: dict[str, Path]) -> Callable[[str], None]:
    """Point the recipe tests' `recipe_path` at the written app for `goal`."""

    def point(goal: str) -> None:
        monkeypatch.setattr(recipe_tests, "recipe_path", lambda _name: written[goal])

    return point


def test_online_app_passes_the_recipe_verification(
        as_recipe: Callable[[str], None], spy_load: Callable[[str], Spied],  # noqa: F811
        vllm_parser: Any) -> None:  # noqa: F811
    as_recipe("online")
    recipe_tests.test_online_recipe_modal_settings(spy_load)
    recipe_tests.test_vllm_parser_accepts_recipe_argv("vllm_online", vllm_parser)


def test_cold_start_app_passes_the_recipe_verification(
        as_recipe: Callable[[str], None], spy_load: Callable[[str], Spied],  # noqa: F811
        vllm_parser: Any) -> None:  # noqa: F811
    as_recipe("cold-start")
    recipe_tests.test_cold_start_recipe_modal_settings(spy_load)
    recipe_tests.test_vllm_parser_accepts_recipe_argv("vllm_cold_start", vllm_parser)


def test_low_latency_app_passes_the_recipe_verification(
        as_recipe: Callable[[str], None], spy_load: Callable[[str], Spied],  # noqa: F811
        sglang_parser: Any) -> None:  # noqa: F811
    as_recipe("low-latency")
    recipe_tests.test_low_latency_recipe_modal_settings(spy_load)
    recipe_tests.test_sglang_parser_accepts_recipe_argv(sglang_parser)


def test_throughput_app_passes_the_recipe_verification(
        as_recipe: Callable[[str], None], spy_load: Callable[[str], Spied],  # noqa: F811
        vllm_parser: Any) -> None:  # noqa: F811
    as_recipe("throughput")
    recipe_tests.test_throughput_recipe_modal_settings(spy_load)
    recipe_tests.test_vllm_parser_accepts_recipe_argv("qwen3_throughput", vllm_parser)
    recipe_tests.test_throughput_llm_kwargs_equal_what_vllm_serve_would_get(vllm_parser)


# --- the syntax-tree edit itself ------------------------------------------------------------


def test_render_keeps_comments_style_and_reports_missing() -> None:
    source = ('MINUTES = 60  # seconds\n\n# prose stays\nTIMEOUT = 20 * MINUTES  # why\n'
              'GPU_TYPE = "H100"  # which card\nNAME: str = "x"\nnot_a_setting = 1\n')
    result = render_source(source, {"TIMEOUT": 600, "GPU_TYPE": "L4", "NAME": "y",
                                    "NEW_THING": 3, "MINUTES": 60})
    assert result.text == ('MINUTES = 60  # seconds\n\n# prose stays\n'
                           'TIMEOUT = 10 * MINUTES  # why\n'
                           'GPU_TYPE = "L4"  # which card\nNAME: str = "y"\nnot_a_setting = 1\n')
    assert result.missing == ["NEW_THING"] and result.unchanged == ["MINUTES"]
    assert result.changed["GPU_TYPE"] == ('"H100"', '"L4"')


def test_render_handles_multiline_values_and_unicode() -> None:
    source = 'TITLE = "café"  # é\nREGIONS = [\n    "us-east",\n]\nAFTER = 1\n'
    result = render_source(source, {"REGIONS": ["eu-west"], "TITLE": "naïve"})
    assert result.text == 'TITLE = "naïve"  # é\nREGIONS = ["eu-west"]\nAFTER = 1\n'


def test_render_refuses_ambiguous_and_unwritable_values() -> None:
    with pytest.raises(UsageError, match="twice"):
        render_source("X = 1\nX = 2\n", {"X": 3})
    with pytest.raises(UsageError, match="cannot write"):
        render_source("X = 1\n", {"X": object()})


def test_new_never_overwrites_without_force(tmp_path: Path) -> None:
    output = tmp_path / "app.py"
    output.write_text("# mine\n")
    with pytest.raises(UsageError, match="--force"):
        write_app(recipe_path("vllm_online"), {"N_GPU": 2}, output)
    assert output.read_text() == "# mine\n"
    with pytest.raises(UsageError, match=r"\.py"):
        write_app(recipe_path("vllm_online"), {"N_GPU": 2}, tmp_path / "app.txt")
    write_app(recipe_path("vllm_online"), {"N_GPU": 2}, output, force=True)
    assert "N_GPU = 2\n" in output.read_text()


def test_cli_new_refusal_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "app.py"
    result = CliRunner().invoke(cli, ["new", "--model", "Qwen/Qwen3-8B-FP8", "--revision",
                                      "220b46e3b2180893580a4454f21f22d3ebb187d3",
                                      "--set", "task=sandbox", "-o", str(output)])
    assert result.exit_code == 1 and "modal-sandbox" in result.output
    assert not output.exists()


def test_cli_new_refuses_a_local_folder(tiny_model_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["new", "--model", str(tiny_model_path),
                                      "-o", str(tmp_path / "app.py")])
    assert result.exit_code == 2 and "Modal container" in result.output
    assert not (tmp_path / "app.py").exists()


@pytest.mark.parametrize("extra", [
    {}, {"precision": "fp8", "kv_cache_dtype": "fp8"}, {"goal": "cold-start"},
    {"concurrency": 200, "tpot_ms": 30}])
def test_plan_engine_config_parses_with_vllms_own_parser(
        extra: dict[str, Any], vllm_parser: Any) -> None:  # noqa: F811
    from modal_llm_serving.engines import vllm_command
    from modal_llm_serving.plan import make_plan
    from modal_llm_serving.workload import workload_from_mapping

    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "abcdef1",
                                            **extra}))
    config = plan.engine_config()
    args = recipe_tests.parse_vllm_serve(vllm_parser, vllm_command(config).argv)
    assert args.max_model_len == plan.max_model_len
    assert args.max_num_seqs == plan.max_num_seqs
    assert args.tensor_parallel_size == plan.n_gpu
    assert args.gpu_memory_utilization == plan.gpu_memory_utilization
    if extra.get("precision") == "fp8":
        assert args.quantization == "fp8" and args.kv_cache_dtype == "fp8"
    assert args.enable_sleep_mode == (plan.pattern == "cold-start")


@pytest.mark.parametrize("extra", [{}, {"precision": "fp8", "kv_cache_dtype": "fp8"}])
def test_low_latency_engine_config_parses_with_sglangs_own_parser(
        extra: dict[str, Any], sglang_parser: Any) -> None:  # noqa: F811
    from modal_llm_serving.engines import sglang_command
    from modal_llm_serving.plan import make_plan
    from modal_llm_serving.workload import workload_from_mapping

    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "abcdef1",
                                            "goal": "low-latency", **extra}))
    argv = recipe_tests.sglang_argv(sglang_command(plan.engine_config()).argv)
    args = recipe_tests.parse_strictly(sglang_parser, argv)
    assert args.tp_size == plan.n_gpu and args.context_length == plan.max_model_len
    assert args.max_running_requests == plan.max_num_seqs
    assert args.mem_fraction_static == plan.gpu_memory_utilization
    if extra:
        assert args.kv_cache_dtype == "fp8_e4m3" and args.quantization == "fp8"


@pytest.mark.parametrize(("extra", "words"), [
    (["--precision", "fp8"], "no quantization setting"),
    (["--set", "kv_cache_dtype=fp8"], "fp8 KV cache"),
])
def test_cli_new_refuses_plans_the_recipes_cannot_carry(
        extra: list[str], words: str, tmp_path: Path) -> None:
    output = tmp_path / "app.py"
    result = CliRunner().invoke(cli, ["new", "--model", "Qwen/Qwen3-8B", "--revision",
                                      "abcdef1", *extra, "-o", str(output)])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not output.exists()
