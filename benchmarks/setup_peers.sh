#!/usr/bin/env bash
# Peer benchmark tools in a side virtualenv (benchmarks/peers/.venv, gitignored), never in .venv:
# their pins clash with vLLM's. `vllm bench serve` needs nothing: it ships with the local vLLM.
#
#   benchmarks/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")"
python3.11 -m venv peers/.venv
# torch pinned to the CPU build: a bare resolve pulls a CUDA torch 2.14 (venv 6 GB instead of
# 1.5 GB; checked 2026-11-27) that guidellm never uses on this machine
peers/.venv/bin/pip install --quiet --disable-pip-version-check guidellm==0.8.1 torch==2.13.0
peers/.venv/bin/guidellm --version
