"""Measured cost per million tokens: the arithmetic against hand-computed numbers, the GPUs read
from flags, an app file (the real recipe) and a real `mls plan --json`, and the cost wired into
`mls bench run` and `mls bench report` on a real run against the calibration mock."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.mockserver import MockProcess
from modal_llm_serving.bench.cost import (
    capacity_cost_line,
    level_cost,
    pricing_from_app,
    pricing_from_flags,
)
from modal_llm_serving.cli import cli
from modal_llm_serving.skill import skill_dir

REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=10, itl_ms=2) as server:
        yield server
        assert server.stats()["errors"] == []


def test_cost_per_million_tokens_by_hand() -> None:
    # 2 H100 at $3.95 in a narrow region (x1.75): 13.825 $/h; 1000 output tok/s, 4000 total:
    # 13.825 / 3.6e6 tokens an hour at 1000/s = $3.8403 per million; / 4 = $0.96007
    pricing = pricing_from_flags("H100", 2, region="us-east")
    cost = level_cost({"output_throughput": 1000.0, "total_token_throughput": 4000.0}, pricing)
    assert cost["usd_per_hour"] == pytest.approx(13.825)
    assert cost["usd_per_mtok_output"] == pytest.approx(3.840278, rel=1e-6)
    assert cost["usd_per_mtok_total"] == pytest.approx(0.960069, rel=1e-6)
    # unpinned, one L4 at $0.80: 0.80 / (3600 * 200) * 1e6 = $1.1111 per million
    cost = level_cost({"output_throughput": 200.0, "total_token_throughput": 0.0},
                      pricing_from_flags("l4", 1))
    assert cost["usd_per_mtok_output"] == pytest.approx(1.111111, rel=1e-6)
    assert cost["usd_per_mtok_total"] is None  # nothing produced: no price per token


def test_the_app_file_says_which_gpus(tmp_path: Path) -> None:
    recipe = (skill_dir() / "scripts" / "vllm_online.py").read_text()
    assert pricing_from_app(skill_dir() / "scripts" / "vllm_online.py").usd_per_hour == \
        pytest.approx(3.95)  # GPU_TYPE = "H100", N_GPU = 1, REGION = None
    app = tmp_path / "app.py"
    app.write_text(recipe.replace("N_GPU = 1", "N_GPU = 2").replace('REGION = None',
                                                                     'REGION = "us"'))
    pricing = pricing_from_app(app)
    assert (pricing.gpu, pricing.n_gpu, pricing.region_multiplier) == ("H100", 2, 1.5)
    assert pricing.usd_per_hour == pytest.approx(3.95 * 2 * 1.5)


def test_report_adds_the_cost_and_the_plans_error_later(mock: Any, tmp_path: Path) -> None:
    plan = CliRunner().invoke(cli, ["plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision", REV,
                                    "--json"])
    assert plan.exit_code == 0, plan.output
    (tmp_path / "plan.json").write_text(plan.stdout)
    planned = json.loads(plan.stdout)
    run = CliRunner().invoke(cli, ["bench", "run", mock.url, "-c", "2", "-n", "4",
                                   "--input-len", "8", "--output-len", "6", "--out",
                                   str(tmp_path / "run"), "--no-report"])
    assert run.exit_code == 0, run.output
    report = CliRunner().invoke(cli, ["bench", "report", str(tmp_path / "run"), "--plan",
                                      str(tmp_path / "plan.json")])
    assert report.exit_code == 0, report.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cost = summary["cost"]
    [predicted] = [p for p in planned["predictions"] if p["name"] == "cost_per_mtok_output_usd"]
    hourly = (planned["gpu"]["price_per_hour"] * planned["n_gpu"]
              * predicted["inputs"]["region_multiplier"])
    measured = hourly / (3600 * summary["output_throughput"]) * 1e6
    assert cost["usd_per_mtok_output"] == pytest.approx(measured)
    assert cost["plan_usd_per_mtok_output"] == pytest.approx(predicted["value"])
    assert cost["plan_error_pct"] == pytest.approx((measured - predicted["value"])
                                                   / predicted["value"] * 100)
    assert f"cost: {planned['n_gpu']}x {planned['gpu']['name']} at" in report.output
    assert "## Cost per million tokens" in (tmp_path / "run" / "report.md").read_text()


def test_run_with_gpu_flags_saves_the_cost_at_each_level(mock: Any, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "run", mock.url, "-c", "1,2", "-n", "4",
                                      "--input-len", "8", "--output-len", "6", "--out",
                                      str(tmp_path / "run"), "--gpu", "L40S", "--gpus", "2",
                                      "--region", "us-east"])
    assert result.exit_code == 0, result.output
    for level in ("c1", "c2"):
        summary = json.loads((tmp_path / "run" / level / "summary.json").read_text())
        assert summary["cost"]["usd_per_mtok_output"] == pytest.approx(
            1.95 * 2 * 1.75 / (3600 * summary["output_throughput"]) * 1e6)
    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert all(s["cost"]["gpu"] == "L40S" for s in sweep["summaries"])
    assert result.output.count("cost: 2x L40S at $6.83/h") == 2

    # the capacity line reads only a level folder of this sweep (the name comes from a file)
    shutil.copytree(tmp_path / "run" / "c2", tmp_path / "elsewhere")
    cost = capacity_cost_line({"capacity_slug": "c2"}, tmp_path / "run")
    assert cost is not None and cost.startswith("cost at the capacity (c2): $"), cost
    assert "2x L40S" in cost
    assert capacity_cost_line({"capacity_slug": "../elsewhere"}, tmp_path / "run") is None
    assert capacity_cost_line({"capacity_slug": "c9"}, tmp_path / "run") is None


@pytest.mark.parametrize(("flags", "words"), [
    (["--gpus", "2"], "needs --gpu TYPE"),
    (["--gpu", "H100", "--plan", "PLAN"], "drop --gpu"),
    (["--gpu", "B9000"], "not in the GPU catalog"),
    (["--gpu", "H100", "--region", "moon"], "not a Modal region"),
    (["--plan", "PLAN"], "is not a plan from `mls plan --json`"),
    (["--app", "BAD"], "cannot read it as Python"),
    (["--app", "PLAN"], "asks for no GPU"),
])
def test_a_wrong_cost_option_is_one_line_exit_2(tmp_path: Path, flags: list[str],
                                                words: str) -> None:
    (tmp_path / "plan.json").write_text('{"refused": "out of scope"}')
    (tmp_path / "bad.py").write_text("def (:\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    files = {"PLAN": str(tmp_path / "plan.json"), "BAD": str(tmp_path / "bad.py")}
    args = [files.get(flag, flag) for flag in flags]
    result = CliRunner().invoke(cli, ["bench", "report", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
