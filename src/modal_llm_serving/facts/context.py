"""The longest context an engine accepts for a model: its config's position keys and rope scaling.

vLLM 0.32 (`vllm/config/model.py`, `_get_and_verify_max_len`) takes the smallest of the config's
length keys (`model_max_length` wins where present), then multiplies it by the rope scaling factor
for the rope types whose `max_position_embeddings` is the unscaled length ("linear", "dynamic",
...). YaRN, llama3, longrope and DeepSeek's scalings already state the scaled length there, and
Gemma 3's 128K is scaled too: no factor for those. The same rule applies here, so `mls check`
refuses exactly the `--max-model-len` the engine would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["context_limit"]

# vLLM's keys for the model's length, smallest wins (ModelArchConfigConvertor).
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
               "model_max_length", "max_target_positions", "max_sequence_length",
               "max_seq_length", "seq_len")
# Rope types whose factor is already in max_position_embeddings.
SCALED_ALREADY = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}
DEFAULT_LENGTH = 4096  # what the planner assumes of a config that states none


def context_limit(config: Mapping[str, Any]) -> tuple[int, str]:
    """(the longest context the engine accepts, the config fields it comes from)."""
    lengths = {key: config[key] for key in LENGTH_KEYS
               if isinstance(config.get(key), int | float) and config[key] > 0}
    if isinstance(config.get("model_max_length"), int | float) and config["model_max_length"] > 0:
        key = "model_max_length"  # Command-R's key overrides the others, as in vLLM
    elif lengths:
        key = min(lengths, key=lambda k: lengths[k])
    else:
        return DEFAULT_LENGTH, f"no length key in the config: {DEFAULT_LENGTH} assumed"
    length = lengths[key]
    factor, rope_type = _rope_factor(config)
    if factor == 1.0:
        return int(length), f"{key} {int(length)}"
    return int(length * factor), f"{key} {int(length)} x {rope_type} rope scaling factor {factor:g}"


def _rope_factor(config: Mapping[str, Any]) -> tuple[float, str]:
    """The scaling factor that lengthens the config's stated length, and its rope type."""
    if "gemma3" in str(config.get("model_type", "")):
        return 1.0, ""
    factor, kind = 1.0, ""
    for params in _rope_parameters(config):
        rope_type = str(params.get("rope_type") or params.get("type") or "default")
        value = params.get("factor")
        if rope_type in SCALED_ALREADY or rope_type == "default":
            continue
        if isinstance(value, int | float) and value > 0:
            factor, kind = float(value), rope_type
    return factor, kind


def _rope_parameters(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`rope_scaling` or `rope_parameters` (transformers 5's name): one mapping, or one per
    layer type ({"full_attention": {...}, "sliding_attention": {...}})."""
    for key in ("rope_parameters", "rope_scaling"):
        value = config.get(key)
        if not isinstance(value, Mapping):
            continue
        if all(isinstance(v, Mapping) for v in value.values()) and value:
            return list(value.values())
        return [value]
    return []
