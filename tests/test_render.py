"""`mls new`: from a workload to an app that passes `mls check` and every recipe verifier.

The four README workloads (read from the README itself, so the documented flow is the tested one)
and more workloads of our own go plan -> new -> check through the CLI; each written file then
passes the verifiers the skill's recipes pass (`tests/verify.py`: the Modal SDK given its settings,
its own engine command through the engine's own parser, and `mls local serve --recipe` running
exactly the CPU transform of it).
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
from modal_llm_serving.recipes.files import load_recipe, recipe_path
from modal_llm_serving.recipes.new import render_source, write_app

from .verify import (
    Spied,
    spy_modal,
    verify_engine_command,
    verify_local_command,
    verify_modal_settings,
)

__all__ = ["spy_modal"]  # a fixture, used by name

README = Path(__file__).resolve().parents[1] / "README.md"
GOALS = {"online": "vllm_online", "cold-start": "vllm_cold_start",
         "low-latency": "sglang_low_latency", "throughput": "qwen3_throughput"}


def readme_workloads() -> dict[str, str]:
    """`# NAME.toml` code blocks of the README's "Plan, write and check an app" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Plan, write and check an app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n# ([\w-]+)\.toml[^\n]*\n(.*?)```", section, re.S)
    return dict(blocks)


# Workloads of our own, beyond the README's: gated model, several GPUs, fp8 KV cache, a pinned
# region, an alias, a small context, an offline job on another model.
REV = "0123456789abcdef0123456789abcdef01234567"  # any commit hash: nothing is downloaded
OURS = {
    "gated-llama-online": {"model": "meta-llama/Llama-3.1-8B-Instruct", "concurrency": 48,
                           "served_model_name": "llama"},
    "big-tp-online": {"model": "Qwen/Qwen3-32B", "concurrency": 16, "kv_cache_dtype": "fp8"},
    "cold-start-region": {"model": "Qwen/Qwen3-0.6B", "goal": "cold-start", "region": "eu-west",
                          "context_length": 2048},
    "low-latency-fp8-kv": {"model": "Qwen/Qwen3-8B", "goal": "low-latency", "region": "us-west",
                           "kv_cache_dtype": "fp8", "concurrency": 4},
    "offline-mistral": {"model": "mistralai/Mistral-7B-Instruct-v0.3", "offline": True,
                        "input_tokens": 512, "output_tokens": 256},
    # the Server form (@app.server), chosen when clients can send Modal proxy auth
    "server-low-latency-eu": {"model": "Qwen/Qwen3-8B-FP8", "goal": "low-latency",
                              "proxy_auth": True, "region": "eu-west", "concurrency": 4},
    "server-cold-start": {"model": "Qwen/Qwen3-0.6B", "goal": "cold-start", "proxy_auth": True,
                          "served_model_name": "qwen-small"},
}


def toml(fields: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in
                   {"revision": REV, **fields}.items())




def test_the_readme_has_one_workload_per_goal() -> None:
    assert set(readme_workloads()) == set(GOALS)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """plan -> new -> check for each README workload, through the CLI, as the README says."""
    folder = tmp_path_factory.mktemp("apps")
    runner = CliRunner()
    apps = {}
    ours = {goal: toml(fields) for goal, fields in OURS.items()}
    for goal, body in {**readme_workloads(), **ours}.items():
        workload = folder / f"{goal}.toml"
        workload.write_text(body)
        plan = runner.invoke(cli, ["plan", str(workload), "--json"])
        assert plan.exit_code == 0, plan.output
        if goal in GOALS:
            assert json.loads(plan.output)["pattern"] == goal
        output = folder / f"my_{goal.replace('-', '_')}.py"
        new = runner.invoke(cli, ["new", str(workload), "-o", str(output)])
        assert new.exit_code == 0, new.output
        assert "mls check: no findings" in new.output
        check = runner.invoke(cli, ["check", str(output)])
        assert check.exit_code == 0, check.output
        apps[goal] = output
    return apps


ALL = sorted([*GOALS, *OURS])


def test_the_readme_counts_the_workloads_written_here_and_checked_in_test_check() -> None:
    from .test_check import MATRIX

    text = " ".join(README.read_text(encoding="utf-8").split())
    counts = re.search(r"A test writes apps from (\d+) workloads .*?; another writes (\d+) ", text)
    assert counts is not None, "README no longer says how many workloads the tests write"
    assert (int(counts[1]), int(counts[2])) == (len(ALL), len(MATRIX))


def recipe_of(written: Path) -> Path:
    """The skill recipe a written app came from (`mls new` keeps the recipe's structure)."""
    text = written.read_text()
    for name in [*GOALS.values(), "vllm_server"]:
        if recipe_path(name).read_text().splitlines()[:2] == text.splitlines()[:2]:
            return recipe_path(name)
    raise AssertionError(f"{written} matches no recipe")


@pytest.mark.parametrize("goal", ALL)
def test_only_settings_constants_change(goal: str, written: dict[str, Path]) -> None:
    recipe = recipe_of(written[goal]).read_text()
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


@pytest.mark.parametrize("goal", ALL)
def test_written_app_carries_every_planned_setting(goal: str, written: dict[str, Path]) -> None:
    """One vocabulary: every setting the plan emits is a constant of the recipe, and lands."""
    result = CliRunner().invoke(cli, ["plan", str(written[goal].with_name(f"{goal}.toml")),
                                      "--json"])
    settings = json.loads(result.output)["recipe_settings"]
    module = load_recipe(written[goal], module_name=f"mls_new_{goal.replace('-', '_')}")
    missing = [name for name in settings if not hasattr(module, name)]
    assert missing == [], f"the plan emits settings the recipe does not define: {missing}"
    for name, value in settings.items():
        assert getattr(module, name) == value, name


@pytest.mark.parametrize("goal", ALL)
def test_written_app_passes_the_recipe_verifiers(goal: str, written: dict[str, Path],
                                                 spy_modal: Callable[[Path], Spied],
                                                 tiny_model_path: Path) -> None:
    pattern = verify_modal_settings(spy_modal(written[goal]))
    if goal in GOALS:
        assert pattern == goal
    module = load_recipe(written[goal], module_name=f"verify_{goal.replace('-', '_')}")
    verify_engine_command(module)
    if pattern in ("online", "cold-start"):
        verify_local_command(written[goal], tiny_model_path)


def test_a_written_app_serves_locally_through_the_cli(written: dict[str, Path],
                                                      tiny_model_path: Path) -> None:
    """`mls local command --recipe` on an `mls new` output: parsed, transformed, shown."""
    result = CliRunner().invoke(cli, ["local", "command", "--recipe",
                                      str(written["gated-llama-online"]),
                                      "--model", str(tiny_model_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["recipe_argv"][2] == "meta-llama/Llama-3.1-8B-Instruct"
    assert data["recipe_argv"][data["recipe_argv"].index("--served-model-name") + 1] == "llama"


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


@pytest.mark.parametrize(("extra", "words"), [
    (["--precision", "fp8"], "no quantization setting"),
])
def test_cli_new_refuses_plans_the_recipes_cannot_carry(
        extra: list[str], words: str, tmp_path: Path) -> None:
    output = tmp_path / "app.py"
    result = CliRunner().invoke(cli, ["new", "--model", "Qwen/Qwen3-8B", "--revision",
                                      "abcdef1", *extra, "-o", str(output)])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not output.exists()


@pytest.mark.engine
def test_a_written_app_is_served_by_local_serve_and_passes_the_smoke_test(
        tmp_path: Path, tiny_model_path: Path) -> None:
    """plan -> new -> `mls local serve --recipe` on real vLLM: the written file's own command."""
    import subprocess
    import sys

    app = tmp_path / "smol_app.py"
    new = CliRunner().invoke(cli, ["new", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                   "--revision", REV, "--concurrency", "4", "--set",
                                   "context_length=2048", "-o", str(app)])
    assert new.exit_code == 0, new.output
    done = subprocess.run(
        [sys.executable, "-m", "modal_llm_serving", "local", "serve", "--recipe", str(app),
         "--model", str(tiny_model_path), "--exit-after-smoke",
         "--log-file", str(tmp_path / "engine.log")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "all steps passed" in done.stdout
    assert "--max-model-len 2048" in done.stderr  # the written setting is what runs
