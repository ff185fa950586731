"""Run the throughput recipe's labelling and accounting on local vLLM `LLM` with a small model.

    python tests/skill/recipe_throughput_child.py MODEL_DIR RESULTS_DIR OUT_JSON N

A file of its own, run in a subprocess, because vLLM's engine core is a spawned child that
re-imports the main module: it must be an importable file with a `__main__` guard, and the
version shim must be imported first so the child gets it too. The recipe's own functions do the
work (`llm_kwargs`, `label_batch` with its structured-output choice, `write_results`,
`done_ids`, `summarize`, `report_lines`) on its first N sample records; only the model, the
CPU transforms and the CPU environment (the caller passes it) differ from what runs on Modal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from modal_llm_serving.local import launcher  # must come before vLLM


def main(model_dir: str, results_dir: str, out: str, n: int) -> None:
    from cpu_llm_kwargs import llm_kwargs_for_local_cpu  # this folder: see its docstring
    from vllm import LLM

    from modal_llm_serving.recipes.files import load_recipe, recipe_path

    launcher.apply_switches()  # the CPU environment's, as `mls local` starts vLLM

    recipe = load_recipe(recipe_path("qwen3_throughput"))
    kwargs = llm_kwargs_for_local_cpu(recipe.llm_kwargs(model=model_dir, revision=None))
    start = time.perf_counter()
    llm = LLM(**kwargs)
    init_seconds = time.perf_counter() - start
    records = recipe.sample_tickets[:n]
    warm, _ = recipe.label_batch(llm, records[:1])  # as the worker's warm-up
    stats, rows = recipe.label_batch(llm, records)
    written = recipe.write_results(Path(results_dir), rows)
    batch = {**stats, "init_seconds": init_seconds, "warmup_seconds": warm["seconds"],
             "worker": "local"}
    summary = recipe.summarize([stats], price_per_hour=recipe.GPU_PRICE_PER_HOUR,
                               n_gpu=recipe.N_GPU)
    report = recipe.report_lines([batch], wall_seconds=time.perf_counter() - start)
    Path(out).write_text(json.dumps({
        "records": records, "labels": recipe.LABELS, "stats": stats, "rows": rows,
        "written": written.read_text(), "done": sorted(recipe.done_ids(Path(results_dir))),
        "summary": summary, "report": report}))


if __name__ == "__main__":
    model_dir, results_dir, out, n = sys.argv[1:5]
    main(model_dir, results_dir, out, int(n))
