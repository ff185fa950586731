"""Shared fixtures: an isolated cache, a tiny model built here, and ONE real vLLM for the session.

Every test that needs a server uses `tiny_server` (real vLLM, `--enforce-eager`, the tiny random
model, an API key required); starting vLLM costs ~25 s on 2 cores, so it starts once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modal_llm_serving.local.serve import (
    LocalCommand,
    LocalServer,
    engine_build,
    local_command,
    start_server,
)
from tests.ports import REFUSING_URL
from tests.tiny_model import build_tiny_model

TINY_API_KEY = "test-key-not-a-secret"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the toolkit's cache (converted models, logs) at a folder of this test session, and
    our Hub look-ups at a loopback port where nothing listens: model facts come from the catalog
    (the unreachable Hub's fallback) unless a test serves a Hub itself (tests/hub_server.py)."""
    cache = tmp_path_factory.mktemp("mls-cache")
    saved = os.environ.get("MLS_CACHE_DIR")
    os.environ["MLS_CACHE_DIR"] = str(cache)
    os.environ["HF_ENDPOINT"] = REFUSING_URL  # a port we hold unlistened: refused at once
    os.environ.pop("MLS_API_KEY", None)
    yield cache
    if saved is None:
        os.environ.pop("MLS_CACHE_DIR", None)
    else:
        os.environ["MLS_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def no_secrets_from_other_tests() -> Iterator[None]:
    """Each test starts with an empty secret registry: a secret one test registers (a random
    short key, say) must not mask another test's output. Commands clear it on each run; library
    calls in tests do not."""
    from modal_llm_serving.redact import forget_secrets

    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 chat checkpoint (head_dim 32, vocab ~2k), built in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


def tiny_local_command(model_path: Path, *, recipe: str = "vllm_online") -> LocalCommand:
    """A recipe's own engine command serving the tiny model here, exactly as `mls local serve
    --recipe` builds it: the recipe's keyword overrides (model, served id, host, port), then the
    documented CPU transforms and the context fitted to the tiny model's 4096 positions. So the
    session server proves the recipe's command."""
    from modal_llm_serving.recipes.files import recipe_path

    return local_command(recipe_path(recipe), model=str(model_path), served_model_name="tiny",
                         build=engine_build())


@pytest.fixture(scope="session")
def tiny_server(tiny_model_path: Path, isolated_cache: Path) -> Iterator[LocalServer]:
    """One real vLLM serving the tiny model for the whole session; /v1 needs TINY_API_KEY.

    Prefix caching is vLLM's default for this model (the recipe leaves it on), and the recipe
    asks for cached prompt tokens in each usage (--enable-prompt-tokens-details), so the bench's
    cached-token count is tested on real vLLM."""
    if engine_build() is None:
        pytest.fail("vLLM is not installed: run `make test`, which installs it")
    command = tiny_local_command(tiny_model_path)
    with start_server(command, api_key=TINY_API_KEY, kv_cache_gib=1) as server:
        server.wait_ready(timeout=300)
        yield server


def pytest_collection_finish(session: pytest.Session) -> None:
    """Work that mostly waits on the network starts as soon as the tests are known, so it runs
    beside the others instead of after them: each selected test module that defines
    `start_early(folder)` (the Python-version resolves, the one-line install) and has an
    `index` test selected gets it called now, and its `stop_early()` when the session ends, so
    nothing it started outlives it."""
    factory: pytest.TempPathFactory = session.config._tmp_path_factory  # type: ignore
    modules = {item.module for item in session.items
               if isinstance(item, pytest.Function) and hasattr(item.module, "start_early")
               and item.get_closest_marker("index")}  # only what the network tests need
    for module in sorted(modules, key=lambda m: m.__name__):
        module.start_early(factory.mktemp("early"))
        session.config.add_cleanup(module.stop_early)
