"""What changes when a recipe's vLLM command runs on a CPU: the documented transforms, in one table.

A recipe builds its own engine command (`engine_command()` for the servers, `llm_kwargs()` for the
batch worker); `mls local serve` reads it from the recipe and, on vLLM's CPU build, passes it
through `for_local_cpu`. Each `CpuTransform` names one vLLM setting, what happens to it, and why;
nothing else about the command changes. The README lists the same table.

>>> local = for_local_cpu(["vllm", "serve", "m", "--tensor-parallel-size", "2"])
>>> local.argv
['vllm', 'serve', 'm', '--enforce-eager']
>>> [change.setting for change in local.changes]
['tensor_parallel_size', 'enforce_eager']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from modal_llm_serving.errors import RecipeError

__all__ = [
    "CPU_ENVIRONMENT",
    "CPU_TRANSFORMS",
    "Change",
    "CpuCommand",
    "CpuEnvironment",
    "CpuTransform",
    "engine_of",
    "flag_name",
    "for_local_cpu",
    "llm_kwargs_for_local_cpu",
]


@dataclasses.dataclass(frozen=True)
class CpuTransform:
    """One setting of vLLM that a CPU machine cannot run as a GPU recipe states it."""

    setting: str  # vLLM's name: the `LLM(...)` keyword, and the flag with dashes
    action: Literal["drop", "set"]
    reason: str

    @property
    def flag(self) -> str:
        return flag_name(self.setting)


CPU_TRANSFORMS: tuple[CpuTransform, ...] = (
    CpuTransform("tensor_parallel_size", "drop",
                 "one CPU device: the GPUs a recipe splits the model over are not here"),
    CpuTransform("gpu_memory_utilization", "drop",
                 "no GPU memory to share out: the CPU build sizes its KV cache from "
                 "VLLM_CPU_KVCACHE_SPACE (`--kv-cache-gib`)"),
    CpuTransform("kv_cache_memory_bytes", "drop",
                 "a fixed GPU KV cache size; here VLLM_CPU_KVCACHE_SPACE (`--kv-cache-gib`) "
                 "sets it"),
    CpuTransform("kv_cache_dtype", "drop",
                 "fp8 KV caches need GPU kernels; the CPU build keeps KV in the model's dtype"),
    CpuTransform("enable_sleep_mode", "drop",
                 "sleep mode moves weights out of CUDA memory pools; the CPU build refuses it"),
    CpuTransform("dtype", "drop",
                 "the CPU build picks the dtype the processor runs (bf16 only with AVX-512 BF16 "
                 "or AMX)"),
    CpuTransform("compilation_config", "drop",
                 "CUDA-graph capture sizes and compile settings for a GPU; eager mode below"),
    CpuTransform("enforce_eager", "set",
                 "no CUDA graphs to capture, and torch.compile on a CPU adds a minute to every "
                 "start: eager mode starts in seconds"),
)


@dataclasses.dataclass(frozen=True)
class CpuEnvironment:
    """An environment variable the CPU build is started with (the command itself is unchanged);
    one already set in the caller's environment wins."""

    variable: str
    value: str
    reason: str


CPU_ENVIRONMENT: tuple[CpuEnvironment, ...] = (
    CpuEnvironment("VLLM_ENABLE_V1_MULTIPROCESSING", "0",
                   "two processes instead of three: the single CPU worker runs inside the "
                   "engine core (vLLM otherwise forces its multiprocess executor on CPUs), so "
                   "torch and vLLM are imported twice, not three times, and no worker process "
                   "is spawned (measured on a 2-core AMD EPYC, 3 rounds: ready in 22 s instead of "
                   "34 s, +10 % output tok/s at 1 stream and +7 % at 4, 430 MiB less memory; "
                   "docs/PERFORMANCE.md)"),
    CpuEnvironment("MLS_VLLM_FORK_ENGINE_CORE", "1",
                   "the engine core is forked from the API server, not spawned: it starts with "
                   "torch and vLLM already imported instead of importing them again (vLLM's CPU "
                   "platform forces spawn, against OpenMP threads a process could fork; the API "
                   "server has started none when it forks, and the worker binds its threads in "
                   "the child); read by our launcher (vllm_launcher.py). Measured on a 2-core "
                   "AMD EPYC, 2 rounds: ready in 12.7 s instead of 17.9 s, the same tok/s, "
                   "200 MiB less memory; docs/PERFORMANCE.md"),
    CpuEnvironment("MLS_VLLM_INSPECT_MODEL_IN_PROCESS", "1",
                   "the first start with a model inspects its class in the API server, not in "
                   "a fresh Python (vLLM's guard against initializing CUDA in its server; no "
                   "CUDA here), and the forked engine core inherits the imported module; read "
                   "by our launcher. Measured on a 2-core AMD EPYC, 2 rounds with vLLM's "
                   "model-info cache emptied: ready in 13.1 s instead of 22.6 s; later starts "
                   "use that cache either way"),
)


def flag_name(setting: str) -> str:
    """vLLM's flag for an `LLM(...)` keyword: `max_model_len` -> `--max-model-len`."""
    return "--" + setting.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Change:
    """One difference between a recipe's command and the command run here."""

    setting: str
    before: str | None  # the recipe's value (None: not in the recipe's command)
    after: str | None  # the value run here (None: dropped)
    reason: str

    def describe(self) -> str:
        what = flag_name(self.setting) if not self.setting.startswith("model") else self.setting
        if self.after is None:
            change = f"dropped (was {self.before})" if self.before not in (None, "") else "dropped"
        elif self.before is None:
            change = f"added {self.after}".rstrip()
        else:
            change = f"{self.before} -> {self.after}"
        return f"{what} {change}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class CpuCommand:
    """A vLLM argv as this machine runs it, and each change from the recipe's argv."""

    argv: list[str]
    changes: list[Change]


def engine_of(argv: list[str]) -> Literal["vllm", "sglang"]:
    """Which engine an argv starts: `vllm serve ...` or `python -m sglang.launch_server ...`."""
    if argv[:2] == ["vllm", "serve"]:
        return "vllm"
    if len(argv) >= 3 and argv[1:3] == ["-m", "sglang.launch_server"]:
        return "sglang"
    raise RecipeError(f"the engine command starts {' '.join(argv[:3])!r}; expected `vllm serve "
                      "MODEL ...` or `python -m sglang.launch_server ...`")


def _split_flag(token: str) -> tuple[str, str | None]:
    name, equals, value = token.partition("=")
    return name, (value if equals else None)


def for_local_cpu(argv: list[str]) -> CpuCommand:
    """`argv` (a `vllm serve` command) with every CPU transform applied; the rest untouched.

    A dropped flag goes with its value (`--flag V` or `--flag=V`); `--no-` forms of a dropped
    boolean go too. Flags are recognised by vLLM's dashed names only.
    """
    by_flag = {t.flag: t for t in CPU_TRANSFORMS if t.action == "drop"}
    by_flag |= {"--no-" + t.flag[2:]: t for t in CPU_TRANSFORMS if t.action == "drop"}
    out: list[str] = []
    changes: list[Change] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, inline = _split_flag(token)
        transform = by_flag.get(name) if token.startswith("--") else None
        if transform is None:
            out.append(token)
            index += 1
            continue
        value = inline
        takes_value = (inline is None and index + 1 < len(argv)
                       and not argv[index + 1].startswith("--"))
        if takes_value:
            value = argv[index + 1]
        index += 2 if takes_value else 1
        changes.append(Change(transform.setting, value if value is not None else "on", None,
                              transform.reason))
    for transform in CPU_TRANSFORMS:
        if transform.action == "set" and transform.flag not in out:
            out.append(transform.flag)
            changes.append(Change(transform.setting, None, "", transform.reason))
    return CpuCommand(argv=out, changes=changes)


def llm_kwargs_for_local_cpu(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The batch recipe's `LLM(**kwargs)` with the same transforms as `for_local_cpu`."""
    out = {key: value for key, value in kwargs.items()
           if not any(t.action == "drop" and t.setting == key for t in CPU_TRANSFORMS)}
    out |= {t.setting: True for t in CPU_TRANSFORMS if t.action == "set"}
    return out
