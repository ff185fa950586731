"""Model facts from the Hub at a pinned commit, read from a Hub on loopback (tests/hub_server.py).

Nothing of ours is patched: the tests set the variables huggingface_hub honours (HF_ENDPOINT,
HF_HOME, HF_TOKEN, HF_HUB_OFFLINE) and the toolkit's cache folder, and look at what the server saw
and what landed on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modal_llm_serving.errors import UsageError
from modal_llm_serving.facts.hub import HubModel, read_hub_model
from tests.hub_server import HubRepo, HubServer, json_file, running_hub, safetensors_file
from tests.ports import REFUSING_URL


def _commit(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


DENSE, MOE, WRAPPED, INTERN, GATED = ("acme/dense-1b", "acme/moe-a3b", "acme/vision-chat",
                                      "acme/intern-chat", "acme/gated-8b")
NO_CONFIG, NO_WEIGHTS = "acme/weights-only", "acme/gguf-only"
# An index without metadata.total_size, and one whose second shard is missing
UNDECLARED, TORN = "acme/moe-undeclared", "acme/moe-torn"
GRANTED = "hf_granted_token_for_tests"
SECRET = "hf_secret_that_no_message_shows"
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 128, "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}
DENSE_WEIGHTS = safetensors_file({"embed.weight": ("BF16", [128, 64]),
                                  "layers.0.q.weight": ("BF16", [64, 64]),
                                  "norm.weight": ("F32", [64])})
MOE_CONFIG = {**LLAMA, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2}
MOE_SHARDS = {
    "model-00001-of-00002.safetensors": safetensors_file({"embed.weight": ("BF16", [128, 64]),
                                                          "norm.weight": ("F32", [64])}),
    "model-00002-of-00002.safetensors": safetensors_file({
        "experts.0.w": ("F8_E4M3", [4, 64, 32]), "experts.0.scale": ("F32", [4, 2]),
        "router.weight": ("BF16", [4, 64])}),
}
MOE_INDEX = {"metadata": {"total_size": 987_654_321},  # declared: the index is believed
             "weight_map": {"embed.weight": "model-00001-of-00002.safetensors",
                            "norm.weight": "model-00001-of-00002.safetensors",
                            "experts.0.w": "model-00002-of-00002.safetensors",
                            "experts.0.scale": "model-00002-of-00002.safetensors",
                            "router.weight": "model-00002-of-00002.safetensors"}}


def _repos() -> dict[str, HubRepo]:
    """Fresh repos for one server: a dense model, a sharded MoE, two multimodal wrappers, a
    gated one, and two incomplete ones."""
    def repo(name: str, files: dict[str, bytes], *, gated: bool = False) -> HubRepo:
        return HubRepo(files=files, commit=_commit(name), gated=gated,
                       granted=frozenset({GRANTED}) if gated else frozenset())

    return {
        DENSE: repo(DENSE, {"config.json": json_file(LLAMA), "model.safetensors": DENSE_WEIGHTS}),
        MOE: repo(MOE, {"config.json": json_file(MOE_CONFIG),
                        "model.safetensors.index.json": json_file(MOE_INDEX), **MOE_SHARDS}),
        WRAPPED: repo(WRAPPED, {
            "config.json": json_file({"model_type": "gemma3", "text_config": LLAMA,
                                      "vision_config": {"hidden_size": 32}}),
            "model.safetensors": DENSE_WEIGHTS}),
        INTERN: repo(INTERN, {
            "config.json": json_file({"model_type": "internvl_chat", "llm_config": LLAMA}),
            "model.safetensors": DENSE_WEIGHTS}),
        GATED: repo(GATED, {"config.json": json_file(LLAMA), "model.safetensors": DENSE_WEIGHTS},
                    gated=True),
        NO_CONFIG: repo(NO_CONFIG, {"model.safetensors": DENSE_WEIGHTS}),
        NO_WEIGHTS: repo(NO_WEIGHTS, {"config.json": json_file(LLAMA), "model.gguf": b"GGUF"}),
        UNDECLARED: repo(UNDECLARED, {
            "config.json": json_file(MOE_CONFIG), **MOE_SHARDS,
            "model.safetensors.index.json": json_file({"weight_map": MOE_INDEX["weight_map"]})}),
        TORN: repo(TORN, {"config.json": json_file(MOE_CONFIG),
                          "model.safetensors.index.json": json_file(MOE_INDEX),
                          "model-00001-of-00002.safetensors":
                          MOE_SHARDS["model-00001-of-00002.safetensors"]}),
    }


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Hugging Face home and the toolkit's cache in `tmp_path`; no token, online."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "mls"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                 "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def hub(caches: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The loopback Hub serving `_repos()`, with HF_ENDPOINT pointing at it."""
    with running_hub(_repos()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _summary_file(caches: Path, model: str) -> Path:
    return caches / "mls" / "hub" / f"models--{model.replace('/', '--')}" / f"{_commit(model)}.json"


# --- what is read ---------------------------------------------------------------------------

def test_dense_single_file(hub: HubServer, caches: Path) -> None:
    facts = read_hub_model(DENSE, _commit(DENSE))
    assert facts == HubModel(
        model=DENSE, revision=_commit(DENSE), config=LLAMA, text_config_key=None,
        parameters={"BF16": 128 * 64 + 64 * 64, "F32": 64},
        checkpoint_bytes=(128 * 64 + 64 * 64) * 2 + 64 * 4, weights="model.safetensors",
        gated=False, source=f"Hub at {_commit(DENSE)[:12]}")
    assert facts.total_params == 128 * 64 + 64 * 64 + 64
    assert facts.text_config == LLAMA
    # config.json in the Hugging Face cache, as huggingface_hub lays it out; the weights only
    # as range reads of their headers
    snapshot = caches / "hf" / "hub" / "models--acme--dense-1b" / "snapshots" / _commit(DENSE)
    assert json.loads((snapshot / "config.json").read_text()) == LLAMA
    ranged = [s for s in hub.requests if s.path.endswith("model.safetensors") and s.method == "GET"]
    assert ranged and not (snapshot / "model.safetensors").exists()
    assert all(s.authorization is None for s in hub.requests)


def test_sharded_moe_sums_the_shards_and_believes_the_index(hub: HubServer) -> None:
    facts = read_hub_model(MOE, _commit(MOE))
    assert facts.parameters == {"BF16": 128 * 64 + 4 * 64, "F32": 64 + 4 * 2,
                                "F8_E4M3": 4 * 64 * 32}
    assert facts.total_params == sum(facts.parameters.values())
    assert facts.checkpoint_bytes == 987_654_321
    assert facts.weights == "model.safetensors.index.json"
    assert facts.config["num_experts"] == 4


def test_index_without_total_size_counts_the_headers(hub: HubServer) -> None:
    facts = read_hub_model(UNDECLARED, _commit(UNDECLARED))
    first, second = 128 * 64 * 2 + 64 * 4, 4 * 64 * 32 + 4 * 2 * 4 + 4 * 64 * 2
    assert facts.checkpoint_bytes == first + second


@pytest.mark.parametrize(("model", "key"), [(WRAPPED, "text_config"), (INTERN, "llm_config")])
def test_multimodal_wrapper_names_its_text_config(hub: HubServer, model: str, key: str) -> None:
    facts = read_hub_model(model, _commit(model))
    assert facts.text_config_key == key
    assert facts.text_config == LLAMA
    assert key in facts.config  # the raw config stays whole


def test_repo_without_safetensors_has_config_facts_only(hub: HubServer) -> None:
    facts = read_hub_model(NO_WEIGHTS, _commit(NO_WEIGHTS))
    assert (facts.parameters, facts.total_params, facts.weights) == ({}, None, None)
    assert facts.checkpoint_bytes is None
    assert facts.config == LLAMA


def test_gated_model_with_access_sends_the_token(hub: HubServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    facts = read_hub_model(GATED, _commit(GATED))
    assert facts.gated is True
    assert facts.parameters == {"BF16": 128 * 64 + 64 * 64, "F32": 64}
    assert hub.requests and all(s.authorization == f"Bearer {GRANTED}" for s in hub.requests)


def test_hf_hub_cache_is_honoured(hub: HubServer, caches: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "elsewhere"))
    read_hub_model(DENSE, _commit(DENSE))
    assert (caches / "elsewhere" / "models--acme--dense-1b" / "snapshots" / _commit(DENSE)
            / "config.json").is_file()
    assert not (caches / "hf").exists()


# --- the cache ------------------------------------------------------------------------------

def test_second_read_needs_no_hub(caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_hub(_repos()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        first = read_hub_model(MOE, _commit(MOE))
    summary = json.loads(_summary_file(caches, MOE).read_text())
    assert summary["parameters"] == dict(first.parameters)
    assert list(_summary_file(caches, MOE).parent.iterdir()) == [_summary_file(caches, MOE)]
    # The server is gone: online mode reads the caches without a request...
    assert read_hub_model(MOE, _commit(MOE)) == first
    # ...and so does offline mode.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert read_hub_model(MOE, _commit(MOE)) == first


def test_a_damaged_summary_is_read_again(hub: HubServer, caches: Path) -> None:
    first = read_hub_model(DENSE, _commit(DENSE))
    _summary_file(caches, DENSE).write_text('{"parameters": ')
    before = len(hub.requests)
    assert read_hub_model(DENSE, _commit(DENSE)) == first
    assert len(hub.requests) > before
    assert json.loads(_summary_file(caches, DENSE).read_text())["weights"] == "model.safetensors"


def test_offline_with_summary_but_no_config(caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_hub(_repos()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        read_hub_model(DENSE, _commit(DENSE))
    shutil.rmtree(caches / "hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set and acme/dense-1b at"):
        read_hub_model(DENSE, _commit(DENSE))


# --- errors: one line each, nothing cached, no token shown ----------------------------------

def _no_token(mp: pytest.MonkeyPatch, hub: HubServer) -> None:
    mp.delenv("HF_TOKEN", raising=False)


def _offline(mp: pytest.MonkeyPatch, hub: HubServer) -> None:
    mp.setenv("HF_HUB_OFFLINE", "1")


def _unreachable(mp: pytest.MonkeyPatch, hub: HubServer) -> None:
    mp.setenv("HF_ENDPOINT", REFUSING_URL)


def _limit_api(mp: pytest.MonkeyPatch, hub: HubServer) -> None:
    hub.rate_limit_path = "/api/"


def _limit_weights(mp: pytest.MonkeyPatch, hub: HubServer) -> None:
    hub.rate_limit_path = ".safetensors"


Setup = Callable[[pytest.MonkeyPatch, HubServer], None]
ERRORS: list[tuple[str, str, str, Setup | None, list[str]]] = [
    # (case, model, revision, setup, what the one line says; {url} is the Hub's)
    ("revision-not-a-hash", DENSE, "main", None,
     ["revision 'main' of acme/dense-1b is not a 40-character commit hash",
      "`mls revision acme/dense-1b`"]),
    ("revision-upper-case", DENSE, _commit(DENSE).upper(), None, ["40-character commit hash"]),
    ("not-a-model-id", "not a model", _commit(DENSE), None,
     ["'not a model' is not a Hub model id"]),
    ("unknown-model", "acme/nope", _commit(DENSE), None,
     ["{url} has no model acme/nope", "HF_TOKEN"]),
    ("unknown-revision", DENSE, "f" * 40, None,
     [f"acme/dense-1b has no commit {'f' * 40} on {{url}}", "`mls revision acme/dense-1b`"]),
    ("gated-without-token", GATED, _commit(GATED), _no_token,
     ["acme/gated-8b is gated and no token is set (HF_TOKEN)",
      "accept its license at {url}/acme/gated-8b", "set HF_TOKEN"]),
    ("gated-token-without-access", GATED, _commit(GATED), None,
     ["the account of your token (HF_TOKEN) has no access yet",
      "accept its license at {url}/acme/gated-8b"]),
    ("no-config", NO_CONFIG, _commit(NO_CONFIG), None,
     [f"acme/weights-only at {_commit(NO_CONFIG)[:12]} has no config.json"]),
    ("offline-nothing-cached", DENSE, _commit(DENSE), _offline,
     [f"HF_HUB_OFFLINE is set and acme/dense-1b at {_commit(DENSE)[:12]} was never read"]),
    ("unreachable", DENSE, _commit(DENSE), _unreachable,
     ["cannot reach http://127.0.0.1:", "(ConnectError)", "is not cached here"]),
    ("rate-limited", DENSE, _commit(DENSE), _limit_api,
     ["{url} is rate-limiting this machine (HTTP 429) (it asks to wait 7 s)", "HF_TOKEN"]),
    ("rate-limited-on-weights", MOE, _commit(MOE), _limit_weights, ["(HTTP 429)"]),
]


@pytest.mark.parametrize(("model", "revision", "setup", "says"),
                         [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_errors(hub: HubServer, caches: Path, monkeypatch: pytest.MonkeyPatch, model: str,
                revision: str, setup: Setup | None, says: list[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)  # a token that opens nothing, and must never show
    if setup is not None:
        setup(monkeypatch, hub)
    with pytest.raises(UsageError) as caught:
        read_hub_model(model, revision)
    message = str(caught.value)
    assert "\n" not in message
    for part in says:
        assert part.format(url=hub.url) in message
    assert SECRET not in message
    assert _files(caches / "mls") == []
    # The Hugging Face cache holds at most huggingface_hub's own marker that a file does not
    # exist at that commit; unless config.json was read whole before the 429 on the weights,
    # which that cache keeps as it always does.
    if setup is not _limit_weights:
        assert [p for p in _files(caches / "hf") if ".no_exist" not in p.parts] == []
    if setup in (None, _no_token, _limit_api, _limit_weights) and hub.requests:
        signed = {s.authorization for s in hub.requests}
        assert signed == ({None} if setup is _no_token else {f"Bearer {SECRET}"})


def test_a_missing_shard_is_named(hub: HubServer, caches: Path) -> None:
    with pytest.raises(UsageError) as caught:
        read_hub_model(TORN, _commit(TORN))
    assert str(caught.value) == (f"acme/moe-torn at {_commit(TORN)[:12]} has no "
                                 "model-00002-of-00002.safetensors: its index lists it")
    assert _files(caches / "mls") == []


def test_malformed_pins_and_offline_ask_nothing(hub: HubServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for model, revision in ((DENSE, "main"), ("not a model", _commit(DENSE))):
        with pytest.raises(UsageError):
            read_hub_model(model, revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError):
        read_hub_model(DENSE, _commit(DENSE))
    assert hub.requests == []
