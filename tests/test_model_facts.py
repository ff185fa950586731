"""Model facts by architecture: layer kinds from each config family, KV by layer type, any Hub
model planned through a Hub on loopback, and the catalog read by the same parser."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.errors import UsageError
from modal_llm_serving.facts.models import (
    builtin_models,
    layer_kinds,
    model_facts,
    model_facts_from_config,
)
from modal_llm_serving.facts.workload import workload_from_mapping
from modal_llm_serving.plan import make_plan
from tests.hub_server import HubRepo, HubServer, json_file, running_hub, safetensors_file

BASE = {"hidden_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 32000,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
FULL, SLIDE, LINEAR = "full_attention", "sliding_attention", "linear_attention"


# --- which layers cache what, family by family ------------------------------------------------

@pytest.mark.parametrize(("extra", "expected"), [
    ({}, (0, 0, 0, 0)),  # a plain transformer
    ({"layer_types": [SLIDE, FULL] * 4, "sliding_window": 128}, (4, 128, 0, 0)),  # gpt-oss
    ({"sliding_window_pattern": 4, "sliding_window": 1024}, (6, 1024, 0, 0)),  # Gemma 2/3
    ({"full_attention_interval": 4, "linear_num_value_heads": 32}, (0, 0, 6, 0)),  # Qwen3-Next
    ({"layer_types": [LINEAR] * 3 + [FULL] + [LINEAR] * 3 + [FULL],
      "linear_num_value_heads": 32}, (0, 0, 6, 0)),  # Qwen3.5
    ({"hybrid_override_pattern": "M-M*M-M*", "mamba_num_heads": 64}, (0, 0, 4, 2)),  # Nemotron-H
    ({"block_configs": [{"attention": {"no_op": i % 2 == 0}} for i in range(8)]},
     (0, 0, 0, 4)),  # Nemotron-Super
    # Qwen3 writes a window it does not use: no layer says it slides
    ({"sliding_window": 4096, "use_sliding_window": False}, (0, 0, 0, 0)),
])
def test_layer_kinds_from_each_config_family(extra: dict[str, object],
                                             expected: tuple[int, int, int, int]) -> None:
    kinds = layer_kinds({**BASE, **extra}, 8)
    assert (kinds["sliding_layers"], kinds["sliding_window"], kinds["linear_layers"],
            kinds["attention_free_layers"]) == expected
    assert (kinds["linear_state_elements"] > 0) == (expected[2] > 0)


@pytest.mark.parametrize(("extra", "problem"), [
    ({"layer_types": ["full_attention", "lightning"] * 4}, "unknown layer type"),
    ({"layer_types": [SLIDE, FULL] * 4}, "no sliding_window size"),
])
def test_a_config_whose_layers_cannot_be_read_is_refused(extra: dict[str, object],
                                                         problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        model_facts_from_config({**BASE, **extra}, name="m", source="m/config.json")


def test_kv_per_sequence_by_layer_type() -> None:
    facts = model_facts_from_config(
        {**BASE, "layer_types": [SLIDE, FULL] * 2 + [LINEAR] * 4, "sliding_window": 100,
         "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
         "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4},
        name="m", source="m")
    per_layer = 2 * 4 * 128  # K and V of 4 KV heads x 128
    state = 4 * 8 * 8 + (2 * 2 * 8 + 4 * 8) * 3  # recurrent state + the convolution's window
    assert facts.kv_elements_per_token() == 2 * per_layer  # the two full-attention layers
    assert facts.linear_state_elements == state
    for tokens, window in ((50, 50), (100, 100), (5000, 100)):  # a window caps the sliding layers
        assert facts.kv_elements(tokens) == 2 * per_layer * tokens + 2 * per_layer * window \
            + 4 * state
    plain = dataclasses.replace(facts, sliding_layers=0, sliding_window=0, linear_layers=0,
                                linear_state_elements=0)
    assert plain.kv_grows_with_every_token
    assert plain.kv_elements(5000) == 8 * per_layer * 5000


def test_a_sliding_window_model_holds_more_requests_than_if_every_layer_were_full() -> None:
    w = workload_from_mapping({"model": "openai/gpt-oss-120b", "revision": "a" * 40,
                               "context_length": 65536, "concurrency": 64, "gpu": "H100"})
    plan = make_plan(w)
    full = dataclasses.replace(plan.model, sliding_layers=0, sliding_window=0)
    assert plan.model.sliding_layers == 18 and plan.model.sliding_window == 128
    assert plan.sizing.kv_bytes_per_token < dataclasses.replace(
        plan.sizing, facts=full).kv_bytes_per_token
    # what the memory reason shows: the formula by layer type
    assert "18432*L (18 full-attention layers) + 18432*min(L, 128) (18 sliding-window " \
        "layers)" in "\n".join(text for _, text in plan.reasons)


# --- the catalog: the same parser, verified shapes --------------------------------------------

COMMIT = re.compile(r"^[0-9a-f]{40}$")
AT_COMMIT = re.compile(r"^https://github\.com/[^/\s]+/[^/\s]+/blob/[0-9a-f]{40}/\S+$")
UNVERIFIED = {"revision", "gated", "params", "figures"}


def test_every_catalog_model_gives_facts_and_each_config_entry_names_its_source() -> None:
    for name, entry in builtin_models().items():
        facts = model_facts(name)
        assert facts.name == name and facts.total_params > 0
        if "config" in entry:
            assert entry["source"].startswith("https://") and entry["checked"]
            assert entry["source"] in facts.source


@pytest.mark.parametrize("name", sorted(builtin_models()))
def test_each_catalog_entry_says_where_its_pin_comes_from_or_that_it_has_none(name: str) -> None:
    """A pinned revision is 40 hex with the public file that pins it, at a commit; a copy the
    figures were read from is a file at a commit with the day; what is missing is listed."""
    entry = builtin_models()[name]
    unverified = entry.get("unverified", [])
    assert isinstance(unverified, list) and set(unverified) <= UNVERIFIED, unverified
    if "revision" in entry:
        assert COMMIT.match(entry["revision"]) and AT_COMMIT.match(entry["revision_source"])
        assert "revision" not in unverified
    else:
        assert "revision_source" not in entry and "revision" in unverified
    assert isinstance(entry["gated"], bool) if "gated" in entry else "gated" in unverified
    if "source" in entry:
        assert AT_COMMIT.match(entry["source"]) and re.match(r"^\d{4}-\d{2}-\d{2}$",
                                                             entry["checked"])
    else:
        assert "figures" in unverified


@pytest.mark.parametrize("name", [n for n, e in builtin_models().items() if "config" in e])
def test_config_entries_estimate_the_size_their_name_says(name: str) -> None:
    """Parameters estimated from the config's shapes land within 6% of the size in the name."""
    # either case: google/gemma-3-27b-it writes its size as "27b"
    sizes = re.findall(r"(\d+(?:\.\d+)?)B", name.split("/")[1], re.IGNORECASE)
    if not sizes:
        pytest.skip("no size in the name")
    facts = model_facts(name)
    assert facts.total_params / 1e9 == pytest.approx(float(sizes[0]), rel=0.06)
    if len(sizes) > 1:  # ...-A3B: active parameters (names count them with or without the
        embeddings = 2 * facts.vocab * facts.hidden / 1e9  # input and output embeddings)
        active = facts.active_params / 1e9
        assert min(abs(active - float(sizes[1])), abs(active - embeddings - float(sizes[1]))) \
            <= 0.15 * float(sizes[1])


# --- any Hub model, at its pinned revision ----------------------------------------------------

HYBRID = "acme/hybrid-2b"
HYBRID_CONFIG = {**BASE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
                 "layer_types": [SLIDE, SLIDE, SLIDE, FULL] * 2, "sliding_window": 512}
WRAPPED = "acme/vision-hybrid"


def _commit(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A loopback Hub with a hybrid model (and its multimodal wrapper), online, no token."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "mls"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    weights = safetensors_file({"embed.weight": ("BF16", [64, 32]), "norm.weight": ("F32", [32])})
    repos = {
        HYBRID: HubRepo(files={"config.json": json_file(HYBRID_CONFIG),
                               "model.safetensors": weights}, commit=_commit(HYBRID)),
        WRAPPED: HubRepo(files={"config.json": json_file(
            {"model_type": "gemma3", "text_config": HYBRID_CONFIG}), "model.safetensors": weights},
            commit=_commit(WRAPPED)),
    }
    with running_hub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _plan(model: str, revision: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plan", "--model", model, "--revision", revision,
                                      "--concurrency", "4", "--json"])
    return result.exit_code, result.output


@pytest.mark.parametrize("model", [HYBRID, WRAPPED])
def test_plan_reads_a_model_the_catalog_does_not_know_from_the_hub(
        hub: HubServer, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = _plan(model, _commit(model))
    assert code == 0, output
    assert f'"source": "Hub at {_commit(model)[:12]}"' in output
    assert '"sliding_layers": 6' in output and '"sliding_window": 512' in output
    # read once, then from the caches: offline works
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _plan(model, _commit(model))[0] == 0


def test_an_unknown_revision_is_one_line_and_exit_2(hub: HubServer) -> None:
    code, output = _plan(HYBRID, "f" * 40)
    assert code == 2
    assert f"{HYBRID} has no commit {'f' * 40}" in output
    assert "Traceback" not in output


def test_an_unreachable_hub_falls_back_to_the_catalog_or_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with running_hub({}) as gone:
        url = gone.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # nothing listens there now
    code, output = _plan("Qwen/Qwen3-8B", "a" * 40)
    assert code == 0 and "built-in catalog" in output
    code, output = _plan("acme/not-in-the-catalog", "a" * 40)
    assert code == 2
    assert f"cannot reach {url}" in output and "not cached here" in output


# --- the longest context: the engine's own rule ----------------------------------------------

ROPE_CASES = {
    "no scaling": {"max_position_embeddings": 4096},
    "linear x4": {"max_position_embeddings": 4096,
                  "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "dynamic x2 (old key)": {"max_position_embeddings": 4096,
                             "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "yarn: already scaled": {"max_position_embeddings": 40960, "rope_scaling": {
        "rope_type": "yarn", "factor": 1.25, "original_max_position_embeddings": 32768}},
    "llama3: already scaled": {"max_position_embeddings": 131072, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
    "rope_parameters, transformers 5": {"max_position_embeddings": 2048, "rope_parameters": {
        "rope_type": "linear", "factor": 3.0, "rope_theta": 10000.0}},
}


@pytest.mark.parametrize("fields", ROPE_CASES.values(), ids=ROPE_CASES.keys())
def test_context_limit_is_what_vllm_accepts(fields: dict[str, object]) -> None:
    """vLLM's own length check accepts the limit the facts give, and refuses one token more."""
    from types import SimpleNamespace

    from transformers import LlamaConfig
    from vllm.config.model import _get_and_verify_max_len

    from modal_llm_serving.facts.context import context_limit

    limit, fields_used = context_limit({"model_type": "llama", **fields})
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=128, **json.loads(json.dumps(fields)))
    arch = SimpleNamespace(derived_max_model_len_and_key=(config.max_position_embeddings,
                                                          "max_position_embeddings"))
    assert _get_and_verify_max_len(config, arch, None, limit, False, None) == limit
    with pytest.raises(ValueError, match="max_model_len"):
        _get_and_verify_max_len(config, arch, None, limit + 1, False, None)
    assert fields_used.startswith("max_position_embeddings")
    assert ("factor" in fields_used) == (limit != fields["max_position_embeddings"])


def test_context_limit_keys() -> None:
    from modal_llm_serving.facts.context import DEFAULT_LENGTH, context_limit

    assert context_limit({"max_position_embeddings": 8192, "seq_length": 4096})[0] == 4096
    assert context_limit({"max_position_embeddings": 8192, "model_max_length": 16384})[0] == 16384
    assert context_limit({"model_type": "gemma3_text", "max_position_embeddings": 131072,
                          "rope_scaling": {"rope_type": "linear", "factor": 8.0}})[0] == 131072
    assert context_limit({})[0] == DEFAULT_LENGTH
