"""A tiny random-weight chat model, built on this machine in seconds, for fast structural tests.

It is a real Qwen2 checkpoint (config, safetensors, tokenizer, ChatML chat template) that vLLM
loads and serves like any other; its answers are noise, but never empty (see below). Head size
32 is the smallest that vLLM's CPU attention supports. The BPE tokenizer is trained here on text
generated below, so nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["build_tiny_model"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (  # noqa: SIM905 (one line of prose reads better than 45 quoted words)
    "the model serves tokens fast and cheap on modal with vllm sglang a GPU volume snapshot "
    "region latency throughput request stream prompt answer capital of france is paris hello "
    "world user assistant system you are helpful what why how when where who one two three"
).split()


def _corpus(lines: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 24))) + "." for _ in range(lines)]


def build_tiny_model(path: Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Write a tiny Qwen2 chat model to `path` (created) and return it.

    **Parameters:** `vocab_size`: BPE vocabulary size; `seed`: makes weights and tokenizer
    repeatable.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(4000, seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(path)

    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim = 64 / 2 = 32
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        # Zero the (tied) embeddings of special and whitespace-only tokens: their logits are then
        # 0 while the best ordinary token's is positive, so greedy decoding never stops early on
        # <|im_end|> nor drifts into blank lines, and every reply has visible text (a smoke test
        # rightly fails on an empty reply).
        for token_id in range(tokenizer.get_vocab_size()):
            if not tokenizer.decode([token_id], skip_special_tokens=True).strip():
                model.model.embed_tokens.weight[token_id].zero_()
    model.save_pretrained(path, safe_serialization=True)
    generation = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return path
