"""`mls plan`: the workload spec, the catalogs, the seed's decision rules, sizing, predictions."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modal_llm_serving.cli import cli
from modal_llm_serving.errors import PlanRefused, UsageError, WorkloadError
from modal_llm_serving.facts.gpus import load_gpu_catalog
from modal_llm_serving.facts.models import builtin_models, model_facts, model_facts_from_config
from modal_llm_serving.facts.workload import load_workload, workload_from_mapping
from modal_llm_serving.plan import SLO_MARGIN, TP_SIZES, explain, make_plan
from modal_llm_serving.plan.cluster import NeedsCluster
from modal_llm_serving.plan.rules import MAX_PLANNED_GPUS, MIN_SEQUENCES
from modal_llm_serving.plan.sizing import size
from modal_llm_serving.plan.types import Layout, Rejection

REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
BASE = {"model": "Qwen/Qwen3-8B-FP8", "revision": REV}


def plan_of(**fields: Any) -> Any:
    return make_plan(workload_from_mapping({**BASE, **fields}))


# --- the workload ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"concurrency": -3}, "concurrency", "at least 1"),
    ({"concurrency": 2.5}, "concurrency", "whole number"),
    ({"region": "mars"}, "region", "not one of"),
    ({"region": "us-eats"}, "region", "did you mean 'us-east'"),
    ({"revision": "main"}, "revision", "branch or tag"),
    ({"revision": None, "model": "Qwen/Qwen3-8B"}, "revision", "required"),
    ({"goal": "fastest"}, "goal", "online, cold-start, low-latency, throughput"),
    ({"ttft_ms": 0}, "ttft_ms", "greater than 0"),
    ({"tpot_ms": "fast"}, "tpot_ms", "must be a finite number"),
    ({"context_length": 512, "input_tokens": 1000}, "context_length", "shorter than"),
    ({"max_gpus": 3}, "max_gpus", "power of two"),
    ({"max_gpus": 16}, "max_gpus", "multi-node"),
    ({"goal": "throughput", "tpot_ms": 20}, "goal", "no per-request latency"),
    ({"offline": True, "goal": "online"}, "offline", "no HTTP server"),
    ({"concurency": 4}, "concurency", "did you mean 'concurrency'"),
    ({"model": "justaname"}, "model", "org/name"),
])
def test_invalid_workload_names_the_field(fields: dict[str, Any], field: str, words: str) -> None:
    data = {k: v for k, v in {**BASE, **fields}.items() if v is not None}  # None: left out
    with pytest.raises(WorkloadError) as info:
        workload_from_mapping(data)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value) and words in str(info.value)


def test_toml_file_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'model = "Qwen/Qwen3-8B-FP8"\nrevision = "{REV}"\nconcurrency = 4\n'
                    'tpot_ms = 40\n')
    workload = load_workload(path, overrides={"concurrency": 64, "region": None})
    assert (workload.concurrency, workload.tpot_ms, workload.region) == (64, 40.0, None)
    path.write_text("model = [broken")
    with pytest.raises(WorkloadError, match="not valid TOML"):
        load_workload(path)


def test_local_checkpoint_needs_no_revision(tiny_model_path: Path) -> None:
    workload = workload_from_mapping({"model": str(tiny_model_path)})
    assert workload.is_local_path and workload.revision is None


# --- the catalogs ---------------------------------------------------------------------------


def test_gpu_catalog_marks_unverified_prices_and_takes_overrides(tmp_path: Path) -> None:
    gpus, platform = load_gpu_catalog()
    assert gpus["H100"].price_per_hour == 3.95 and gpus["H100"].price_verified
    assert {"H100", "A100-80GB", "L40S", "L4", "T4"} <= {n for n, g in gpus.items()
                                                       if g.price_verified}
    assert {"H200", "B200", "A10", "A100-40GB", "RTX-PRO-6000"} <= set(gpus)
    assert not gpus["B200"].price_verified and platform.volume_read_gb_s > 0
    override = tmp_path / "gpus.toml"
    override.write_text("[gpus.H100]\nprice_per_hour = 2.0\nprice_verified = true\n"
                        "[gpus.X9]\nmemory_gb = 10\nhbm_tb_s = 1.0\nbf16_tflops = 100.0\n"
                        "fp8_tflops = 0.0\nfp8 = false\nprice_per_hour = 0.1\n"
                        "price_verified = false\n[platform]\nvolume_read_gb_s = 4.0\n")
    gpus, platform = load_gpu_catalog(override)
    assert gpus["H100"].price_per_hour == 2.0 and gpus["H100"].hbm_tb_s == 3.35
    assert gpus["X9"].memory_gb == 10 and platform.volume_read_gb_s == 4.0
    override.write_text("[gpus.X9]\nmemory_gb = 10\n")
    with pytest.raises(UsageError, match="X9"):
        load_gpu_catalog(override)


def test_achievable_shares_measured_assumed_and_overridden(tmp_path: Path) -> None:
    """A measured card carries its own shares; the others the assumed ones; a user catalog may
    give a card its own, and a share outside (0, 1] or without a source is refused."""
    gpus, _ = load_gpu_catalog()
    assert gpus["H100"].achievable.source.startswith("measured")
    assert gpus["L4"].achievable.source.startswith("assumed")
    assert gpus["H100"].hbm_bytes_s == pytest.approx(3.35e12 * gpus["H100"].achievable.hbm)
    assert gpus["H100"].flops_s(fp8=True) == pytest.approx(1979e12 * gpus["H100"].achievable.fp8)
    assert gpus["T4"].flops_s(fp8=True) == gpus["T4"].flops_s(fp8=False)  # no FP8 tensor cores
    override = tmp_path / "gpus.toml"
    override.write_text('[gpus.L4]\nachievable = { hbm = 0.5, bf16 = 0.5, fp8 = 0.5, '
                        'source = "measured on my L4" }\n')
    assert load_gpu_catalog(override)[0]["L4"].hbm_bytes_s == pytest.approx(0.30e12 * 0.5)
    for bad in ("hbm = 1.5, bf16 = 0.5, fp8 = 0.5, source = 'x'",
                "hbm = 0.5, bf16 = 0.5, fp8 = 0.5, source = ''",
                "hbm = 0.5, bf16 = 0.5, source = 'x'"):
        override.write_text(f"[gpus.L4]\nachievable = {{ {bad} }}\n")
        with pytest.raises(UsageError, match="achievable"):
            load_gpu_catalog(override)


def test_gpu_catalog_override_changes_the_plan(tmp_path: Path) -> None:
    override = tmp_path / "gpus.toml"
    override.write_text("[gpus.H100]\nprice_per_hour = 0.10\n")
    workload = workload_from_mapping({**BASE, "concurrency": 16})
    assert make_plan(workload).gpu.name != "H100"
    assert make_plan(workload, gpu_catalog=override).gpu.name == "H100"


QWEN3_8B_CONFIG = {  # the published config.json's architecture fields
    "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "tie_word_embeddings": False, "max_position_embeddings": 40960, "torch_dtype": "bfloat16"}
MIXTRAL_CONFIG = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768}


def test_parameter_counts_from_config_match_the_model_cards() -> None:
    dense = model_facts_from_config(QWEN3_8B_CONFIG, name="q", source="test")
    assert dense.total_params == pytest.approx(8.19e9, rel=0.01)
    assert dense.kv_elements_per_token() == 2 * 36 * 8 * 128
    moe = model_facts_from_config(MIXTRAL_CONFIG, name="m", source="test")
    assert moe.total_params == pytest.approx(46.7e9, rel=0.01)
    assert moe.active_params == pytest.approx(12.9e9, rel=0.01)
    assert moe.is_moe and moe.native_precision == "bf16"
    with pytest.raises(UsageError, match="hidden_size"):
        model_facts_from_config({"vocab_size": 3}, name="x", source="bad.json")


def _safetensors_params(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def test_local_config_facts_match_the_real_checkpoint(tiny_model_path: Path) -> None:
    facts = model_facts(str(tiny_model_path))
    assert facts.source.startswith("config.json at")
    assert facts.total_params == pytest.approx(_safetensors_params(tiny_model_path), rel=0.02)
    assert facts.checkpoint_bytes and facts.checkpoint_bytes > 0


def test_hub_cache_config_is_read_at_the_pinned_revision(
        tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--someorg--tiny"
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_model_path / "config.json", snapshot / "config.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    facts = model_facts("someorg/tiny", revision=REV)
    assert str(snapshot) in facts.source
    with pytest.raises(UsageError, match=r"40-character revision \(`mls revision someorg/tiny`"):
        model_facts("someorg/tiny", revision="0123456789abcdef")


def test_unknown_model_asks_for_a_config() -> None:
    with pytest.raises(UsageError, match=r"config\.json"):
        make_plan(workload_from_mapping({"model": "nobody/unknown-7b", "revision": "abcdef1"}))


# --- the seed's decision rules ---------------------------------------------------------------


def test_online_is_the_default_and_slos_alone_do_not_pick_sglang() -> None:
    plan = plan_of(concurrency=16, ttft_ms=2000, tpot_ms=60)
    assert (plan.pattern, plan.engine, plan.recipe) == ("online", "vllm", "vllm_online.py")
    assert "low-latency" in plan.reasons[0][1]


def test_cold_start_only_when_startup_latency_is_first_class() -> None:
    assert plan_of(cold_start_s=600).pattern == "online"  # a slow cold start is acceptable
    plan = plan_of(cold_start_s=30)
    assert plan.pattern == "cold-start" and plan.n_gpu == 1
    assert plan.recipe == "vllm_cold_start.py"  # the recipe that runs vLLM in sleep mode
    assert plan.recipe_settings()["KV_CACHE_GIB"] >= 1


def test_cold_start_tighter_than_snapshots_keeps_a_warm_container() -> None:
    plan = plan_of(cold_start_s=1)
    assert plan.pattern == "cold-start" and plan.min_containers == 1
    assert any(topic == "warm container" for topic, _ in plan.reasons)


def test_sglang_only_for_an_explicit_low_latency_goal() -> None:
    plan = plan_of(goal="low-latency")
    assert (plan.engine, plan.recipe) == ("sglang", "sglang_low_latency.py")
    assert plan.region == "us-east" and plan.recipe_settings()["PROXY_REGIONS"] == ["us-east"]
    assert plan.max_inputs is None and "MAX_INPUTS" not in plan.recipe_settings()
    assert plan.chosen.price_multiplier == 1.75  # a narrow region costs 1.75x


def test_offline_work_uses_the_llm_interface() -> None:
    plan = plan_of(offline=True, input_tokens=1024, output_tokens=128)
    assert (plan.pattern, plan.recipe) == ("throughput", "qwen3_throughput.py")
    settings = plan.recipe_settings()
    assert (settings["INPUT_LEN"], settings["OUTPUT_LEN"]) == (1024, 128)
    assert "TARGET_INPUTS" not in settings and plan.max_model_len == 2048


@pytest.mark.parametrize(("task", "sibling"), [
    ("fine-tuning", "modal-finetuning"), ("training", "modal-finetuning"),
    ("batch-jobs", "modal-batch-processing"), ("sandbox", "modal-sandbox"),
    ("embeddings", "not text generation"), ("diffusion", "out of scope"),
    ("hosted-api", "self-hosted"),
])
def test_out_of_scope_requests_name_the_sibling(task: str, sibling: str) -> None:
    with pytest.raises(PlanRefused, match=sibling):
        plan_of(task=task)


# --- sizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["Qwen/Qwen3-8B", "Qwen/Qwen3-30B-A3B",
                                   "meta-llama/Llama-3.3-70B-Instruct", "openai/gpt-oss-120b"])
def test_the_plan_fits_with_headroom_and_is_the_cheapest(model: str) -> None:
    plan = make_plan(workload_from_mapping({"model": model, "revision": "abcdef1",
                                            "concurrency": 24}))
    _, platform = load_gpu_catalog()
    usable = plan.n_gpu * (plan.gpu.memory_gb * plan.gpu_memory_utilization
                           - platform.gpu_overhead_gb) * 1e9
    kv_per_token = plan.model.kv_elements_per_token() * 2
    assert plan.chosen.weights_bytes + plan.max_model_len * kv_per_token < usable
    assert plan.n_gpu in TP_SIZES and plan.model.heads % plan.n_gpu == 0
    assert plan.target_inputs <= (plan.max_inputs or plan.target_inputs) <= plan.max_num_seqs
    assert all(alt.cost_per_hour >= plan.chosen.cost_per_hour for alt in plan.alternatives)


def test_concurrency_beyond_one_container_adds_replicas() -> None:
    plan = plan_of(concurrency=4000, gpu="L4")
    assert plan.max_containers > 1
    assert plan.max_containers * plan.target_inputs >= 4000


def test_tpot_slo_caps_the_batch() -> None:
    one_h100 = {"concurrency": 64, "gpu": "H100", "max_gpus": 1}
    loose, tight = plan_of(**one_h100), plan_of(**one_h100, tpot_ms=8)
    assert tight.target_inputs < loose.target_inputs
    assert tight.max_containers > loose.max_containers  # the rest goes to more replicas
    assert tight.prediction("tpot_floor_ms").value <= 8 * SLO_MARGIN


def test_model_that_fits_no_host_says_what_would_where_the_workload_rules_a_cluster_out() -> None:
    with pytest.raises(NeedsCluster) as info:  # the clustered recipe serves online only
        make_plan(workload_from_mapping({"model": "meta-llama/Llama-3.1-405B-Instruct",
                                         "revision": "abcdef1", "gpu": "H100",
                                         "goal": "throughput"}))
    text, proposal = str(info.value), info.value.proposal
    assert "precision = 'fp8'" in text and "needs 2 nodes of 8x H100 (TP 8 x PP 2)" in text
    assert "serves the online pattern only, not throughput" in text
    # by hand: a node gives 8 x (80 GB x 0.9 - 2 GB) = 560 GB; two hold 810 GB of bf16 weights
    # and 310 GB of KV: x 0.9 / (2048 tokens x 258,048 values x 2 B) = 263 sequences
    assert proposal.layout == Layout(nodes=2, gpus_per_node=8, tp=8, pp=2)
    assert proposal.usable_bytes == pytest.approx(1120e9)
    assert proposal.sequences == 263 and proposal.context == 2048
    assert proposal.cost_per_hour == pytest.approx(16 * 3.95)
    # each node reads its own stage: 405 GB at 1 GB/s
    assert proposal.prediction("cold_start_weights_floor_s").value == pytest.approx(405.0)


def test_impossible_slo_says_the_best_achievable() -> None:
    with pytest.raises(PlanRefused, match=r"best decode floor is [\d.]+ ms \(8x \w+\); "
                                          r"tpot_ms needs >= \d+"):
        plan_of(tpot_ms=0.05)


def test_cold_start_with_a_big_model_says_snapshots_need_one_gpu() -> None:
    with pytest.raises(PlanRefused, match="GPU snapshots need a single GPU"):
        make_plan(workload_from_mapping({"model": "meta-llama/Llama-3.1-405B-Instruct",
                                         "revision": "abcdef1", "goal": "cold-start"}))
    with pytest.raises(PlanRefused, match="one GPU"):
        make_plan(workload_from_mapping({"model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
                                         "revision": "abcdef1", "goal": "cold-start",
                                         "ttft_ms": 5}))


def test_budget_too_small_is_refused_with_the_cheapest_price() -> None:
    # one L4 holds 7 sequences of the default 8192 tokens, fewer than the 8 asked: 2x L4
    with pytest.raises(PlanRefused, match=r"budget_per_hour \$0.2.*2x L4.*\$1.60/h"):
        plan_of(budget_per_hour=0.2)
    with pytest.raises(PlanRefused, match=r"budget_per_hour \$0.2.* L4 .*\$0.80/h"):
        plan_of(budget_per_hour=0.2, context_length=4096)
    assert plan_of(budget_per_hour=2.0, concurrency=16).chosen.cost_per_hour <= 2.0


def test_context_beyond_the_model_is_refused() -> None:
    with pytest.raises(PlanRefused, match="at most 40960"):
        plan_of(context_length=100_000)


def test_fp8_weights_need_fp8_tensor_cores() -> None:
    plan = plan_of(concurrency=4)
    assert plan.gpu.fp8
    with pytest.raises(PlanRefused, match="FP8"):
        plan_of(gpu="A100-80GB")


# --- predictions ----------------------------------------------------------------------------


def test_predictions_follow_their_formulas() -> None:
    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "abcdef1",
                                            "gpu": "H100", "concurrency": 1}))
    weights, kv_token, ctx = 8.2e9 * 2, 2 * 36 * 8 * 128 * 2, 1000 + 250 / 2
    # Untied embeddings: the input table (vocab x hidden, bf16) is gathered, not read whole.
    read = weights - 151936 * 4096 * 2
    hbm, bf16 = 3.35e12 * 0.89, 989e12 * 0.80  # the H100's datasheet peaks x measured shares
    step = (read + ctx * kv_token) / hbm + 36 * 45e-6  # memory-bound at batch 1, + 36 layers
    per_seq = 1 / step
    assert plan.prediction("decode_tok_s_per_seq").value == pytest.approx(per_seq, rel=1e-6)
    assert plan.prediction("tpot_floor_ms").value == pytest.approx(1e3 / per_seq, rel=1e-6)
    prefill = max((2 * 8.2e9 * 1000 + 2 * 36 * 1000**2 * 32 * 128) / bf16, read / hbm)
    assert plan.prediction("ttft_prefill_floor_ms").value == pytest.approx(prefill * 1e3)
    assert plan.prediction("cost_per_mtok_output_usd").value == pytest.approx(
        3.95 / (3600 * per_seq) * 1e6, rel=1e-6)
    assert plan.prediction("cold_start_weights_floor_s").value == pytest.approx(weights / 1e9)
    with_snap = plan.prediction("cold_start_with_snapshot_s").value
    assert with_snap < plan.prediction("cold_start_without_snapshot_s").value
    for prediction in plan.predictions:
        assert prediction.formula and prediction.unit and prediction.inputs


def test_moe_reads_only_the_touched_experts() -> None:
    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-30B-A3B",
                                            "revision": "abcdef1", "gpu": "H100"}))
    fixed = 48 * (45e-6 + 70e-6)  # 48 layers' kernels, MoE routing included
    dense_equivalent = 1 / (30.5e9 * 2 / (3.35e12 * 0.89) + fixed)  # every weight read
    assert plan.prediction("decode_tok_s_per_seq").value > 3 * dense_equivalent
    assert "W_experts" in plan.prediction("decode_tok_s_per_seq").formula


def test_more_gpus_cut_latency_with_diminishing_returns() -> None:
    # The low-latency frontier on one card: every TP size it offers, cheapest (fewest) first.
    # (The plan itself picks one H100 here, so its own floor says nothing about more GPUs.)
    frontier = plan_of(gpu="H100", goal="low-latency").frontier
    assert [c.n_gpu for c in frontier] == [1, 2, 4, 8]  # each doubling is faster: on the frontier
    # ... but far from twice as fast: per-layer kernels and all-reduces do not divide
    assert all(more.step_s > fewer.step_s / 2 for fewer, more in itertools.pairwise(frontier))
    assert frontier[-1].step_s > frontier[0].step_s / 4  # 8 GPUs: not even 4x one GPU's speed


# --- the command line -----------------------------------------------------------------------


def test_cli_plan_text_explains_every_choice(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'model = "Qwen/Qwen3-8B-FP8"\nrevision = "{REV}"\nconcurrency = 16\n')
    result = CliRunner().invoke(cli, ["plan", str(path), "--tpot-ms", "40"])
    assert result.exit_code == 0, result.output
    for words in ("why:", "pattern:", "gpu:", "memory:", "concurrency:", "predictions",
                  "step(B) = max(", "MODEL_REVISION"):
        assert words in result.output


def test_cli_plan_json_carries_formulas() -> None:
    result = CliRunner().invoke(cli, ["plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision", REV,
                                      "--set", "input_tokens=2000", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["workload"]["input_tokens"] == 2000
    names = {p["name"] for p in data["predictions"]}
    assert {"decode_tok_s_per_seq", "decode_tok_s_at_batch", "ttft_prefill_floor_ms",
            "cost_per_mtok_output_usd", "cold_start_with_snapshot_s",
            "cold_start_without_snapshot_s"} <= names
    assert all(p["formula"] for p in data["predictions"])
    assert data["recipe_settings"]["N_GPU"] == data["n_gpu"]
    assert "engine_config" not in data  # one vocabulary: the recipe's settings only


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--concurrency", "-3"], 2, "workload field 'concurrency'"),
    (["--region", "mars"], 2, "workload field 'region'"),
    (["--set", "task=fine-tuning"], 1, "modal-finetuning"),
    (["--gpu", "H900"], 2, "workload field 'gpu'"),
    (["--tpot-ms", "0.01"], 1, "tpot_ms needs >="),
])
def test_cli_plan_bad_input_is_one_line(args: list[str], code: int, words: str) -> None:
    result = CliRunner().invoke(cli, ["plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision", REV,
                                      *args])
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output


# --- any workload: a sound plan or a refusal that says why ----------------------------------

WORKLOADS = st.fixed_dictionaries(
    {"model": st.sampled_from(sorted(builtin_models())), "revision": st.just("abcdef1"),
     "concurrency": st.integers(1, 5000), "input_tokens": st.integers(1, 8000),
     "output_tokens": st.integers(1, 4000)},
    optional={"goal": st.sampled_from(["online", "cold-start", "low-latency", "throughput"]),
              "tpot_ms": st.floats(0.5, 200), "ttft_ms": st.floats(5, 5000),
              "cold_start_s": st.floats(0, 600), "budget_per_hour": st.floats(0.5, 200),
              "kv_cache_dtype": st.sampled_from(["auto", "fp8"]),
              "region": st.sampled_from(["us", "us-east", "eu-west"])})


# One workload per kind of refusal, so that each kind is checked on every run.
REFUSED = [
    {"model": "Qwen/Qwen3-8B-FP8", "concurrency": 64, "budget_per_hour": 0.5},  # budget
    {"model": "meta-llama/Llama-3.1-405B-Instruct", "concurrency": 8,  # SLO (floor 16.8 ms)
     "tpot_ms": 20},
    {"model": "Qwen/Qwen3.5-122B-A10B", "goal": "cold-start", "concurrency": 356,  # memory,
     "input_tokens": 130, "output_tokens": 2274},  # fits at fp8 or int4
    {"model": "meta-llama/Llama-3.1-405B-Instruct", "goal": "cold-start"},  # fits at none
    {"model": "Qwen/Qwen3.5-35B-A3B", "goal": "online", "concurrency": 2589,  # GPU cap
     "input_tokens": 667, "output_tokens": 431, "tpot_ms": 1.5, "kv_cache_dtype": "fp8"},
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WORKLOADS)
@example({"revision": "abcdef1", **REFUSED[0]})
@example({"revision": "abcdef1", **REFUSED[1]})
@example({"revision": "abcdef1", **REFUSED[2]})
@example({"revision": "abcdef1", **REFUSED[3]})
@example({"revision": "abcdef1", **REFUSED[4]})
def test_any_workload_gets_a_sound_plan_or_a_reasoned_refusal(data: dict[str, Any]) -> None:
    try:
        workload = workload_from_mapping(data)
    except WorkloadError as exc:
        assert exc.field in data or exc.field == "context_length"
        return
    try:
        plan = make_plan(workload)
    except PlanRefused as exc:
        assert_refusal_is_right(data, str(exc))
        return
    c = plan.chosen
    assert plan.n_gpu in TP_SIZES and plan.model.heads % plan.n_gpu == 0
    assert 1 <= plan.target_inputs <= plan.max_num_seqs
    if plan.max_inputs is not None:
        assert plan.target_inputs <= plan.max_inputs <= plan.max_num_seqs
    # one sequence of the full context length fits the KV cache (capacity counts tokens at the
    # typical request's bytes per token; sliding and linear layers make a longer one cheaper)
    s = plan.sizing
    assert (c.kv_capacity_tokens + 1) * s.kv_bytes_per_token >= (
        plan.max_model_len * s.kv_bytes_per_token_at(plan.max_model_len))
    # ... and as many of them as the workload must batch: min(concurrency, MIN_SEQUENCES)
    assert (c.kv_capacity_tokens + 1) * s.kv_bytes_per_token >= min(
        workload.concurrency, MIN_SEQUENCES) * (
        plan.max_model_len * s.kv_bytes_per_token_at(plan.max_model_len))
    copies = plan.max_containers
    if plan.cluster is None:
        assert plan.layout == Layout(nodes=1, gpus_per_node=plan.n_gpu, tp=plan.n_gpu)
    else:  # whole hosts, the engine's parallel sizes are the cluster's GPUs, whole clusters
        lay = plan.layout
        assert (plan.pattern, plan.recipe, plan.n_gpu) == ("multi-node", "vllm_multi_node.py", 8)
        assert lay.nodes >= 2 and lay.tp * lay.pp == lay.nodes * lay.gpus_per_node == 8 * lay.nodes
        assert plan.max_containers % lay.nodes == 0 and plan.min_containers % lay.nodes == 0
        copies = plan.max_containers // lay.nodes
        assert plan.recipe_settings()["N_NODES"] == lay.nodes and plan.rdma
    if workload.tpot_ms is not None:
        assert plan.prediction("tpot_floor_ms").value <= workload.tpot_ms * SLO_MARGIN + 1e-9
    if workload.ttft_ms is not None:
        assert plan.prediction("ttft_prefill_floor_ms").value <= workload.ttft_ms * SLO_MARGIN
    if workload.budget_per_hour is not None:
        assert c.cost_per_hour <= workload.budget_per_hour + 1e-9
    if plan.pattern != "throughput":
        assert copies * plan.target_inputs >= workload.concurrency
    for prediction in plan.predictions:
        assert prediction.value > 0 and prediction.formula


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1).replace(",", ""))


def _refused(data: dict[str, Any]) -> str | None:
    try:
        make_plan(workload_from_mapping(data))
    except PlanRefused as exc:
        return str(exc)
    return None


def assert_refusal_is_right(data: dict[str, Any], message: str) -> None:
    """The refusal names the limit and the numbers past it, and they are past it: the budget
    below the cheapest setup (which plans at its own price and not a cent below), an SLO
    tighter than the best floor allows with the margin, more memory than the biggest card
    offers, more GPUs than the planner's cap."""
    gpus, _platform = load_gpu_catalog()
    if message.startswith("no plan fits budget_per_hour"):
        budget = data["budget_per_hour"]
        cheapest = _number(r"costs \$([\d,.]+)/h at peak", message)
        assert cheapest > budget, message
        assert _refused({**data, "budget_per_hour": cheapest + 0.01}) is None
        if cheapest - 0.01 > budget:
            assert (_refused({**data, "budget_per_hour": cheapest - 0.01}) or "").startswith(
                "no plan fits budget_per_hour"), "a setup cheaper than the cheapest named"
    elif message.startswith("no GPU setup meets these SLOs"):
        named = 0
        for kind, field in (("decode", "tpot_ms"), ("prefill", "ttft_ms")):
            if f"best {kind} floor" in message:
                floor = _number(rf"best {kind} floor is ([\d.]+) ms", message)  # to 0.1 ms
                need = _number(rf"{field} needs >= (\d+)", message)
                assert floor + 0.05 > data[field] * SLO_MARGIN, message  # the SLO is missed
                assert data[field] < need, message  # and what it needs is more than it is
                assert floor / SLO_MARGIN - 0.1 < need < (floor + 0.05) / SLO_MARGIN + 1
                named += 1
        assert named, message
    elif " needs about " in message and " GB usable) in one container" in message:
        need, usable = _number(r"needs about ([\d,]+) GB", message), _number(
            r"\(([\d,]+) GB usable\)", message)
        tp, card = re.search(r"more than (\d+)x (\S+) \(", message).groups()  # type: ignore
        assert need > usable and usable <= int(tp) * gpus[card].memory_gb, message
        assert gpus[card].memory_gb == max(gpu.memory_gb for gpu in gpus.values())
        for precision in re.findall(r"precision = '(\w+)' \(\d+ GB of weights\)", message):
            again = _refused({**data, "precision": precision}) or ""  # what would fit, fits
            assert " GB usable) in one container" not in again, (precision, again)
    elif " nodes of 8x " in message and "one container holds" not in message:
        # a cluster holds the model, but not this workload: an SLO, the budget, the GPU cap
        if "misses your SLOs" in message:
            assert "tpot_ms" in data or "ttft_ms" in data, message
        elif "over budget_per_hour" in message:
            assert _number(r"cost \$([\d,.]+)/h at peak", message) > data["budget_per_hour"]
        else:
            assert f"this planner stops at {MAX_PLANNED_GPUS}" in message, message
    elif " needs " in message and " nodes of 8x " in message:  # a multi-node proposal
        nodes, card = re.search(r"needs (\d+) nodes of 8x (\S+) \(TP 8 x PP \1", message
                                ).groups()  # type: ignore[union-attr]
        assert 2 <= int(nodes) <= 32 and gpus[card].fabric_gb_s > 0, message
        single, biggest = re.search(r"one container holds ([\d,]+) GB at most \(8x (\S+)\)",
                                    message).groups()  # type: ignore[union-attr]
        weights = _number(r": ([\d,]+) GB of weights", message)
        assert gpus[biggest].memory_gb == max(gpu.memory_gb for gpu in gpus.values())
        # the nodes hold what one container cannot
        assert int(nodes) * 8 * (gpus[card].memory_gb * 0.9 - 2) > weights, message
        assert _number(r"KV room for (\d+) sequences", message) >= min(
            data.get("concurrency", 8), MIN_SEQUENCES)
        assert float(single.replace(",", "")) <= 8 * gpus[biggest].memory_gb
    elif "maximum context of" in message:
        assert data.get("input_tokens", 1000) + data.get("output_tokens", 250) > _number(
            r"maximum context of (\d+) tokens", message)
    elif message.startswith("serving concurrency"):
        assert _number(r"needs (\d+) GPUs", message) > _number(r"stops at (\d+) GPUs", message)
        assert f"stops at {MAX_PLANNED_GPUS} GPUs" in message
    else:
        raise AssertionError(f"a refusal this test does not know how to check: {message}")


def test_cli_plan_json_refusal_is_json() -> None:
    result = CliRunner().invoke(cli, ["plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision", REV,
                                      "--set", "task=sandbox", "--json"])
    assert result.exit_code == 1
    assert "modal-sandbox" in json.loads(result.output)["refused"]


def test_inferred_cold_start_for_a_multi_gpu_model_keeps_a_warm_online_container() -> None:
    plan = make_plan(workload_from_mapping({"model": "meta-llama/Llama-3.3-70B-Instruct",
                                            "revision": "abcdef1", "cold_start_s": 20,
                                            "gpu": "H100"}))
    assert plan.pattern == "online" and plan.n_gpu > 1 and plan.min_containers == 1
    assert "single GPU" in plan.reasons[0][1]


def test_bf16_is_never_planned_onto_a_gpu_without_it_unless_allowed() -> None:
    """A bf16 checkpoint on Turing would run in fp16: excluded, named, and allowed on request."""
    small = {"model": "Qwen/Qwen3-0.6B", "revision": "abcdef1", "concurrency": 2}
    plan = make_plan(workload_from_mapping(small))
    assert plan.gpu.name != "T4" and plan.precision == "bf16"
    excluded = dict(plan.reasons)["excluded"]
    assert "T4 has no native bf16" in excluded and "allow_precision_fallback" in excluded
    fallback = make_plan(workload_from_mapping({**small, "allow_precision_fallback": True}))
    assert fallback.gpu.name == "T4"  # the cheapest, once allowed
    assert any("fp16" in warning for warning in fallback.warnings)
    with pytest.raises(WorkloadError, match="allow_precision_fallback"):
        workload_from_mapping({**small, "allow_precision_fallback": "yes"})
    # forcing the card without the fallback says why nothing fits
    with pytest.raises(PlanRefused, match="no native bf16"):
        make_plan(workload_from_mapping({**small, "gpu": "T4"}))


def test_low_latency_weighs_cost_and_shows_the_frontier() -> None:
    """Four users of Qwen3-8B with lowest latency as the goal: not 2x B200 at ~$22/h."""
    base = {"model": "Qwen/Qwen3-8B", "revision": "abcdef1", "goal": "low-latency",
            "concurrency": 4}
    plan = make_plan(workload_from_mapping(base))
    frontier = plan.frontier
    assert frontier and plan.chosen in frontier
    # a frontier: each entry dearer and strictly faster than the one before
    for cheaper, dearer in itertools.pairwise(frontier):
        assert dearer.cost_per_hour >= cheaper.cost_per_hour and dearer.step_s < cheaper.step_s
    # no SLO: the cheapest within 2x of the fastest one-GPU setup, one GPU here
    single = min(c.step_s for c in frontier if c.n_gpu == 1)
    assert plan.n_gpu == 1 and plan.chosen.step_s <= 2 * single
    cheaper = [c for c in frontier if c.cost_per_hour < plan.chosen.cost_per_hour]
    assert all(c.step_s > 2 * single for c in cheaper)
    assert plan.chosen.cost_per_hour < 10
    # with an SLO: the cheapest setup that meets it
    slo = make_plan(workload_from_mapping({**base, "tpot_ms": 30}))
    assert slo.chosen is slo.frontier[0] and slo.chosen.step_s * 1e3 <= 30
    assert slo.chosen.cost_per_hour < plan.chosen.cost_per_hour
    data = slo.to_dict()
    assert [entry["chosen"] for entry in data["frontier"]].count(True) == 1
    assert {"tpot_floor_ms", "ttft_floor_ms", "cost_per_hour"} <= set(data["frontier"][0])
    text = explain(slo)
    assert "latency frontier" in text and "(fastest)" in text and "cheapest that meets" in text


def test_other_patterns_have_no_frontier() -> None:
    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "abcdef1"}))
    assert plan.frontier == [] and plan.to_dict()["frontier"] == []


def test_proxy_auth_picks_the_server_form_and_says_why() -> None:
    base = {"model": "Qwen/Qwen3-8B-FP8", "revision": "abcdef1", "goal": "low-latency",
            "concurrency": 4}
    http = make_plan(workload_from_mapping(base))
    assert (http.primitive, http.engine, http.recipe) == ("http_server", "sglang",
                                                          "sglang_low_latency.py")
    assert "proxy_auth = true" in dict(http.reasons)["primitive"]
    server = make_plan(workload_from_mapping({**base, "proxy_auth": True, "region": "eu-west"}))
    assert (server.primitive, server.engine, server.recipe) == ("app.server", "vllm",
                                                                "vllm_server.py")
    assert server.n_gpu == 1 and "@app.server" in dict(server.reasons)["primitive"]
    settings = server.recipe_settings()
    assert settings["REGION"] == "eu-west" and settings["ROUTING_REGION"] == "eu-west"
    assert settings["TARGET_CONCURRENCY"] <= settings["MAX_CONCURRENCY"]
    assert "TARGET_INPUTS" not in settings and "PROXY_REGIONS" not in settings
    assert server.to_dict()["primitive"] == "app.server"
    online = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-8B", "revision": "abcdef1",
                                              "proxy_auth": True}))
    assert online.primitive == "web_server"  # proxy auth alone does not change the pattern


def test_server_form_falls_back_when_the_model_needs_several_gpus() -> None:
    plan = make_plan(workload_from_mapping({
        "model": "meta-llama/Llama-3.3-70B-Instruct", "revision": "abcdef1",
        "goal": "low-latency", "proxy_auth": True, "gpu": "H100"}))
    assert plan.primitive == "http_server" and plan.n_gpu > 1
    assert "the Server form (proxy_auth) snapshots one GPU" in dict(plan.reasons)["pattern"]


@pytest.mark.parametrize(("region", "routing"), [
    (None, "us-east"), ("us", "us-east"), ("us-east", "us-east"), ("us-west", "us-west"),
    ("eu-north", "eu-west"), ("uk", "eu-west"), ("ap-northeast", "ap-south"), ("jp", "ap-south")])
def test_routing_region_follows_the_compute_region(region: str | None, routing: str) -> None:
    from modal_llm_serving.plan.decide import routing_region

    assert routing_region(region) == routing


# --- interconnect, KV room and the biggest single node ----------------------------------------


def _sizing(model: str, **fields: Any) -> Any:
    w = workload_from_mapping({"model": model, "revision": "abcdef1", **fields})
    return size(w, model_facts(model, revision="abcdef1"))


def test_tensor_parallelism_pays_its_all_reduces_over_the_cards_link() -> None:
    gpus, _platform = load_gpu_catalog()
    s = _sizing("meta-llama/Llama-3.3-70B-Instruct")  # 80 layers, hidden 8192
    # by hand, batch 16 over 8 GPUs: 2 per layer x 80 layers x (latency + 2*7/8 of
    # 16 x 8192 x 2 B over the link at 80% of its datasheet figure each way)
    message = 16 * 8192 * 2
    nvlink = 160 * (10e-6 + 1.75 * message / (450e9 * 0.8))  # H100: NVLink 4
    pcie = 160 * (25e-6 + 1.75 * message / (64e9 * 0.8))  # RTX-PRO-6000: PCIe 5
    assert s.allreduce_seconds(gpus["H100"], 8, 16) == pytest.approx(nvlink)
    assert s.allreduce_seconds(gpus["RTX-PRO-6000"], 8, 16) == pytest.approx(pcie)
    assert s.allreduce_seconds(gpus["H100"], 1, 16) == 0.0


def test_expert_parallelism_pays_an_all_to_all_per_moe_layer() -> None:
    gpus, _platform = load_gpu_catalog()
    s = _sizing("deepseek-ai/DeepSeek-V3")  # 61 layers, hidden 7168, 8 experts per token
    # by hand, batch 64 over EP 8: each GPU sends its 8 tokens x 8 experts x 7168 x 2 B, 7/8 of
    # it to other GPUs, and takes the results back: 2 all-to-alls per layer
    sent = 64 / 8 * 8 * 7168 * 2
    alltoall = 61 * 2 * (10e-6 + 7 / 8 * sent / 360e9)
    assert s.alltoall_seconds(gpus["H200"], 8, 64) == pytest.approx(alltoall)
    # with EP the MoE layers keep one all-reduce (after attention) and trade the other for it
    reduce_one = 10e-6 + 1.75 * 64 * 7168 * 2 / 360e9
    assert s.allreduce_seconds(gpus["H200"], 8, 64, ep=8) == pytest.approx(
        61 * reduce_one + alltoall)
    dense = _sizing("meta-llama/Llama-3.3-70B-Instruct")
    assert dense.alltoall_seconds(gpus["H200"], 8, 64) == 0.0


def test_a_catalog_with_only_the_nvlink_flag_gets_an_assumed_link(tmp_path: Path) -> None:
    override = tmp_path / "gpus.toml"
    override.write_text("[gpus.OLD]\nmemory_gb = 40\nhbm_tb_s = 2.0\nbf16_tflops = 300.0\n"
                        "fp8_tflops = 0.0\nfp8 = false\nprice_per_hour = 1.0\n"
                        "price_verified = true\nnvlink = true\n")
    gpus, _platform = load_gpu_catalog(override)
    assert gpus["OLD"].link_assumed and gpus["OLD"].link_gb_s == 300.0
    assert not gpus["H100"].link_assumed and gpus["H100"].link == "NVLink 4"
    plan = make_plan(workload_from_mapping({"model": "meta-llama/Llama-3.3-70B-Instruct",
                                            "revision": "abcdef1", "gpu": "OLD"}),
                     gpu_catalog=override)
    assert plan.n_gpu > 1
    assert any("assumed from nvlink = true" in warning for warning in plan.warnings)
    override.write_text("[gpus.H100]\nlink_gb_s = -1\n")
    with pytest.raises(UsageError, match="link_gb_s"):
        load_gpu_catalog(override)


def test_b300_and_the_cluster_fabric_are_in_the_catalog_with_their_sources() -> None:
    gpus, _platform = load_gpu_catalog()
    b300 = gpus["B300"]
    assert (b300.memory_gb, b300.hbm_tb_s, b300.bf16_tflops, b300.fp8_tflops) == (
        288, 8.0, 2250.0, 4500.0)
    assert b300.link == "NVLink 5" and b300.fabric_gb_s == 800.0 and not b300.price_verified
    assert {name for name, gpu in gpus.items() if gpu.fabric_gb_s} == {
        "H100", "H200", "B200", "B300"}
    text = (Path(__file__).parents[1] / "src/modal_llm_serving/facts/data/gpus.toml").read_text()
    assert "https://modal.com/docs/guide/multi-node-clusters" in text
    assert "glennklockwood.com/garden/processors/B300" in text


def test_a_671b_moe_is_not_put_on_pcie_cards_with_no_room_for_a_batch() -> None:
    plan = make_plan(workload_from_mapping({"model": "deepseek-ai/DeepSeek-V3",
                                            "revision": "abcdef1", "precision": "fp8"}))
    # by hand: 8 x (96 GB x 0.9 - 2 GB) = 675.2 GB, less 672.85 GB of weights (16-bit
    # vocabulary matrices) leaves 2.35 GB: x 0.9 / (8192 tokens x 35,136 values x 2 B) = 3
    assert Rejection("RTX-PRO-6000", 8, "kv", sequences=3, need_sequences=8,
                     context=8192) in plan.rejected
    assert plan.gpu.nvlink and plan.gpu.name in ("H200", "B200", "B300")
    assert plan.chosen.kv_capacity_tokens * plan.sizing.kv_bytes_per_token > 100e9
    assert "8x RTX-PRO-6000: the KV cache holds 3 sequences" in dict(plan.reasons)["kv room"]
    assert {"gpu": "RTX-PRO-6000", "n_gpu": 8, "kind": "kv", "sequences": 3,
            "need_sequences": 8, "context": 8192} in plan.to_dict()["rejected"]


def test_the_biggest_single_node_comes_before_several_nodes() -> None:
    # 1,342 GB of bf16 weights: more than 8x H200 or 8x B200, within 8x B300
    plan = make_plan(workload_from_mapping({"model": "deepseek-ai/DeepSeek-V3",
                                            "revision": "abcdef1", "precision": "bf16"}))
    assert (plan.gpu.name, plan.n_gpu) == ("B300", 8)
    assert plan.layout == Layout(nodes=1, gpus_per_node=8, tp=8)


def test_a_model_no_host_holds_is_planned_on_its_cluster_layout(tmp_path: Path) -> None:
    args = ["--model", "moonshotai/Kimi-K2-Instruct", "--revision", REV, "--precision", "bf16"]
    result = CliRunner().invoke(cli, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["layout"] == {"nodes": 2, "gpus_per_node": 8, "tp": 8, "pp": 2, "ep": 8,
                              "dp": 1}
    assert plan["cluster"]["gpu"] == "B200" and plan["cluster"]["weights_gb"] > 2000
    # the checkpoint is fp8: a bf16 plan names a bf16 checkpoint to serve, so nothing is written
    written = tmp_path / "app.py"
    result = CliRunner().invoke(cli, ["new", *args, "-o", str(written)])
    assert result.exit_code == 2 and not written.exists()
    assert "at bf16, but its checkpoint is fp8" in result.output


def test_a_model_over_one_gpu_weighs_the_precision_its_checkpoints_offer() -> None:
    plan = make_plan(workload_from_mapping({"model": "Qwen/Qwen3-235B-A22B",
                                            "revision": "abcdef1", "gpu": "B200"}))
    # by hand: 470 GB of bf16 weights need 4x B200 (2 give 2 x (180 x 0.9 - 2) = 320 GB); in
    # fp8, 234.76 GB of layers + 2 x 1.24 GB of 16-bit vocabulary matrices fit on 2
    assert (plan.n_gpu, plan.precision) == (4, "bf16")
    option, = plan.precision_options
    assert option.precision == "fp8" and option.checkpoint == "Qwen/Qwen3-235B-A22B-FP8"
    vocabulary = 151936 * 4096 * 2
    assert option.weights_bytes == pytest.approx(235e9 - vocabulary + 2 * vocabulary)
    assert option.best is not None and option.best.n_gpu == 2
    trade = dict(plan.reasons)["precision trade"]
    assert "at fp8 (Qwen/Qwen3-235B-A22B-FP8) 236 GB and 2x B200 ($12.50/h)" in trade
    assert "own evals" in trade
    # one GPU, or a checkpoint already in fp8: nothing to weigh
    assert plan_of().precision_options == []


def test_quantized_weights_keep_the_vocabulary_matrices_at_16_bits() -> None:
    """FP8 (or INT4) checkpoints quantize the layers, not the embedding table and the LM head:
    Qwen3-8B (untied, vocab 151,936 x hidden 4,096, twice) is 9.4 GB in FP8, not 8.2."""
    from modal_llm_serving.facts.models import model_facts
    from modal_llm_serving.plan.sizing import weights_bytes_at

    facts = model_facts("Qwen/Qwen3-8B")
    vocabulary = 2 * 151936 * 4096
    assert weights_bytes_at(facts, "fp8") == pytest.approx((8.2e9 - vocabulary) + 2 * vocabulary)
    assert weights_bytes_at(facts, "int4") == pytest.approx(
        (8.2e9 - vocabulary) * 0.5 + 2 * vocabulary)
    assert weights_bytes_at(facts, "bf16") == pytest.approx(8.2e9 * 2)
