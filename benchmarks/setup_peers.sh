#!/usr/bin/env bash
# Peer benchmark tools in a side virtualenv (benchmarks/peers/.venv, gitignored), never in .venv:
# their pins clash with vLLM's. `vllm bench serve` needs nothing: it ships with the local vLLM.
#
#   benchmarks/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")"
python3.11 -m venv peers/.venv
# torch pinned to the CPU build: a bare resolve pulls a multi-GB CUDA wheel guidellm never uses
peers/.venv/bin/pip install --quiet --disable-pip-version-check guidellm==0.8.1 torch==2.13.0
peers/.venv/bin/guidellm --version
