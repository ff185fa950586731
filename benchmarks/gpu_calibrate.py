"""Measure on this machine's GPU what `mls plan`'s roofline assumes: decode steps, prefill, HBM
bandwidth and matmul TFLOP/s.

Needs only PyTorch (transformers for `--impl transformers`): no vLLM, no download. Each model is
built from its config (`benchmarks/gpu_configs/*.json`: the model's own config.json fields, with
where they were read) with random weights straight on the GPU, by default as a serving engine
lays it out (`gpu_decoder.py`: fused projections, grouped-query attention over the cache with no
copy, grouped-GEMM MoE, optional FP8 weights). A decode step is one token for each of `batch`
sequences over a static KV cache `context` tokens long (every cached position attended),
captured once in a CUDA graph and replayed, so Python is not in the time; prefill is one prompt
of `tokens` tokens. Beside them, what the card itself does: a large copy (HBM bytes/s) and large
bf16 (and fp8, where the card has it) matrix products.

    python3 benchmarks/gpu_calibrate.py --out results/gpu             # every config, every cell
    python3 benchmarks/gpu_calibrate.py --models Qwen--Qwen3-8B --batches 1,8 --contexts 1024

Writes one JSON per GPU, model and weights (`<gpu>--<model>--<impl>-<weights>.json`);
`benchmarks/gpu_compare.py` sets them beside the plan's predictions. A cell whose KV cache does
not fit the free memory is skipped and says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parent / "gpu_configs"
REPEATS = 20  # timed replays per cell, after warm-up


def timed_ms(run: Callable[[], object], *, repeats: int = REPEATS) -> float:
    """Median milliseconds of `run` (CUDA events on a GPU, the wall clock elsewhere)."""
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return sorted(times)[len(times) // 2]


# --- the card ---------------------------------------------------------------------------------

def card_figures(device: torch.device) -> dict[str, Any]:
    """HBM copy bandwidth and dense matmul throughput (bf16; fp8 where the card supports it)."""
    gib = 2**30 if device.type == "cuda" else 2**24
    src = torch.empty(gib // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    copy_ms = timed_ms(lambda: dst.copy_(src))
    figures: dict[str, Any] = {"hbm_copy_gb_s": 2 * gib / (copy_ms / 1e3) / 1e9}
    n = 8192 if device.type == "cuda" else 256
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    figures["bf16_matmul_tflops"] = 2 * n**3 / (timed_ms(lambda: a @ b) / 1e3) / 1e12
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # column-major b
        one = torch.ones((), device=device)
        ms = timed_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one,
                                               out_dtype=torch.bfloat16))
        figures["fp8_matmul_tflops"] = 2 * n**3 / (ms / 1e3) / 1e12
    return figures


# --- a model ----------------------------------------------------------------------------------

def build_model(config_file: Path, device: torch.device, *, impl: str,
                fp8: bool) -> tuple[Any, dict[str, Any]]:
    """The model of `config_file` with random weights on `device`: the serving-engine-like
    decoder of gpu_decoder.py ("engine", bf16 or FP8 weights), or transformers' own model."""
    fields = json.loads(config_file.read_text())
    meta = {key: fields.pop(key) for key in ("_model", "_source")}
    torch.manual_seed(0)
    if impl == "engine":
        from gpu_decoder import Decoder

        model = Decoder(fields, device=device, fp8=fp8)
        meta["weight_bytes"] = model.weight_bytes
        return model, meta
    from transformers import AutoConfig, AutoModelForCausalLM

    fields.pop("architectures", None)
    fields.pop("torch_dtype", None)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with device:
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    hf_model.eval()
    meta["weight_bytes"] = sum(p.numel() * p.element_size() for p in hf_model.parameters())
    return (hf_model, config), meta


def kv_bytes(config: dict[str, Any], batch: int, context: int) -> int:
    """Bytes of a bf16 KV cache for `batch` sequences of `context` tokens (every layer full)."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2
    return per_token * batch * context


def random_ids(model: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Random token ids: with one id everywhere every token of a MoE layer would choose the same
    experts, and a step would read k experts' weights however large the batch."""
    vocab = model[1].vocab_size if isinstance(model, tuple) else model.embed.shape[0]
    return torch.randint(0, vocab, shape, device=device)


def decode_step(model: Any, *, batch: int, context: int,
                device: torch.device) -> Callable[[], object]:
    """One decode step of `batch` sequences at position `context - 1` over a static KV cache of
    `context` tokens."""
    ids = random_ids(model, (batch, 1), device)
    position = torch.tensor([context - 1], device=device)
    if isinstance(model, tuple):  # transformers: its StaticCache
        from transformers import StaticCache

        hf_model, config = model
        cache = StaticCache(config=config, max_cache_len=context)
        return lambda: hf_model(input_ids=ids, past_key_values=cache, cache_position=position,
                                use_cache=True).logits
    kv = model.kv_cache(batch, context)
    return lambda: model.forward(ids, position, kv)


@torch.inference_mode()
def decode_step_ms(step: Callable[[], object], device: torch.device) -> tuple[float, str | None]:
    """Milliseconds of `step` replayed as a CUDA graph; (ms, why it ran eagerly, or None)."""
    step()  # caches allocate and functions compile on first use: before any capture
    if device.type != "cuda":
        return timed_ms(step, repeats=3), "no CUDA device"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return timed_ms(graph.replay), None
    except RuntimeError as exc:  # e.g. an op with data-dependent shapes
        torch.cuda.synchronize()
        return timed_ms(step), f"{type(exc).__name__}: {str(exc)[:200]}"


@torch.inference_mode()
def prefill_ms(model: Any, *, tokens: int, device: torch.device) -> float:
    """One forward pass over a `tokens`-token prompt (no cache kept)."""
    ids = random_ids(model, (1, tokens), device)
    if isinstance(model, tuple):
        hf_model = model[0]
        return timed_ms(lambda: hf_model(input_ids=ids, use_cache=False, logits_to_keep=1),
                        repeats=5)
    positions = torch.arange(tokens, device=device)
    return timed_ms(lambda: model.forward(ids, positions, None), repeats=5)


def measure(config_file: Path, *, impl: str, fp8: bool, batches: list[int],
            contexts: list[int], prompts: list[int], device: torch.device,
            say: Callable[[str], None]) -> dict[str, Any]:
    config = json.loads(config_file.read_text())
    model, meta = build_model(config_file, device, impl=impl, fp8=fp8)
    say(f"{meta['_model']} ({impl}, {'fp8' if fp8 else 'bf16'} weights): "
        f"{meta['weight_bytes'] / 1e9:.1f} GB")
    decode, prefill = [], []
    for context in contexts:
        for batch in batches:
            need = kv_bytes(config, batch, context)
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 40
            if need > 0.8 * free:
                decode.append({"batch": batch, "context": context, "skipped":
                               f"KV cache {need / 1e9:.1f} GB > 80% of {free / 1e9:.1f} GB free"})
                continue
            try:
                ms, eager_why = decode_step_ms(
                    decode_step(model, batch=batch, context=context, device=device), device)
            except Exception as exc:  # one cell failing must not lose the rest
                decode.append({"batch": batch, "context": context,
                               "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"})
                say(f"  decode b={batch:<4} ctx={context:<6} failed: {str(exc)[:120]}")
                continue
            decode.append({"batch": batch, "context": context, "step_ms": ms,
                           "cuda_graph": eager_why is None, "eager_why": eager_why,
                           "kv_bytes": need})
            say(f"  decode b={batch:<4} ctx={context:<6} {ms:8.3f} ms"
                f"{'' if eager_why is None else f' (eager: {eager_why[:80]})'}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for tokens in prompts:
        ms = prefill_ms(model, tokens=tokens, device=device)
        prefill.append({"tokens": tokens, "ms": ms})
        say(f"  prefill {tokens:<6} {ms:8.2f} ms")
    del model
    return {**meta, "config": config_file.name, "impl": impl,
            "weights": "fp8" if fp8 else "bf16", "decode": decode, "prefill": prefill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all",
                        help="config names in benchmarks/gpu_configs (comma-separated) or all")
    parser.add_argument("--fp8-models", default="Qwen--Qwen3-8B",
                        help="of those, which to time again with FP8 weights (FP8 cards only)")
    parser.add_argument("--impl", choices=["engine", "transformers"], default="engine",
                        help="engine: gpu_decoder.py's fused decoder; transformers: its models")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--contexts", default="1024,8192")
    parser.add_argument("--prompts", default="1024,8192")
    parser.add_argument("--configs", type=Path, default=CONFIGS)
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (sorted(p.stem for p in args.configs.glob("*.json")) if args.models == "all"
             else args.models.split(","))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    card = card_figures(device)
    print(f"{gpu}: " + ", ".join(f"{key} {value:,.0f}" for key, value in card.items()),
          flush=True)
    runs = [(name, False) for name in names]
    if "fp8_matmul_tflops" in card and args.impl == "engine":
        runs += [(name, True) for name in args.fp8_models.split(",") if name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", gpu).strip("-")
    for name, fp8 in runs:
        result = {"gpu": gpu, "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                  "card": card,
                  **measure(args.configs / f"{name}.json", impl=args.impl, fp8=fp8,
                            batches=_ints(args.batches), contexts=_ints(args.contexts),
                            prompts=_ints(args.prompts), device=device,
                            say=lambda line: print(line, flush=True))}
        weights = "fp8" if fp8 else "bf16"
        # written as each model finishes, so a run cut short keeps what it measured
        (args.out / f"{slug}--{name}--{args.impl}-{weights}.json").write_text(
            json.dumps(result, indent=1))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _ints(text: str) -> list[int]:
    return [int(word) for word in text.split(",")]


if __name__ == "__main__":
    main()
