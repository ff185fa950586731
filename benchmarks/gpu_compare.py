"""The plan's predictions beside what `gpu_calibrate.py` measured on a real GPU, as ratios.

For each result file: the catalog's facts for the model and the card, the plan's own arithmetic
(`plan/sizing.py`: the decode step of `batch` sequences that attend `context` tokens each, and
the prefill floor of one prompt), the measured time, and measured / predicted.

    .venv/bin/python benchmarks/gpu_compare.py results/gpu/*.json      # a Markdown table

Decode is compared against the plan's full step (weights and KV over HBM, or FLOPs, whichever is
slower); a ratio above 1 means the real step is slower than the roofline floor.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from modal_llm_serving.facts.gpus import GPU, load_gpu_catalog
from modal_llm_serving.facts.models import model_facts
from modal_llm_serving.facts.workload import Workload
from modal_llm_serving.plan.sizing import Sizing, size


def catalog_gpu(name: str, gpus: dict[str, GPU]) -> GPU:
    """The catalog's card for a CUDA device name ("NVIDIA H100 80GB HBM3" -> H100)."""
    words = name.replace("NVIDIA", "").split()
    for key in sorted(gpus, key=len, reverse=True):
        if key in words or key.replace("-", " ") in name:
            return gpus[key]
    raise SystemExit(f"no catalog GPU for {name!r}")


def sizing_at(model: str, context: int, precision: str) -> Sizing:
    """The plan's sizing of `model` at `precision`, for sequences that attend `context` tokens."""
    facts = model_facts(model)
    w = Workload(model=model, revision="0" * 40, precision=precision, input_tokens=context,
                 output_tokens=1)
    return dataclasses.replace(size(w, facts), ctx_avg=context, seq_tokens=context)


def rows(result: dict[str, Any], gpus: dict[str, GPU]) -> list[dict[str, Any]]:
    gpu = catalog_gpu(result["gpu"], gpus)
    out = []
    for cell in result["decode"]:
        if "step_ms" not in cell:
            continue
        s = sizing_at(result["_model"], cell["context"], result.get("weights", "bf16"))
        predicted = s.step_seconds(gpu, 1, cell["batch"]) * 1e3
        out.append({"what": f"decode b={cell['batch']} ctx={cell['context']}",
                    "predicted_ms": predicted, "measured_ms": cell["step_ms"],
                    "graph": cell["cuda_graph"]})
    for cell in result["prefill"]:
        s = sizing_at(result["_model"], cell["tokens"], result.get("weights", "bf16"))
        predicted = s.prefill_seconds(gpu, 1, cell["tokens"]) * 1e3
        out.append({"what": f"prefill {cell['tokens']}", "predicted_ms": predicted,
                    "measured_ms": cell["ms"], "graph": None})
    return out


def card_line(card: dict[str, Any], gpu: GPU) -> str:
    """The card's measured figures beside its datasheet ones."""
    parts = [("HBM copy", card["hbm_copy_gb_s"], gpu.hbm_tb_s * 1e3, "GB/s"),
             ("bf16 matmul", card["bf16_matmul_tflops"], gpu.bf16_tflops, "TFLOP/s")]
    if "fp8_matmul_tflops" in card and gpu.fp8_tflops:
        parts.append(("fp8 matmul", card["fp8_matmul_tflops"], gpu.fp8_tflops, "TFLOP/s"))
    return "card: " + "; ".join(f"{name} {measured:,.0f} measured vs {sheet:,.0f} {unit} "
                                f"datasheet ({measured / sheet:.0%})"
                                for name, measured, sheet, unit in parts)


def main(paths: list[str]) -> None:
    gpus, _ = load_gpu_catalog()
    for path in paths:
        result = json.loads(Path(path).read_text())
        gpu = catalog_gpu(result["gpu"], gpus)
        card = result["card"]
        print(f"\n### {result['_model']}, {result.get('weights', 'bf16')} weights, on "
              f"{result['gpu']} ({result.get('impl', 'transformers')} decoder; "
              f"{result['date_utc']}, torch {result['torch']})\n")
        print(card_line(card, gpu) + "\n")
        print("| cell | predicted ms | measured ms | measured / predicted |")
        print("|---|---|---|---|")
        for row in rows(result, gpus):
            mark = "" if row["graph"] in (True, None) else " (eager)"
            print(f"| {row['what']}{mark} | {row['predicted_ms']:.3f} | {row['measured_ms']:.3f} "
                  f"| {row['measured_ms'] / row['predicted_ms']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
