"""Plan -> new -> check for the largest open models: one host where one holds them with room for
batches, else a plan on Modal's clustered containers that `mls new` writes as vllm_multi_node.py
and `mls check` passes; broken variants of a written file are flagged, and every rank's engine
command passes vLLM's own parser. The facts come from the built-in catalog (no Hub here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.errors import PlanRefused
from modal_llm_serving.facts.workload import workload_from_mapping
from modal_llm_serving.local.engine_args import parse_vllm_serve
from modal_llm_serving.plan import make_plan
from modal_llm_serving.plan.cluster import NeedsCluster
from modal_llm_serving.plan.types import Layout
from modal_llm_serving.recipes.files import load_recipe

REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
DEEPSEEK, KIMI = "deepseek-ai/DeepSeek-V3", "moonshotai/Kimi-K2-Instruct"
LLAMA = "meta-llama/Llama-3.1-405B-Instruct"


def plan_for(model: str, **fields: Any) -> Any:
    return make_plan(workload_from_mapping({"model": model, "revision": REV, **fields}))


# --- one host where one holds the model with room for batches ------------------------------------


@pytest.mark.parametrize(("model", "fields", "setup"), [
    # 673 GB: 4 x (288 GB x 0.9 - 2 GB) = 1,029 GB; 8x H200 next at $36.32/h
    (DEEPSEEK, {"precision": "fp8"}, ("B300", 4)),
    (DEEPSEEK, {"precision": "fp8", "gpu": "H200"}, ("H200", 8)),  # 999 GB for 673
    (KIMI, {}, ("B200", 8)),  # 1,029 GB of fp8 weights in 8 x (180 x 0.9 - 2) = 1,280 GB
    # 810 GB of bf16 weights: 8 x (141 x 0.9 - 2) = 999 GB leaves 189 GB of KV on one H200 host
    (LLAMA, {"precision": "bf16"}, ("B300", 4)),
    (LLAMA, {"precision": "bf16", "gpu": "H200"}, ("H200", 8)),
])
def test_one_host_serves_a_large_model_where_it_holds_it_with_room_for_batches(
        model: str, fields: dict[str, Any], setup: tuple[str, int]) -> None:
    plan = plan_for(model, **fields)
    assert (plan.gpu.name, plan.n_gpu) == setup and plan.cluster is None
    assert plan.pattern == "online" and plan.layout == Layout(1, setup[1], setup[1])
    kv = plan.chosen.kv_capacity_tokens * plan.sizing.kv_bytes_per_token
    assert kv >= 8 * plan.max_model_len * plan.sizing.kv_bytes_per_token  # 8 sequences at least


# --- several hosts where none holds it ----------------------------------------------------------


@pytest.mark.parametrize(("model", "fields", "gpu", "nodes", "ep"), [
    (DEEPSEEK, {"precision": "fp8", "gpu": "H100"}, "H100", 2, 8),  # 673 GB > 576 GB a host
    (DEEPSEEK, {"precision": "bf16", "gpu": "H200"}, "H200", 2, 8),  # 1,342 GB > 999 GB
    (KIMI, {"gpu": "H100"}, "H100", 2, 8),  # 1,029 GB of fp8 in 1,120 GB: 91 GB of KV
    (KIMI, {"precision": "bf16"}, "B200", 2, 8),  # 2,053 GB: more than 8x B300's 2,058 less KV
    (LLAMA, {"precision": "bf16", "gpu": "H100"}, "H100", 2, 1),  # dense: no expert parallelism
])
def test_a_model_no_host_holds_is_planned_on_whole_hosts_of_a_cluster(
        model: str, fields: dict[str, Any], gpu: str, nodes: int, ep: int) -> None:
    plan = plan_for(model, **fields)
    assert (plan.pattern, plan.recipe, plan.gpu.name) == ("multi-node", "vllm_multi_node.py", gpu)
    assert plan.layout == Layout(nodes=nodes, gpus_per_node=8, tp=8, pp=nodes, ep=ep)
    settings = plan.recipe_settings()
    assert {k: settings[k] for k in ("GPU_TYPE", "N_GPU", "N_NODES", "RDMA",
                                     "ENABLE_EXPERT_PARALLEL")} == {
        "GPU_TYPE": gpu, "N_GPU": 8, "N_NODES": nodes, "RDMA": True,
        "ENABLE_EXPERT_PARALLEL": ep > 1}
    assert settings["MAX_CONTAINERS"] % nodes == 0 and settings["MIN_CONTAINERS"] % nodes == 0
    assert settings["TARGET_CONCURRENCY"] <= settings["MAX_CONCURRENCY"] <= settings[
        "MAX_NUM_SEQS"]
    # the startup limit covers reading every weight off the Volume at 1 GB/s (MLS026)
    assert settings["STARTUP_TIMEOUT"] >= plan.sizing.weights_bytes / 1e9
    # the model fits no host: the card's 8-GPU host was weighed, and ruled out as too small
    # (an empty list would pass `all`: the host must be among the setups ruled out)
    host = [r.kind for r in plan.rejected if r.n_gpu == 8 and r.gpu == gpu]
    assert host and all(kind in ("memory", "kv") for kind in host), plan.rejected


def test_a_clustered_plan_has_its_numbers_worked_by_hand() -> None:
    plan = plan_for(LLAMA, precision="bf16", gpu="H100")
    cluster = plan.cluster
    # a node gives 8 x (80 GB x 0.9 - 2 GB) = 560 GB; two hold 810 GB of weights and 310 GB
    # of KV: x 0.9 / (8192 tokens x 258,048 values x 2 B) = 65 sequences of 8192 tokens
    assert cluster.usable_bytes == pytest.approx(1120e9) and cluster.sequences == 65
    # pinned beside the Server's proxy (us-east, 1.75x): 16 GPUs x $3.95 x 1.75
    assert plan.region == "us-east"
    assert plan.chosen.cost_per_hour == pytest.approx(16 * 3.95 * 1.75)
    assert plan.max_containers == 2 and plan.target_inputs == 8  # concurrency 8: one copy
    # each node reads its own 405 GB stage at 1 GB/s
    assert plan.prediction("weights_per_node_gb").value == pytest.approx(405.0)
    assert plan.prediction("cold_start_weights_floor_s").value == pytest.approx(405.0)
    # a step of 8 sequences passes both stages in turn: each reads its half of the weights (but
    # the gathered input embedding, 128,256 x 16,384 x 2 B) and KV over 8 GPUs, 126 layers of
    # 45 us kernels, 2 all-reduces a layer over NVLink 4 (450 GB/s x 0.8) and one hop between
    # the hosts over RDMA (400 GB/s x 0.8)
    h100 = plan.gpu
    memory = (810e9 - 128256 * 16384 * 2 + 8 * 1125 * 258048 * 2) / (8 * h100.hbm_bytes_s)
    allreduce = 2 * 126 * (10e-6 + 2 * 7 / 8 * 8 * 16384 * 2 / (450e9 * 0.8))
    hop = 5e-6 + 8 * 16384 * 2 / (400e9 * 0.8)
    assert plan.prediction("tpot_floor_ms").value == pytest.approx(
        (memory + 126 * 45e-6 + allreduce + hop) * 1e3)
    cost = plan.prediction("cost_per_mtok_output_usd").value
    assert cost == pytest.approx(16 * 3.95 * 1.75 / (3600 * plan.prediction(
        "output_tok_s_full_load").value) * 1e6)
    # fp8 would fit one 8x H100 host: the plan says so beside the cluster's price
    trade = dict(plan.reasons)["precision trade"]
    assert "at fp8 the weights take 409 GB and one host holds them: 8x H100" in trade


def test_mls_plan_tells_the_cluster_in_text_and_json() -> None:
    args = ["plan", "--model", DEEPSEEK, "--revision", REV, "--precision", "fp8", "--gpu", "H100"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "multi-node pattern, vllm, recipe vllm_multi_node.py" in text.output
    assert "cluster: 2 nodes of 8 GPUs, TP 8 x PP 2, EP 8 per copy of the model" in text.output
    assert "8x H100 needs 689.5 GB, has 576.0 GB usable" in text.output  # why not one host
    assert "weights each node loads: 336.4 GB" in text.output
    for topic in ("layout", "cost", "startup", "primitive"):
        assert f"  - {topic}: " in text.output
    data = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert data["pattern"] == "multi-node" and data["recipe"] == "vllm_multi_node.py"
    assert data["layout"] == {"nodes": 2, "gpus_per_node": 8, "tp": 8, "pp": 2, "ep": 8, "dp": 1}
    assert data["cluster"]["gpu"] == "H100" and data["containers_at_peak"] == 2
    assert data["recipe_settings"]["N_NODES"] == 2


@pytest.mark.parametrize(("fields", "words"), [
    ({"goal": "low-latency"}, "serves the online pattern only, not low-latency"),
    ({"tpot_ms": 12}, "no GPU setup meets these SLOs"),  # one host holds it, but too slow
    ({"budget_per_hour": 60}, "over budget_per_hour $60"),
])
def test_a_workload_that_rules_the_cluster_out_is_refused_with_the_layout(
        fields: dict[str, Any], words: str) -> None:
    with pytest.raises(PlanRefused) as info:
        plan_for(LLAMA, precision="bf16", **fields,
                 **({} if "tpot_ms" in fields else {"gpu": "H100"}))
    assert words in str(info.value)
    if "budget_per_hour" in fields or "goal" in fields:
        assert isinstance(info.value, NeedsCluster)
        assert info.value.proposal.layout.nodes == 2


def test_whole_hosts_only_no_cluster_below_eight_gpus() -> None:
    with pytest.raises(PlanRefused) as info:
        plan_for(LLAMA, precision="bf16", gpu="H100", max_gpus=4)
    assert not isinstance(info.value, NeedsCluster)
    assert "whole 8-GPU hosts" in str(info.value)


# --- mls new writes it, mls check passes it ------------------------------------------------------

WRITTEN = {
    "deepseek-h100": [DEEPSEEK, "--precision", "fp8", "--gpu", "H100"],
    "kimi-h100": [KIMI, "--gpu", "H100"],
    "llama-h100": [LLAMA, "--precision", "bf16", "--gpu", "H100"],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder, apps = tmp_path_factory.mktemp("clusters"), {}
    for name, (model, *rest) in WRITTEN.items():
        output = folder / f"{name.replace('-', '_')}.py"
        new = CliRunner().invoke(cli, ["new", "--model", model, "--revision", REV, *rest,
                                       "-o", str(output)])
        assert new.exit_code == 0, new.output
        assert "(multi-node pattern, 2 x 8x H100)" in new.output
        assert "mls check: no findings" in new.output
        apps[name] = output
    return apps


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_mls_new_writes_the_plan_into_the_clustered_recipe(name: str,
                                                           written: dict[str, Path]) -> None:
    model, *rest = WRITTEN[name]
    plan = json.loads(CliRunner().invoke(cli, ["plan", "--model", model, "--revision", REV,
                                               *rest, "--json"]).output)
    app = load_recipe(written[name], module_name=f"written_{name.replace('-', '_')}")
    for setting, value in plan["recipe_settings"].items():
        assert getattr(app, setting) == value, setting
    check = CliRunner().invoke(cli, ["check", str(written[name]), "--json", "--no-import"])
    assert check.exit_code == 0 and json.loads(check.output)["findings"] == []


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_every_rank_of_a_written_app_passes_vllms_parser(name: str,
                                                         written: dict[str, Path]) -> None:
    app = load_recipe(written[name], module_name=f"ranks_{name.replace('-', '_')}")
    addresses = [f"10.1.0.{i + 1}" for i in range(app.N_NODES)]
    for rank in range(app.N_NODES):
        command, env = app.node_command(rank, addresses)
        args = parse_vllm_serve(command)
        assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (8, app.N_NODES)
        assert (args.nnodes, args.node_rank, args.master_addr) == (app.N_NODES, rank,
                                                                   addresses[0])
        assert args.enable_expert_parallel is app.ENABLE_EXPERT_PARALLEL
        assert args.headless is (rank > 0) and args.max_model_len == app.MAX_MODEL_LEN
        assert env["VLLM_HOST_IP"] == addresses[rank]


@pytest.mark.parametrize(("edit", "rules"), [
    # the cluster grows but the container counts stay those of two nodes
    ((r"^N_NODES = 2\b", "N_NODES = 3"), {"MLS031"}),
    ((r"^MAX_CONTAINERS = 2\b", "MAX_CONTAINERS = 3"), {"MLS031"}),
    # the pipeline no longer spans the nodes: 8 x 1 GPUs for a cluster of 16, and 673 GB of
    # weights on the 8 GPUs of one engine (MLS023)
    ((r'"--pipeline-parallel-size", str\(N_NODES\)', '"--pipeline-parallel-size", "1"'),
     {"MLS034", "MLS023"}),
    # half a host per container: 2 x 4 GPUs (TP 4 x PP 2 agrees) no longer hold the weights
    ((r"^N_GPU = 8\b", "N_GPU = 4"), {"MLS032", "MLS023"}),
    ((r"^RDMA = True\b", "RDMA = False"), {"MLS033"}),
])
def test_a_broken_variant_of_a_written_app_is_flagged(edit: tuple[str, str], rules: set[str],
                                                      written: dict[str, Path],
                                                      tmp_path: Path) -> None:
    pattern, replacement = edit
    text, count = re.subn(pattern, replacement, written["deepseek-h100"].read_text(),
                          flags=re.MULTILINE)
    assert count == 1, pattern
    broken = tmp_path / "broken.py"
    broken.write_text(text)
    check = CliRunner().invoke(cli, ["check", str(broken), "--json", "--no-import"])
    assert check.exit_code == 1, check.output
    assert {f["rule"] for f in json.loads(check.output)["findings"]} == rules
