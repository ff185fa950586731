"""Shared fixtures: an isolated cache, a tiny model built here, and ONE real vLLM for the session.

Every test that needs a server uses `tiny_server` (real vLLM, `--enforce-eager`, the tiny random
model, an API key required); starting vLLM costs ~25 s on 2 cores, so it starts once.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from modal_llm_serving.local.serve import (
    LocalCommand,
    LocalServer,
    engine_build,
    local_command,
    start_server,
)
from tests.machine import machine_share
from tests.ports import REFUSING_URL
from tests.tiny_model import build_tiny_model

TINY_API_KEY = "test-key-not-a-secret"

# No property test is timed: hypothesis's 200 ms per example is a wall-clock bound a loaded
# 2-core machine breaks (a first example that imports numpy took 302 ms), and a slow example is
# not a wrong one. Loaded before any test module builds its own settings from it.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


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


# The suite runs on several worker processes (pytest-xdist, `make test`), grouped so that:
# - the tests that use the session server (`tiny_server`) are on one worker, so it starts once;
#   the other vLLM tests (each starts an engine of its own: `mls local serve`, the throughput
#   recipe's `LLM`) on one other, so at most two engines share the machine at a time;
# - the index tests are on one worker, which starts their long network work at once;
# - the modules that read commands with the engines' own parsers (importing vLLM costs ~9 s of
#   CPU, SGLang ~5 s, in each process that does) are on one worker, so they are imported once;
# - the rest go by module, so a module's fixtures (a mock server, a recipe import) start once.
# Those four groups go first: they are the longest, and the others fill in around them, the
# modules with the most tests first, so that what is left at the end is small enough to even
# out the workers (in the same order, the suite's tail was one worker's module for a minute).
# (xdist's own `--dist loadgroup` cannot carry this: it renames a test's node id, which pytest 9
# no longer lets a plugin do. So the workers, which know each test's marks and fixtures, write
# the groups into the run's folder, and the controller's scheduler reads them.)
SESSION_ENGINE_GROUP = "session-engine"
PARSERS_GROUP = "engine-parsers"
PARSER_MODULES = {"tests/skill/test_recipes.py", "tests/skill/test_multi_node.py",
                  "tests/test_render.py", "tests/test_cluster_plan.py", "tests/test_tune.py",
                  "tests/test_engine_args.py", "tests/test_model_facts.py"}
ENGINE_GROUP = "engine"
INDEX_GROUP = "index"
RUN_FOLDER = "MLS_TEST_RUN_FOLDER"  # set by the controller, inherited by its workers


def _group(item: pytest.Item) -> str:
    if "tiny_server" in getattr(item, "fixturenames", ()):
        return SESSION_ENGINE_GROUP
    if item.get_closest_marker("engine"):
        return ENGINE_GROUP
    if item.get_closest_marker("index"):
        return INDEX_GROUP
    module = item.nodeid.split("::", 1)[0]
    return PARSERS_GROUP if module in PARSER_MODULES else module


def _on_a_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _run_folder() -> Path | None:
    folder = os.environ.get(RUN_FOLDER)
    return Path(folder) if folder else None


def pytest_configure(config: pytest.Config) -> None:
    """The controller of a run on workers makes the folder they share (before it starts them,
    so they inherit its name) and removes it when the run is over."""
    if getattr(config.option, "numprocesses", None) and not _on_a_worker(config):
        folder = tempfile.mkdtemp(prefix="mls-test-run-")
        os.environ[RUN_FOLDER] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = {ENGINE_GROUP: 0, SESSION_ENGINE_GROUP: 1, INDEX_GROUP: 2, PARSERS_GROUP: 3}
    sizes = collections.Counter(_group(item) for item in items)

    def place(item: pytest.Item) -> tuple[int, int]:
        group = _group(item)
        return (first[group], 0) if group in first else (len(first), -sizes[group])

    items.sort(key=place)  # stable: a group's tests keep their order
    folder = _run_folder()
    if _on_a_worker(config) and folder is not None:  # every worker writes the same map
        groups = json.dumps({item.nodeid: _group(item) for item in items})
        worker = config.workerinput["workerid"]  # type: ignore[attr-defined]
        (folder / f"groups-{worker}.json").write_text(groups, encoding="utf-8")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole groups to a worker, in the order collected (engine, index, then each module)."""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") not in ("load", "loadscope", "loadfile", "loadgroup"):
        return None  # `--dist each`, `worksteal`: as asked
    folder = _run_folder()
    assert folder is not None, "pytest_configure sets the run folder before the workers start"
    groups: dict[str, str] = {}

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not groups:  # read when scheduling starts: every worker has collected by then
                path = next(folder.glob("groups-*.json"))
                groups.update(json.loads(path.read_text(encoding="utf-8")))
            return groups[nodeid]

    config.option.loadscopereorder = False  # keep the collected order: the longest first
    return GroupScheduling(config, log)


# A test marked `alone` runs with nothing beside it: tests/machine.py.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Around a test's whole run, its fixtures' set-up and tear-down included (a session
    server's start is work the machine does too)."""
    folder = _run_folder() if _on_a_worker(item.config) else None
    with machine_share(folder, alone=item.get_closest_marker("alone") is not None):
        return (yield)


def _start_early(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Work that mostly waits on the network starts as soon as it can, so it runs beside the
    other tests instead of before its own: each selected test module that defines
    `start_early(folder)` (the Python-version resolves, the one-line install) and has an
    `index` test selected gets it called once, and its `stop_early()` when the session ends, so
    nothing it started outlives it."""
    if config.stash.get(_EARLY_STARTED, False):
        return
    config.stash[_EARLY_STARTED] = True
    modules = {item.module for item in items
               if isinstance(item, pytest.Function) and hasattr(item.module, "start_early")
               and item.get_closest_marker("index")}  # only what the network tests need
    for module in sorted(modules, key=lambda m: m.__name__):
        folder = Path(tempfile.mkdtemp(prefix="mls-early-"))
        config.add_cleanup(lambda folder=folder: shutil.rmtree(folder, ignore_errors=True))
        module.start_early(folder)
        config.add_cleanup(module.stop_early)  # runs first: stopped, then its folder removed


_EARLY_STARTED = pytest.StashKey[bool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """One process: the early work starts as soon as the tests are known. On workers, every
    worker collects every test but only one runs the index group: that one starts it when its
    first index test comes up (the group is the first unit it is sent)."""
    if not _on_a_worker(session.config):
        _start_early(session.config, session.items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _on_a_worker(item.config) and item.get_closest_marker("index"):
        _start_early(item.config, item.session.items)
