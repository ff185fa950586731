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
from typing import Literal

from modal_llm_serving.local.argv import flag_name, options

__all__ = [
    "CPU_ENVIRONMENT",
    "CPU_TRANSFORMS",
    "Change",
    "CpuCommand",
    "CpuEnvironment",
    "CpuTransform",
    "for_local_cpu",
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
    # A clustered recipe's command (rank 0's) spans several hosts; here it runs whole on one.
    CpuTransform("pipeline_parallel_size", "drop",
                 "one CPU device: the hosts a clustered recipe splits its layers over are absent"),
    CpuTransform("nnodes", "drop", "one machine: rank 0 would wait for the other hosts forever"),
    CpuTransform("node_rank", "drop", "one machine, so no rank among hosts"),
    CpuTransform("master_addr", "drop", "the cluster's rendezvous address: no cluster here"),
    CpuTransform("master_port", "drop", "the cluster's rendezvous port: no cluster here"),
    CpuTransform("enable_expert_parallel", "drop",
                 "experts split over a host's GPUs; one CPU device holds them all"),
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
                   "the child); read by our launcher (local/launcher.py). Measured on a 2-core "
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


def for_local_cpu(argv: list[str]) -> CpuCommand:
    """`argv` (a `vllm serve` command) with every CPU transform applied; the rest untouched.

    A dropped flag goes with its value (`--flag V` or `--flag=V`); `--no-` forms of a dropped
    boolean go too. Flags are recognised by vLLM's dashed names only.
    """
    by_flag = {t.flag: t for t in CPU_TRANSFORMS if t.action == "drop"}
    by_flag |= {"--no-" + t.flag[2:]: t for t in CPU_TRANSFORMS if t.action == "drop"}
    out: list[str] = []
    changes: list[Change] = []
    copied = 0  # argv[:copied] is dealt with
    for option in options(argv):
        transform = by_flag.get(option.flag)
        if transform is None:
            continue
        out += argv[copied:option.start]
        copied = option.end
        changes.append(Change(transform.setting,
                              option.value if option.value is not None else "on", None,
                              transform.reason))
    out += argv[copied:]
    for transform in CPU_TRANSFORMS:
        if transform.action == "set" and transform.flag not in out:
            out.append(transform.flag)
            changes.append(Change(transform.setting, None, "", transform.reason))
    return CpuCommand(argv=out, changes=changes)
