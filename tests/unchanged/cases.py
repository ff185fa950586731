"""The outputs issue 20's refactor must leave byte-identical: plan text and JSON, `mls new` files,
every command's --help and the exit codes of a few refusals. Recorded before the change
(`python -m tests.unchanged.cases record`), compared by test_unchanged.py; dropped once it lands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

HERE = Path(__file__).parent
BEFORE = HERE / "before"
REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
R = f'revision = "{REV}"\n'

WORKLOADS = {
    "online": f'model = "Qwen/Qwen3-8B-FP8"\n{R}concurrency = 32\nttft_ms = 1000\ntpot_ms = 50\n'
              "budget_per_hour = 10\n",
    "cold-start": f'model = "Qwen/Qwen3-8B-FP8"\n{R}concurrency = 8\ncold_start_s = 30\n',
    "low-latency": f'model = "Qwen/Qwen3-8B-FP8"\n{R}goal = "low-latency"\nregion = "us-east"\n'
                   "concurrency = 4\ntpot_ms = 15\n",
    "throughput": f'model = "Qwen/Qwen3-8B-FP8"\n{R}offline = true\ninput_tokens = 1024\n'
                  "output_tokens = 128\nthroughput_tok_s = 20000\n",
    "server-low-latency": f'model = "Qwen/Qwen3-8B-FP8"\n{R}goal = "low-latency"\n'
                          'region = "eu"\nconcurrency = 4\nproxy_auth = true\n',
    "server-cold-start": f'model = "Qwen/Qwen3-8B"\n{R}concurrency = 8\ncold_start_s = 20\n'
                         "proxy_auth = true\n",
    "llama70b": f'model = "meta-llama/Llama-3.3-70B-Instruct"\n{R}concurrency = 64\n'
                "context_length = 32768\n",
    "moe-gptoss": f'model = "openai/gpt-oss-120b"\n{R}concurrency = 16\ntpot_ms = 30\n',
    "deepseek": f'model = "deepseek-ai/DeepSeek-V3"\n{R}precision = "fp8"\n',
    "mixtral-ll": f'model = "mistralai/Mixtral-8x7B-Instruct-v0.1"\n{R}goal = "low-latency"\n'
                  "concurrency = 2\n",
    "small-throughput": f'model = "Qwen/Qwen3-0.6B"\n{R}goal = "throughput"\n'
                        'kv_cache_dtype = "fp8"\n',
    "forced-gpu": f'model = "Qwen/Qwen3-32B"\n{R}gpu = "A100-80GB"\nmax_gpus = 2\n'
                  'served_model_name = "qwen"\nregion = "us-west"\n',
    "precision-int4": f'model = "Qwen/Qwen3-235B-A22B"\n{R}precision = "int4"\n',
    "refused-scope": f'model = "Qwen/Qwen3-8B"\n{R}task = "embeddings"\n',
    "refused-fit": f'model = "meta-llama/Llama-3.1-405B-Instruct"\n{R}max_gpus = 1\n',
    "bad-field": f'model = "Qwen/Qwen3-8B"\n{R}concurrency = -1\n',
}

HELP = [[], ["smoke"], ["local"], ["local", "serve"], ["local", "command"], ["doctor"],
        ["revision"], ["skill"], ["skill", "path"], ["skill", "install"], ["skill", "eval"],
        ["bench"], ["bench", "run"], ["bench", "report"], ["bench", "cold-start"], ["plan"],
        ["new"], ["check"], ["check", "--list"]]


def outputs(tmp: Path) -> dict[str, str]:
    """Every recorded output, by file name."""
    from modal_llm_serving.cli import cli

    runner = CliRunner()
    out: dict[str, str] = {}

    def run(name: str, args: list[str]) -> None:
        result = runner.invoke(cli, args, catch_exceptions=False)
        out[name] = f"exit {result.exit_code}\n{result.output}"

    for name, text in WORKLOADS.items():
        toml = tmp / f"{name}.toml"
        toml.write_text(text)
        run(f"plan-{name}.txt", ["plan", str(toml)])
        run(f"plan-{name}.json", ["plan", str(toml), "--json"])
        app = tmp / f"{name}_app.py"
        run(f"new-{name}.txt", ["new", str(toml), "-o", str(app)])
        if app.exists():
            out[f"new-{name}.py"] = app.read_text()
    for args in HELP:
        run("help-" + ("-".join(a.strip("-") for a in args) or "mls") + ".txt", [*args, "--help"]
            if args != ["check", "--list"] else args)
    return {k: v.replace(str(tmp), "TMP") for k, v in out.items()}


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    import tempfile

    BEFORE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for name, text in outputs(Path(d)).items():
            (BEFORE / name).write_text(text)
    print(json.dumps(sorted(p.name for p in BEFORE.iterdir())))
