"""A serving engine's decoder step in plain PyTorch: what `gpu_calibrate.py` times by default.

transformers' reference models are written for clarity, not serving: each GQA layer copies its
KV cache to the query heads' count before attention (`repeat_kv`), norms and rotary run as
a dozen small kernels, and a MoE layer loops over its experts in Python. Timed as they stand they
measure transformers, not a GPU (see docs/PERFORMANCE.md). An engine fuses instead, and this
file does the same with PyTorch's own parts so no engine is needed:

- one matrix each for Q/K/V together, the output projection, gate and up together, and down;
- attention straight over the KV cache with the query heads grouped onto it
  (`scaled_dot_product_attention(..., enable_gqa=True)`: no copy);
- norms, rotary and SiLU-times-up as small compiled element-wise functions;
- a MoE layer as grouped matrix products over the tokens sorted by expert (`torch._grouped_mm`),
  which read only the experts some token chose, as an engine's fused-MoE kernel does;
- optionally FP8 weights with a per-tensor scale, multiplied by `torch._scaled_mm`.

Covers the Llama/Qwen3 family (dense and MoE, with or without Qwen3's per-head Q/K norms) from
the fields of the model's own config.json. Weights are random: only their shapes and dtypes
matter for time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

_compiled: dict[str, Callable[..., Any]] = {}
# One compiled version per input shape: several models x batches x prompt lengths.
torch._dynamo.config.cache_size_limit = 256
torch._dynamo.config.accumulated_cache_size_limit = 4096


def fused(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled by Inductor into one or two kernels (once per input shape), where it can be;
    eager where it cannot (no compiler), so the file runs on any machine."""
    name = fn.__name__

    def call(*args: Any) -> Any:
        if name not in _compiled:
            try:
                _compiled[name] = torch.compile(fn, dynamic=False, fullgraph=True)
                _compiled[name](*args)
            except Exception:  # no Triton/C compiler here: run it as written
                _compiled[name] = fn
        return _compiled[name](*args)

    return call


@fused
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    variance = total.float().pow(2).mean(-1, keepdim=True)
    return (total.float() * torch.rsqrt(variance + eps)).to(x.dtype) * weight, total


@fused
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps)).to(x.dtype) * weight


@fused
def qk_norm_rotary(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                   k_weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3's per-head RMS norms (where the model has them), then rotary embedding."""
    def norm(t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if w is None:
            return t
        variance = t.float().pow(2).mean(-1, keepdim=True)
        return (t.float() * torch.rsqrt(variance + eps)).to(t.dtype) * w

    def rotate(t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        turned = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return (t * cos + turned * sin).to(t.dtype)

    return rotate(norm(q, q_weight)), rotate(norm(k, k_weight))


@fused
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class Linear:
    """y = x @ W.T in bf16, or with FP8 weights (per-tensor scale) through `torch._scaled_mm`."""

    def __init__(self, n_in: int, n_out: int, *, fp8: bool, device: torch.device) -> None:
        weight = torch.randn(n_out, n_in, device=device, dtype=torch.bfloat16) / math.sqrt(n_in)
        self.fp8 = fp8
        if fp8:
            # row-major (n_out, n_in), so .t() is the column-major operand _scaled_mm wants
            self.weight = weight.to(torch.float8_e4m3fn)
            self.scale = torch.ones((), device=device)
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fp8:
            return x @ self.weight.t()
        rows = x.shape[0]
        padded = -rows % 16  # FP8 GEMMs want rows in multiples of 16
        x8 = F.pad(x, (0, 0, 0, padded)).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(x8, self.weight.t(), scale_a=self.scale, scale_b=self.scale,
                               out_dtype=torch.bfloat16)
        return out[:rows]

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class Experts:
    """A MoE layer's routed experts: every token goes to its top-k, computed as grouped GEMMs over
    the tokens sorted by expert, so only chosen experts' weights are read."""

    def __init__(self, hidden: int, inter: int, experts: int, top_k: int,
                 device: torch.device) -> None:
        def weights(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=torch.bfloat16) / math.sqrt(shape[-1])

        self.router = weights(experts, hidden)
        self.gate_up = weights(experts, 2 * inter, hidden)  # per expert (out, in), row-major
        self.down = weights(experts, hidden, inter)
        self.experts, self.top_k = experts, top_k

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        scores = torch.softmax((x @ self.router.t()).float(), dim=-1)
        weight, chosen = scores.topk(self.top_k, dim=-1)
        weight = (weight / weight.sum(-1, keepdim=True)).to(x.dtype)
        flat = chosen.flatten()
        order = flat.argsort()
        rows = x.repeat_interleave(self.top_k, dim=0)[order]
        # a count per expert of static size (bincount's size depends on the data: no CUDA graph)
        counts = torch.zeros(self.experts, device=x.device, dtype=torch.int64)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        ends = counts.cumsum(0).to(torch.int32)
        hidden = silu_mul(grouped(rows, self.gate_up, ends))
        out = grouped(hidden, self.down, ends)
        back = torch.empty_like(out)
        back[order] = out
        return (back.view(tokens, self.top_k, -1) * weight.unsqueeze(-1)).sum(1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.router, self.gate_up, self.down))


def grouped(rows: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """rows[i] @ weights[e].T for the expert e whose range of `ends` holds row i."""
    if rows.is_cuda:
        return torch._grouped_mm(rows, weights.transpose(-2, -1), offs=ends)
    out, start = [], 0  # no grouped GEMM off the GPU: one product per expert
    for expert, end in enumerate(ends.tolist()):
        out.append(rows[start:end] @ weights[expert].t())
        start = end
    return torch.cat(out)


class Decoder:
    """The model of a Llama/Qwen3-family config.json (dict), random weights, on `device`."""

    def __init__(self, config: dict[str, Any], *, device: torch.device, fp8: bool = False) -> None:
        c = config
        self.hidden = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.layers = c["num_hidden_layers"]
        self.eps = float(c.get("rms_norm_eps", 1e-6))
        self.theta = float(c.get("rope_theta", 10000.0))
        self.device = device
        qk_norm = c["model_type"].startswith("qwen3")
        experts = c.get("num_experts") or 0

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, device=device, dtype=torch.bfloat16)

        self.embed = torch.randn(c["vocab_size"], self.hidden, device=device,
                                 dtype=torch.bfloat16)
        self.blocks = []
        for _ in range(self.layers):
            block: dict[str, Any] = {
                "norm1": ones(self.hidden), "norm2": ones(self.hidden),
                "qkv": Linear(self.hidden, (self.heads + 2 * self.kv_heads) * self.head_dim,
                              fp8=fp8, device=device),
                "o": Linear(self.heads * self.head_dim, self.hidden, fp8=fp8, device=device),
                "q_norm": ones(self.head_dim) if qk_norm else None,
                "k_norm": ones(self.head_dim) if qk_norm else None,
            }
            if experts:
                block["moe"] = Experts(self.hidden, c["moe_intermediate_size"], experts,
                                       c["num_experts_per_tok"], device)
            else:
                block["gate_up"] = Linear(self.hidden, 2 * c["intermediate_size"], fp8=fp8,
                                          device=device)
                block["down"] = Linear(c["intermediate_size"], self.hidden, fp8=fp8,
                                       device=device)
            self.blocks.append(block)
        self.final_norm = ones(self.hidden)
        self.lm_head = Linear(self.hidden, c["vocab_size"], fp8=False, device=device)

    @property
    def weight_bytes(self) -> int:
        total = self.embed.numel() * 2 + self.lm_head.nbytes
        for block in self.blocks:
            total += sum(part.nbytes for part in block.values() if hasattr(part, "nbytes"))
            total += sum(t.numel() * 2 for t in block.values() if isinstance(t, torch.Tensor))
        return total

    def kv_cache(self, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A static bf16 cache: per layer, K and V of shape (batch, kv_heads, context, head_dim)."""
        shape = (batch, self.kv_heads, context, self.head_dim)
        return [(torch.zeros(shape, device=self.device, dtype=torch.bfloat16),
                 torch.zeros(shape, device=self.device, dtype=torch.bfloat16))
                for _ in range(self.layers)]

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.head_dim // 2
        freq = self.theta ** (-torch.arange(half, device=self.device, dtype=torch.float32) / half)
        angles = positions.float()[:, None] * freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)

    @staticmethod
    def _mlp(block: dict[str, Any], h: torch.Tensor) -> torch.Tensor:
        if "moe" in block:
            return block["moe"](h)
        return block["down"](silu_mul(block["gate_up"](h)))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor,
                cache: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """Logits of each sequence's last token. `ids` is (batch, tokens). With a `cache`, each
        sequence decodes one token at `positions[0]` and attends the whole cache (every slot
        counts as filled: the time is the same); without, a causal prefill of the prompt."""
        batch, tokens = ids.shape
        cos, sin = self._rotary(positions)
        x = self.embed[ids.flatten()]
        residual = torch.zeros_like(x)
        for layer, block in enumerate(self.blocks):
            h, residual = add_rms_norm(x, residual, block["norm1"], self.eps)
            q, k, v = block["qkv"](h).split(
                [self.heads * self.head_dim, self.kv_heads * self.head_dim,
                 self.kv_heads * self.head_dim], dim=-1)
            q = q.reshape(batch, tokens, self.heads, self.head_dim)
            k = k.reshape(batch, tokens, self.kv_heads, self.head_dim)
            q, k = qk_norm_rotary(q, k, block["q_norm"], block["k_norm"],
                                  cos[:, None, :], sin[:, None, :], self.eps)
            q = q.transpose(1, 2)
            k = k.transpose(1, 2)
            v = v.reshape(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
            if cache is not None:
                k_cache, v_cache = cache[layer]
                k_cache[:, :, -1:] = k
                v_cache[:, :, -1:] = v
                out = F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = block["o"](out.transpose(1, 2).reshape(batch * tokens, -1))
            h, residual = add_rms_norm(x, residual, block["norm2"], self.eps)
            x = self._mlp(block, h)
        last = (x + residual).view(batch, tokens, -1)[:, -1]
        return self.lm_head(rms_norm(last, self.final_norm, self.eps))
