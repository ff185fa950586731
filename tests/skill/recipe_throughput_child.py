"""Run the throughput recipe's generation and accounting on local vLLM `LLM` with a tiny model.

    python tests/recipe_throughput_child.py MODEL_DIR OUT_JSON N INPUT_LEN OUTPUT_LEN

A file of its own, run in a subprocess, because vLLM's engine core is a spawned child that
re-imports the main module: it must be an importable file with a `__main__` guard, and the
version shim must be imported first so the child gets it too. The recipe's own functions do the
work (`llm_kwargs`, `make_prompts`, `run_batch`, `summarize`); only the model, the CPU
transforms and the workload size differ from what runs on Modal.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import modal_llm_serving.local.launcher  # noqa: F401  (must come before vLLM)


def main(model_dir: str, out: str, n: int, input_len: int, output_len: int) -> None:
    from cpu_llm_kwargs import llm_kwargs_for_local_cpu  # this folder: see its docstring
    from vllm import LLM

    from modal_llm_serving.recipes.files import load_recipe, recipe_path

    recipe = load_recipe(recipe_path("qwen3_throughput"))
    kwargs = llm_kwargs_for_local_cpu(recipe.llm_kwargs(model=model_dir, revision=None))
    start = time.perf_counter()
    llm = LLM(**kwargs)
    init_seconds = time.perf_counter() - start
    vocab = llm.get_tokenizer().vocab_size
    warmup = recipe.make_prompts(4, input_len=input_len, vocab_size=vocab, seed=-1)
    warm_stats, _ = recipe.run_batch(llm, warmup, output_len=output_len)
    prompts = recipe.make_prompts(n, input_len=input_len, vocab_size=vocab, seed=0)
    stats, outputs = recipe.run_batch(llm, prompts, output_len=output_len)
    per_request = [{"prompt_ids": len(output.prompt_token_ids),
                    "output_ids": sum(len(sample.token_ids) for sample in output.outputs)}
                   for output in outputs]
    batch = dataclasses.asdict(stats)
    summary = recipe.summarize([batch], price_per_hour=recipe.GPU_PRICE_PER_HOUR,
                               n_gpu=recipe.N_GPU)
    report = recipe.report_lines([{**batch, "init_seconds": init_seconds, "worker": "local",
                                   "warmup_seconds": warm_stats.seconds}],
                                 wall_seconds=time.perf_counter() - start)
    Path(out).write_text(json.dumps({
        "stats": batch, "per_request": per_request, "summary": summary, "report": report,
        "init_seconds": init_seconds, "warmup_requests": warm_stats.requests}))


if __name__ == "__main__":
    model_dir, out, n, input_len, output_len = sys.argv[1:6]
    main(model_dir, out, int(n), int(input_len), int(output_len))
