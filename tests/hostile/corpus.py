"""The hostile corpus: a hostile machine and the user's own odd files, one row each.

Each `Case` is one `mls` invocation run as its own process (`test_corpus.py`) and the exit
code the README documents for it. The runner asserts, for every row: that code (never 3), no
traceback, and on failure exactly one line on stderr, "Error: ..." (`progress=True`: lines
before it are allowed, e.g. a benchmark's "prompts: ..." line; `report=True`: the result is a
report on stdout, as `mls doctor`'s failed checks).

To add a case: append a `Case(...)`. `argv` and `env` values may use {tmp} (a fresh folder that
is also the working directory, HOME and MLS_CACHE_DIR's parent), {mock} (the URL of a mock
OpenAI server, benchmarks/mockserver/; set `mock=True`), {closed} (a URL where nothing listens)
and {rev} (a valid commit hash). `setup(tmp)` makes the files the case needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["CASES", "Case"]

REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
RECIPE = (Path(__file__).resolve().parents[2] / "skills" / "modal-llm-serving" / "scripts"
          / "vllm_online.py")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int  # the documented exit code
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    mock: bool = False
    progress: bool = False  # stderr may show progress lines before its one error line
    report: bool = False  # a result on stdout (exit 1: findings), no error line on stderr
    file_size_limit: int | None = None  # RLIMIT_FSIZE in the child: a disk that fills up
    timeout_s: float = 120.0


# --- setups ----------------------------------------------------------------------------------

def a_file(name: str, data: bytes = b"") -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_bytes(data)
    return make


def a_fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "fifo")


def a_model(tmp: Path) -> None:
    """A local checkpoint folder (its config.json is all `local command` reads)."""
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100, '
        '"intermediate_size": 128, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}')


def a_recipe(tail: str) -> Callable[[Path], None]:
    """The online recipe with `tail` appended (a changed engine_command, an exit, a hang)."""
    def make(tmp: Path) -> None:
        a_model(tmp)
        (tmp / "app.py").write_text(RECIPE.read_text() + "\n" + tail + "\n")
    return make


def programs(**outputs: bytes) -> Callable[[Path], None]:
    """Programs named like the keys in {tmp}/bin (put first on PATH), each printing its bytes."""
    def make(tmp: Path) -> None:
        (tmp / "bin").mkdir()
        for name, data in outputs.items():
            escaped = "".join(f"\\{byte:03o}" for byte in data)
            path = tmp / "bin" / name.replace("_", "-")
            path.write_text(f"#!/bin/sh\nprintf '{escaped}'\nprintf '\\377\\n' >&2\n")
            path.chmod(0o755)
    return make


NOT_UTF8 = b"modal \xff\xfe 1.6.4\n"
FAKE_PATH = {"PATH": "{tmp}/bin:" + os.environ.get("PATH", "")}
LOCAL = ("local", "command", "--no-check", "--model", "{tmp}/model")

# --- the corpus ------------------------------------------------------------------------------

CASES: list[Case] = [
    # a full disk, a folder nobody may write
    Case("disk-full-while-benchmarking", ("bench", "run", "{mock}", "-c", "2", "-n", "200",
                                          "--output-len", "4", "--input-len", "4", "--no-report",
                                          "--out", "{tmp}/out"),
         2, mock=True, progress=True, file_size_limit=2000),
    Case("results-folder-not-writable", ("bench", "run", "{closed}", "--model", "m", "--out",
                                         "/sys/mls-hostile-corpus"), 2),
    Case("results-folder-is-a-file", ("bench", "run", "{closed}", "--model", "m", "--out",
                                      "{tmp}/f"), 2, setup=a_file("f")),
    # the cache setting names a file
    Case("cache-dir-is-a-file-plan", ("plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision",
                                      "{rev}"), 2, env={"MLS_CACHE_DIR": "{tmp}/f"},
         setup=a_file("f")),
    Case("cache-dir-is-a-file-local", ("local", "command", "--no-check"), 2,  # embedded model
         env={"MLS_CACHE_DIR": "/dev/null"}),
    # input files that are not text files
    Case("plan-dev-zero", ("plan", "/dev/zero"), 2),
    Case("plan-fifo", ("plan", "{tmp}/fifo"), 2, setup=a_fifo),
    Case("plan-huge-file", ("plan", "{tmp}/w.toml"), 2,
         setup=a_file("w.toml", b"# " + b"x" * (3 * 2**20))),
    Case("plan-not-utf8", ("plan", "{tmp}/w.toml"), 2, setup=a_file("w.toml", b"\xff\xfe=1")),
    Case("gpu-catalog-dev-zero", ("plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision", "{rev}",
                                  "--gpu-catalog", "/dev/zero"), 2),
    # (no server answers /tokenize at {closed}: prompts are counted in words, then read)
    Case("dataset-dev-zero", ("bench", "run", "{closed}", "--model", "m", "--dataset",
                              "/dev/zero", "--out", "{tmp}/out"), 2),
    Case("dataset-not-json", ("bench", "run", "{closed}", "--model", "m", "--dataset",
                              "{tmp}/d.jsonl", "--out", "{tmp}/out"), 2,
         setup=a_file("d.jsonl", b"{not json\n")),
    Case("dataset-wrong-shape", ("bench", "run", "{closed}", "--model", "m", "--dataset",
                                 "{tmp}/d.jsonl", "--out", "{tmp}/out"), 2,
         setup=a_file("d.jsonl", b'{"no_prompt": 1}\n')),
    Case("dataset-sharegpt-not-a-list", ("bench", "run", "{closed}", "--model", "m",
                                         "--dataset", "{tmp}/d.json", "--out", "{tmp}/out"), 2,
         setup=a_file("d.json", b'{"conversations": 1}')),
    # options with values that cannot work
    Case("host-mistyped", (*LOCAL, "--host", "not a host"), 2, setup=a_model),
    Case("host-of-another-machine", (*LOCAL, "--host", "192.0.2.1", "--port", "8000"), 2,
         setup=a_model),
    Case("ref-with-newline", ("revision", "Qwen/Qwen3-8B", "--ref", "main\nx"), 2),
    Case("rate-too-small", ("bench", "run", "{closed}", "--model", "m", "--rate", "1e-300"), 2),
    Case("rate-too-large", ("bench", "run", "{closed}", "--model", "m", "--rate", "1e300"), 2),
    Case("hf-endpoint-not-a-url", ("revision", "Qwen/Qwen3-8B"), 2,
         env={"HF_ENDPOINT": "not a url"}),
    Case("hf-endpoint-not-http-plan", ("plan", "--model", "Qwen/Qwen3-8B-FP8", "--revision",
                                       "{rev}"), 2, env={"HF_ENDPOINT": "ftp://hub"}),
    Case("check-folder-without-apps", ("check", "{tmp}"), 2, setup=a_file("notes.txt")),
    Case("tune-app-fifo", ("tune", "{tmp}/fifo", "--from", "{tmp}", "--slo", "ttft:p95:1s"), 2,
         setup=a_fifo, timeout_s=30),
    Case("tune-from-a-summary-without-its-level", ("tune", str(RECIPE), "--from", "{tmp}",
                                                   "--slo", "ttft:p95:1s"), 2,
         setup=a_file("summary.json", b'{"completed": 1, "failed": 0, "duration": 1, '
                      b'"request_throughput": 1, "output_throughput": 1, '
                      b'"total_token_throughput": 1, "achieved_concurrency": 1}')),
    # recipes that do not keep the documented contract
    Case("recipe-engine-command-without-defaults", (*LOCAL, "--recipe", "{tmp}/app.py"), 1,
         setup=a_recipe("def engine_command(*, model, revision, served_model_name, host, "
                        "port):\n    return ['vllm', 'serve', model]")),
    Case("recipe-engine-command-raises", (*LOCAL, "--recipe", "{tmp}/app.py"), 1,
         setup=a_recipe("def engine_command(**overrides):\n    raise ValueError('boom')")),
    Case("recipe-exits-0-at-import", (*LOCAL, "--recipe", "{tmp}/app.py"), 1,
         setup=a_recipe("raise SystemExit(0)")),
    Case("recipe-hangs-at-import", (*LOCAL, "--recipe", "{tmp}/app.py", "--import-timeout",
                                    "3"), 1, setup=a_recipe("import time\ntime.sleep(600)")),
    # programs we run that answer bytes that are not UTF-8
    Case("modal-and-nvidia-smi-not-utf8", ("doctor",), 1, env=FAKE_PATH, report=True,
         setup=programs(modal=NOT_UTF8, nvidia_smi=b"NVIDIA H100 \xff, 81559 MiB\n")),
    Case("agent-cli-not-utf8", ("skill", "eval", "--agent", "claude", "--suite", "trigger",
                                "--limit", "1", "--out", "{tmp}/evals"), 0,
         env={**FAKE_PATH, "ANTHROPIC_API_KEY": "not-a-real-key"}, progress=True,
         setup=programs(claude=b'{"type": "\xff"}\n\xfe\n')),
]
