"""Model facts: a model's architecture, from its own config.json or the built-in catalog.

Model facts come from the model's own `config.json` when one is at hand (a local checkpoint
folder, or the Hugging Face cache for a Hub id at its pinned revision), else from the small
built-in catalog `data/models.toml`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import HubUnreachable, UsageError
from modal_llm_serving.facts.context import context_limit
from modal_llm_serving.facts.gpus import GB, builtin_table
from modal_llm_serving.facts.hub import TEXT_CONFIG_KEYS, HubModel, hub_cache, read_hub_model
from modal_llm_serving.files import require_regular_file
from modal_llm_serving.untrusted import read_json_file

__all__ = [
    "ModelFacts",
    "builtin_models",
    "experts_touched_fraction",
    "find_hub_config",
    "layer_kinds",
    "model_facts",
    "model_facts_from_config",
]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What sizing needs to know about a model's architecture."""

    name: str
    total_params: float  # parameters, all experts
    active_params: float  # parameters used per token (= total for dense models)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    native_precision: str  # dtype the checkpoint is stored in
    experts: int = 0  # routed experts per MoE layer (0: dense)
    experts_per_token: int = 0
    kv_lora_rank: int = 0  # MLA latent size (DeepSeek); 0 for ordinary attention
    qk_rope_head_dim: int = 0
    checkpoint_bytes: float | None = None  # exact size on disk when known
    source: str = ""
    # Layers whose cache does not grow with every token (0 for a plain transformer):
    sliding_layers: int = 0  # attend to the last `sliding_window` tokens only (gpt-oss, Gemma)
    sliding_window: int = 0
    linear_layers: int = 0  # a fixed-size state per sequence (Gated DeltaNet, Mamba)
    linear_state_elements: int = 0  # values one linear layer keeps per sequence
    attention_free_layers: int = 0  # no attention at all (MLP-only blocks): nothing cached
    gated: bool | None = None  # the Hub's word on access (None: not asked, e.g. the catalog)
    context_fields: str = "max_position_embeddings"  # where max_position comes from
    tied_embeddings: bool = False  # the LM head is the input embedding table (one matrix)

    @property
    def embedding_params(self) -> float:
        """The vocabulary matrices: the input embedding table and the LM head, one matrix when
        tied. Engines keep them at 16 bits whatever the checkpoint's quantization."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def splits_over(self, n: int) -> bool:
        """Whether tensor parallelism over `n` GPUs splits the attention evenly, the engines'
        rule: the heads divide by `n`, and the KV heads too, or `n` by them (each GPU then holds
        a copy of a KV head)."""
        return self.heads % n == 0 and (self.kv_heads % n == 0 or n % self.kv_heads == 0)

    @property
    def full_attention_layers(self) -> int:
        """Layers whose KV cache grows with every token of the sequence."""
        return self.layers - self.sliding_layers - self.linear_layers - self.attention_free_layers

    @property
    def kv_grows_with_every_token(self) -> bool:
        """True for a plain transformer: every layer caches every token."""
        return self.full_attention_layers == self.layers

    def kv_elements_per_token(self) -> int:
        """Values cached per token by the full-attention layers (K and V, or the MLA latent)."""
        if self.kv_lora_rank:
            return self.full_attention_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        return 2 * self.full_attention_layers * self.kv_heads * self.head_dim

    def kv_elements(self, tokens: float) -> float:
        """Values one sequence of `tokens` tokens keeps, layer type by layer type: full
        attention caches every token, a sliding window at most `sliding_window` of them, a
        linear layer its fixed state."""
        sliding = 2 * self.sliding_layers * self.kv_heads * self.head_dim
        return (self.kv_elements_per_token() * tokens
                + sliding * min(tokens, self.sliding_window)
                + self.linear_layers * self.linear_state_elements)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kv_elements_per_token"] = self.kv_elements_per_token()
        return data


# What a catalog entry says about where its figures come from, not about the architecture:
# the pinned Hub commit public code uses for the repo, where that pin was read, whether the Hub
# gates the repo, and which of these could not be verified. Kept in the file, not in the math.
RECORD_KEYS = ("source", "checked", "revision", "revision_source", "gated", "unverified")

# Fields transformers fills in when a config.json leaves them out (its configuration_<family>.py
# defaults): Gemma 3's own config.json names neither its vocabulary nor its positions.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"vocab_size": 262_208, "max_position_embeddings": 131_072,
                    "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 4096,
                    "sliding_window_pattern": 6, "tie_word_embeddings": True},
}


def builtin_models() -> dict[str, dict[str, Any]]:
    return builtin_table("models.toml")


def _from_catalog(name: str, entry: dict[str, Any]) -> ModelFacts:
    if "config" in entry:  # the model's own config.json fields, read by the same parser
        facts = model_facts_from_config(
            entry["config"], name=name, source=f"built-in catalog (data/models.toml: its "
            f"config.json fields as read on {entry['checked']} from {entry['source']})")
        return facts
    fields = {key: value for key, value in entry.items() if key not in RECORD_KEYS}
    total = fields.pop("total_params_b") * 1e9
    active = fields.pop("active_params_b") * 1e9
    checkpoint = fields.pop("checkpoint_gb", None)
    return ModelFacts(name=name, total_params=total, active_params=active,
                      checkpoint_bytes=checkpoint * GB if checkpoint else None,
                      source="built-in catalog (data/models.toml)", **fields)


def _dtype_name(config: dict[str, Any]) -> str:
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    if method in ("awq", "gptq", "bitsandbytes") or quant.get("bits") == 4:
        return "int4"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return {"float16": "fp16", "float32": "fp32"}.get(dtype, "bf16")


def model_facts_from_config(config: dict[str, Any], *, name: str, source: str,
                            checkpoint_bytes: float | None = None) -> ModelFacts:
    """Architecture and parameter counts from a Hugging Face `config.json` mapping.

    A config is input (a local folder's file, or the Hub's): a field of the wrong type or an
    absurd size is a UsageError naming the file, never a traceback or a plan built on it.
    """
    if not isinstance(config, dict) or not all(isinstance(config.get(key, {}), dict)
                                               for key in TEXT_CONFIG_KEYS):
        raise UsageError(f"{source} is not a model config (a JSON object of fields)")
    try:
        facts = _facts_from_config(config, name=name, source=source,
                                   checkpoint_bytes=checkpoint_bytes)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise UsageError(f"{source} has a field of the wrong type or value ({exc}); is it a "
                         "Hugging Face decoder LLM config?") from None
    sizes = (facts.hidden, facts.layers, facts.heads, facts.vocab, facts.kv_heads,
             facts.head_dim, facts.max_position)
    if min(sizes) < 1 or facts.total_params > 1e14 or facts.max_position > 1 << 30:
        raise UsageError(f"{source} gives sizes no real model has (hidden {facts.hidden}, "
                         f"layers {facts.layers}, heads {facts.heads}, vocab {facts.vocab}, "
                         f"context {facts.max_position}); check the file")
    return facts


def _facts_from_config(config: dict[str, Any], *, name: str, source: str,
                       checkpoint_bytes: float | None) -> ModelFacts:
    for key in TEXT_CONFIG_KEYS:  # multimodal wrappers keep the language model's config inside
        if isinstance(config.get(key), dict):
            config = {**config[key], "quantization_config": config.get("quantization_config")
                      or config[key].get("quantization_config")}
            break
    config = {**_FAMILY_DEFAULTS.get(str(config.get("model_type")), {}), **config}
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{source} lacks {exc} (hidden_size, num_hidden_layers, "
                         "num_attention_heads, vocab_size): is it a decoder LLM config?") from exc
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if isinstance(blocks := config.get("block_configs"), list):  # Nemotron-Super: per block
        groups = {int(b["attention"]["n_heads_in_group"]) for b in blocks
                  if isinstance(b, dict) and isinstance(b.get("attention"), dict)
                  and b["attention"].get("n_heads_in_group")}
        kv_heads = heads // min(groups) if groups else kv_heads
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    experts = int(config.get("num_local_experts") or config.get("num_experts")
                  or config.get("n_routed_experts") or 0)
    per_token = int(config.get("num_experts_per_tok") or config.get("experts_per_token")
                    or config.get("num_experts_per_token") or config.get("top_k_experts") or 0)
    moe_inter = int(config.get("moe_intermediate_size") or inter)
    # shared experts: a count of expert-sized MLPs (DeepSeek), or one MLP of its own size (Qwen)
    shared: float = int(config.get("n_shared_experts") or 0)
    if shared_inter := int(config.get("shared_expert_intermediate_size")
                           or config.get("moe_shared_expert_intermediate_size") or 0):
        shared = shared_inter / moe_inter
    kv_lora = int(config.get("kv_lora_rank") or 0)
    rope_dim = int(config.get("qk_rope_head_dim") or 0)
    if kv_lora:  # MLA: low-rank projections; roughly the published per-layer attention size
        q_rank = int(config.get("q_lora_rank") or hidden)
        nope = int(config.get("qk_nope_head_dim") or head_dim)
        v_dim = int(config.get("v_head_dim") or head_dim)
        attn = (hidden * q_rank + q_rank * heads * (nope + rope_dim)
                + hidden * (kv_lora + rope_dim) + kv_lora * heads * (nope + v_dim)
                + heads * v_dim * hidden)
        kv_heads, head_dim = 1, kv_lora + rope_dim
    else:
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    matrices = 2 if config.get("mlp_hidden_act") == "relu2" else 3  # relu2: no gate (Nemotron-H)
    dense_mlp = matrices * hidden * inter
    dense_layers, moe_layers = _mlp_layers(config, layers, experts)
    expert_mlp = matrices * hidden * moe_inter
    router = hidden * experts
    tied = bool(config.get("tie_word_embeddings", False))
    embeddings = vocab * hidden * (1 if tied else 2)
    kinds = layer_kinds(config, layers)
    attention_layers = layers - kinds["linear_layers"] - kinds["attention_free_layers"]
    if isinstance(blocks, list) and len(blocks) == layers:  # each block its own sizes
        body = _block_params(blocks, hidden, heads, head_dim)
    else:
        body = (attention_layers * attn + dense_layers * dense_mlp
                + kinds["linear_layers"] * _linear_params(config, hidden))
    common = body + embeddings
    total = common + moe_layers * (experts * expert_mlp + shared * expert_mlp + router)
    active = common + moe_layers * ((per_token + shared) * expert_mlp + router)
    max_position, context_fields = context_limit(config)
    return ModelFacts(
        name=name, total_params=float(total), active_params=float(active), layers=layers,
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
        max_position=max_position, context_fields=context_fields,
        native_precision=_dtype_name(config), experts=experts,
        experts_per_token=per_token, kv_lora_rank=kv_lora, qk_rope_head_dim=rope_dim,
        checkpoint_bytes=checkpoint_bytes, source=source, gated=None, tied_embeddings=tied,
        **kinds)


# How configs name their layers' kinds (`layer_types`, one word a layer), by what they cache.
_FULL = ("full_attention", "attention", "global_attention")
_SLIDING = ("sliding_attention", "sliding_window_attention", "local_attention",
            "chunked_attention")
_LINEAR = ("linear_attention", "mamba", "mamba2", "gated_deltanet", "recurrent")


def layer_kinds(config: dict[str, Any], layers: int) -> dict[str, int]:
    """How many layers cache a sliding window, a fixed state, or nothing, read from whichever
    field the config family uses: `layer_types` (gpt-oss, Gemma 3, Qwen3.5), `sliding_window_
    pattern` (Gemma), `full_attention_interval` (Qwen3-Next), `hybrid_override_pattern`
    (Nemotron-H: M Mamba, * attention, - or E MLP), `block_configs` (Nemotron-Super no-op
    attention). Layers not named otherwise are full attention."""
    sliding = linear = free = 0
    types = config.get("layer_types")
    pattern = config.get("hybrid_override_pattern")
    if isinstance(types, list) and len(types) == layers:
        words = [str(kind).lower() for kind in types]
        unknown = sorted(set(words) - set(_FULL + _SLIDING + _LINEAR))
        if unknown:
            raise ValueError(f"unknown layer type(s) {', '.join(unknown)} in layer_types")
        sliding = sum(word in _SLIDING for word in words)
        linear = sum(word in _LINEAR for word in words)
    elif isinstance(pattern, str) and len(pattern) == layers:
        linear = pattern.count("M")
        free = sum(char in "-E" for char in pattern)
    elif interval := int(config.get("full_attention_interval") or 0):
        linear = layers - layers // interval
    elif every := int(config.get("sliding_window_pattern") or 0):
        sliding = layers - layers // every
    elif isinstance(blocks := config.get("block_configs"), list) and len(blocks) == layers:
        free = sum(isinstance(b, dict) and isinstance(b.get("attention"), dict)
                   and bool(b["attention"].get("no_op")) for b in blocks)
    window = int(config.get("sliding_window") or 0) if sliding else 0
    if sliding and window < 1:
        raise ValueError("sliding-window layers but no sliding_window size")
    return {"sliding_layers": sliding, "sliding_window": window, "linear_layers": linear,
            "linear_state_elements": _linear_state(config) if linear else 0,
            "attention_free_layers": free}


def _mlp_layers(config: dict[str, Any], layers: int, experts: int) -> tuple[int, int]:
    """How many layers hold a dense MLP and how many a MoE block. Nemotron-H's pattern names
    them (- MLP, E MoE; M and * layers hold none); MoE models keep their first
    `first_k_dense_replace` and any `mlp_only_layers` dense; other models are dense throughout."""
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and len(pattern) == layers:
        return pattern.count("-"), pattern.count("E")
    if not experts:
        return layers, 0
    dense = int(config.get("first_k_dense_replace") or 0) + len(config.get("mlp_only_layers")
                                                              or [])
    return dense, layers - dense


def _block_params(blocks: list[Any], hidden: int, heads: int, head_dim: int) -> int:
    """Attention and MLP parameters of Nemotron-Super's blocks, each sized by its own entry:
    KV heads from `n_heads_in_group`, the MLP width from `ffn_mult` (DeciLM's rule: 2/3 of
    ffn_mult x hidden, rounded up to 256), nothing for a no-op, hidden x hidden for a linear."""
    total = 0
    for block in (b for b in blocks if isinstance(b, dict)):
        attention, ffn = block.get("attention") or {}, block.get("ffn") or {}
        if attention.get("replace_with_linear"):
            total += hidden * hidden
        elif not attention.get("no_op"):
            kv_heads = heads // int(attention.get("n_heads_in_group") or 1)
            total += 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
        if ffn.get("replace_with_linear"):
            total += hidden * hidden
        elif not ffn.get("no_op"):
            width = -(-int(2 * float(ffn.get("ffn_mult") or 0) * hidden / 3) // 256) * 256
            total += 3 * hidden * width
    return total


def _linear_params(config: dict[str, Any], hidden: int) -> int:
    """Parameters of one linear layer's projections: Gated DeltaNet (q, k from key heads; v and
    its gate from value heads; the output back to hidden) or Mamba2 (its input projection to x,
    z, B, C and one step size a head; the output back to hidden); 0 for a config without them."""
    if mamba_heads := int(config.get("mamba_num_heads") or 0):
        inner = mamba_heads * int(config.get("mamba_head_dim") or 64)
        groups_state = int(config.get("n_groups") or 1) * int(config.get("ssm_state_size") or 128)
        return hidden * (2 * inner + 2 * groups_state + mamba_heads) + inner * hidden
    if "linear_num_value_heads" not in config:
        return 0
    v = int(config["linear_num_value_heads"]) * int(config.get("linear_value_head_dim") or 128)
    k = int(config.get("linear_num_key_heads") or config["linear_num_value_heads"]) * int(
        config.get("linear_key_head_dim") or 128)
    return hidden * (2 * k + 2 * v) + v * hidden


def _linear_state(config: dict[str, Any]) -> int:
    """Values one linear layer keeps per sequence: its recurrent state (heads x key dim x value
    dim; Mamba: heads x head dim x state size) plus its short convolution's window."""
    if "linear_num_value_heads" in config:  # Gated DeltaNet (Qwen3-Next, Qwen3.5)
        v_heads = int(config["linear_num_value_heads"])
        k_heads = int(config.get("linear_num_key_heads") or v_heads)
        k_dim = int(config.get("linear_key_head_dim") or 128)
        v_dim = int(config.get("linear_value_head_dim") or 128)
        kernel = int(config.get("linear_conv_kernel_dim") or 4)
        conv_channels = 2 * k_heads * k_dim + v_heads * v_dim
        return v_heads * k_dim * v_dim + conv_channels * (kernel - 1)
    heads = int(config.get("mamba_num_heads") or 0)  # Mamba2 (Nemotron-H)
    head_dim = int(config.get("mamba_head_dim") or 64)
    state = int(config.get("ssm_state_size") or config.get("state_size") or 128)
    groups = int(config.get("n_groups") or 1)
    kernel = int(config.get("conv_kernel") or 4)
    conv_channels = heads * head_dim + 2 * groups * state
    return heads * head_dim * state + conv_channels * (kernel - 1)


def find_hub_config(model: str, revision: str | None) -> Path | None:
    """`config.json` of a Hub model in the local Hugging Face cache, at `revision` if given."""
    repo = hub_cache() / ("models--" + model.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    if revision is None:
        ref = repo / "refs" / "main"
        revision = ref.read_text().strip() if ref.is_file() else None
    if revision is None:
        return None
    for snapshot in snapshots.iterdir():
        if snapshot.name.startswith(revision) and (snapshot / "config.json").is_file():
            return snapshot / "config.json"
    return None


def _checkpoint_bytes(folder: Path) -> float | None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            size = read_json_file(index)["metadata"]["total_size"]
            return float(size)
        except (OSError, KeyError, ValueError, TypeError):  # a sum of the files' sizes instead
            pass
    files = list(folder.glob("*.safetensors"))
    if files:
        return float(sum(f.stat().st_size for f in files))
    return None


def model_facts(model: str, *, revision: str | None = None) -> ModelFacts:
    """Facts for `model`, from the first source that has them: a local checkpoint folder, the
    Hugging Face cache at `revision`, the Hub at `revision` (cached per commit), the built-in
    catalog (also what an unreachable Hub falls back to)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise UsageError(f"{folder} has no config.json: point 'model' at a Hugging Face "
                             "checkpoint folder")
        return _load_config(config_path, name=model, checkpoint=_checkpoint_bytes(folder))
    if cached := find_hub_config(model, revision):
        return _load_config(cached, name=model, checkpoint=_checkpoint_bytes(cached.parent))
    catalog = builtin_models()
    known = {name.lower(): name for name in catalog}.get(model.lower())
    if revision is not None and _COMMIT.match(revision):
        try:
            return _from_hub(read_hub_model(model, revision))
        except HubUnreachable:
            if known is None:
                raise
    if known is not None:
        return _from_catalog(known, catalog[known])
    raise UsageError(
        f"no facts for model {model!r}: its config.json is read from the Hub at a full "
        f"40-character revision (`mls revision {model}` prints the commit), or from a local "
        f"checkpoint folder given as 'model'. Built-in: {', '.join(sorted(catalog))}")


def _from_hub(hub: HubModel) -> ModelFacts:
    """Facts from the Hub's config.json, with the safetensors' exact sizes where it has them."""
    facts = model_facts_from_config(dict(hub.config), name=hub.model, source=hub.source,
                                    checkpoint_bytes=hub.checkpoint_bytes)
    facts = dataclasses.replace(facts, gated=hub.gated)
    if hub.total_params:  # counted, not estimated from the config's shapes
        share = facts.active_params / facts.total_params
        facts = dataclasses.replace(facts, total_params=float(hub.total_params),
                                    active_params=float(hub.total_params) * share)
    return facts


CONFIG_LIMIT_BYTES = 16 * 2**20  # a config.json is a few KiB; one past this is not one


def _load_config(path: Path, *, name: str, checkpoint: float | None) -> ModelFacts:
    try:
        require_regular_file(path, what="model config")
        config = read_json_file(path, max_bytes=CONFIG_LIMIT_BYTES)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or past a bound
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object")
    return model_facts_from_config(config, name=name, source=f"config.json at {path}",
                                   checkpoint_bytes=checkpoint)


def experts_touched_fraction(facts: ModelFacts, batch: int) -> float:
    """Expected share of a MoE layer's experts a decode step reads for `batch` sequences.

    Each token picks `experts_per_token` of `experts` (treated as uniform and independent), so
    an expert is untouched with probability (1 - k/E)^batch.
    """
    if not facts.is_moe:
        return 1.0
    k = facts.experts_per_token / facts.experts
    return 1.0 - math.pow(1.0 - k, batch)
