"""Deploy each recipe on Modal, smoke-test and benchmark it, then stop it (GPU time is billed).

Skipped without Modal credentials (see conftest.py). Each server test: `modal deploy` the recipe,
find its URL through the SDK, `mls smoke` it (readiness wait included: the first start downloads
weights), a short `mls bench run`, and `modal app stop` in a `finally`. The throughput recipe runs
with `modal run` (ephemeral: nothing to stop) and its printed counts are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modal_llm_serving.recipes.files import load_recipe, recipe_path

BIN = Path(sys.executable).parent
DEPLOY_TIMEOUT = 60 * 60  # the first deploy builds images (SGLang also compiles DeepGEMM)


def run(argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


@pytest.fixture
def api_key() -> str:
    key = os.environ.get("MLS_API_KEY")
    if not key:
        pytest.skip("set MLS_API_KEY to the value stored in the Modal Secret 'mls-api-key'")
    return key


@pytest.fixture
def deployed() -> Iterator[Callable[[str], str]]:
    """Deploy a recipe; return its app name. Every app deployed here is stopped afterwards."""
    apps: list[str] = []

    def deploy(name: str) -> str:
        recipe = load_recipe(recipe_path(name))
        apps.append(recipe.app.name)
        run([str(BIN / "modal"), "deploy", str(recipe_path(name))], timeout=DEPLOY_TIMEOUT)
        return str(recipe.app.name)

    yield deploy
    for app_name in apps:
        subprocess.run([str(BIN / "modal"), "app", "stop", "--yes", app_name],
                       capture_output=True, timeout=300, check=False)


def smoke_and_bench(url: str, *, api_key: str, tmp_path: Path, extra: list[str]) -> None:
    env = {**os.environ, "MLS_API_KEY": api_key}
    smoke = subprocess.run([str(BIN / "mls"), "smoke", url, "--json", "--ready-timeout", "1800",
                            *extra], capture_output=True, text=True, timeout=2400, env=env)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr[-4000:]
    bench = subprocess.run([str(BIN / "mls"), "bench", "run", url, "-c", "1,4", "-n", "8",
                            "--input-len", "256", "--output-len", "64", "--out",
                            str(tmp_path / "bench"), "--json", *extra],
                           capture_output=True, text=True, timeout=1800, env=env)
    assert bench.returncode == 0, bench.stdout + bench.stderr[-4000:]
    assert (tmp_path / "bench").is_dir()


@pytest.mark.live
def test_online_recipe_live(deployed: Callable[[str], str], api_key: str,
                            tmp_path: Path) -> None:
    import modal

    app_name = deployed("vllm_online")
    url = modal.Function.from_name(app_name, "serve").get_web_url()
    smoke_and_bench(url, api_key=api_key, tmp_path=tmp_path, extra=[])
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{url}/invocations", json=body, timeout=60).status_code == 404


@pytest.mark.live
def test_cold_start_recipe_live(deployed: Callable[[str], str], api_key: str,
                                tmp_path: Path) -> None:
    import modal

    app_name = deployed("vllm_cold_start")
    recipe = load_recipe(recipe_path("vllm_cold_start"))
    url = modal.Cls.from_name(app_name, "VLLMColdStart")().serve.get_web_url()
    smoke_and_bench(url, api_key=api_key, tmp_path=tmp_path, extra=[])
    # the dev endpoints stay private through the deployed forwarder
    for path in ("/sleep?level=1", "/wake_up", "/collective_rpc"):
        assert httpx.post(f"{url}{path}", timeout=60).status_code == 404, path
    # one cold start after scale-to-zero, measured by the recipe's own entrypoint
    done = run([str(BIN / "modal"), "run", str(recipe_path("vllm_cold_start")), "--mode",
                "cold-start", "--rounds", "1"], timeout=recipe.SCALEDOWN_WINDOW + 1800)
    assert re.search(r"round 1/1: [0-9.]+ s from request to first token", done.stdout)


@pytest.mark.live
def test_low_latency_recipe_live(deployed: Callable[[str], str], api_key: str,
                                 tmp_path: Path) -> None:
    import modal

    app_name = deployed("sglang_low_latency")
    urls = modal.Cls.from_name(app_name, "SGLangServer")._experimental_get_flash_urls()
    assert urls, "no flash URL: is the proxy region valid?"
    smoke_and_bench(urls[0], api_key=api_key, tmp_path=tmp_path,
                    extra=["--header", "Modal-Session-ID: live-test"])


@pytest.mark.live
def test_throughput_recipe_live(tmp_path: Path) -> None:
    """Label the sample records from a local file, then run again: the rerun has nothing left."""
    import json
    import uuid

    recipe = load_recipe(recipe_path("qwen3_throughput"))
    data = tmp_path / f"live-{uuid.uuid4().hex[:8]}.jsonl"  # results of its own on the Volume
    data.write_text("".join(json.dumps(row) + "\n" for row in recipe.sample_tickets))
    argv = [str(BIN / "modal"), "run", str(recipe_path("qwen3_throughput")),
            "--input-file", str(data)]
    n = len(recipe.sample_tickets)
    first = run(argv, timeout=DEPLOY_TIMEOUT).stdout
    assert f"{n} records in inputs/{data.name}, 0 already labeled" in first, first[-3000:]
    counts = re.search(r"(\d+) requests, (\d+) input \+ (\d+) output tokens", first)
    assert counts and int(counts.group(1)) == n, first[-3000:]
    assert re.search(r"\$[0-9.]+ per million tokens \(input \+ output\)", first)
    again = run(argv, timeout=DEPLOY_TIMEOUT).stdout
    assert f"{n} already labeled in results/{data.stem}, 0 batches to run" in again, again


@pytest.mark.live
def test_server_recipe_live(deployed: Callable[[str], str], api_key: str,
                            tmp_path: Path) -> None:
    import modal

    if not (os.environ.get("MODAL_PROXY_TOKEN_ID") and os.environ.get("MODAL_PROXY_TOKEN_SECRET")):
        pytest.skip("set MODAL_PROXY_TOKEN_ID and MODAL_PROXY_TOKEN_SECRET (a Modal proxy token)")
    app_name = deployed("vllm_server")
    url = modal.Server.from_name(app_name, "VLLMServer").get_url()
    assert url, "the deployed Server has no URL"
    # mls reads the proxy token from the environment; without it the proxy refuses
    smoke_and_bench(url, api_key=api_key, tmp_path=tmp_path, extra=[])
    bare = httpx.get(f"{url}/health", timeout=60)
    assert bare.status_code in (401, 403), "proxy auth must be on"


@pytest.mark.live
def test_multi_node_recipe_live(deployed: Callable[[str], str], api_key: str,
                                tmp_path: Path) -> None:
    """Two clustered `H100:8` containers (16 GPUs) and a first build that downloads hundreds of GB:
    asked for by name (MLS_LIVE_CLUSTER=1) on top of the credentials the others need."""
    import modal

    if os.environ.get("MLS_LIVE_CLUSTER") != "1":
        pytest.skip("set MLS_LIVE_CLUSTER=1 to deploy a 2 x H100:8 cluster (billed by the hour)")
    if not (os.environ.get("MODAL_PROXY_TOKEN_ID") and os.environ.get("MODAL_PROXY_TOKEN_SECRET")):
        pytest.skip("set MODAL_PROXY_TOKEN_ID and MODAL_PROXY_TOKEN_SECRET (a Modal proxy token)")
    app_name = deployed("vllm_multi_node")
    url = modal.Server.from_name(app_name, "VLLMCluster").get_url()
    assert url, "the deployed Server has no URL"
    smoke_and_bench(url, api_key=api_key, tmp_path=tmp_path, extra=[])
    assert httpx.get(f"{url}/health", timeout=60).status_code in (401, 403), "proxy auth is on"
    headers = {"Modal-Key": os.environ["MODAL_PROXY_TOKEN_ID"],
               "Modal-Secret": os.environ["MODAL_PROXY_TOKEN_SECRET"]}
    # the engine's /metrics: through proxy auth, and then only with the app's key
    assert httpx.get(f"{url}/metrics", headers=headers, timeout=60).status_code == 401
    keyed = {**headers, "Authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{url}/metrics", headers=keyed, timeout=60).status_code == 200
