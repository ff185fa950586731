"""`mls check`: every rule fires on its fixture, stays quiet on the clean twins and the recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.check import RULES, check_file, check_source, startup_note
from modal_llm_serving.cli import cli
from modal_llm_serving.recipes.files import recipe_path
from modal_llm_serving.recipes.table import RECIPE_NAMES as RECIPES

from .test_recipes import NOT_PLANNED

FIXTURES = Path(__file__).parent / "fixtures" / "check"
SKILL_FILES = Path(__file__).parent.parent / "skills" / "modal-llm-serving" / "evals" / "files"
CLEAN = ("clean_online.py", "clean_low_latency.py", "clean_server.py",
         # the startup rules' clean twins: each failing fixture with its setting put right
         "clean_mls022_tp_matches_gpus.py", "clean_mls023_fits.py",
         "clean_mls024_context_within_model.py", "clean_mls025_precision_supported.py",
         "clean_mls026_startup_timeout.py", "clean_mls027_concurrency_matches_batch.py",
         "clean_mls028_gated_with_token.py", "clean_mls029_extra_model_pinned.py",
         # the clustered rules' clean twin
         "clean_cluster.py")
# fixture -> the exact rule ids it must produce (static + import with the real Modal SDK)
BAD = {
    "mls001_unpinned_revision.py": {"MLS001"},
    "mls002_weights_not_on_volume.py": {"MLS002"},
    "mls003_compile_cache_missing.py": {"MLS003"},
    # Modal itself refuses one Volume at two paths at import, so the import fails too
    "mls003_compile_cache_shared.py": {"MLS003", "MLS017"},
    "mls004_no_hf_xet.py": {"MLS004"},
    "mls005_no_readiness.py": {"MLS005"},
    "mls006_no_smoke_path.py": {"MLS006"},
    "mls007_several_patterns.py": {"MLS007"},
    # the SDK raises TypeError for max_inputs with http_server: static rule + import failure
    "mls008_max_inputs_http_server.py": {"MLS008", "MLS017"},
    "mls009_dev_mode_public.py": {"MLS009"},
    "mls010_low_latency_no_region.py": {"MLS010"},
    "mls011_low_latency_no_503_retry.py": {"MLS011"},
    "mls012_secret_in_code.py": {"MLS012"},
    "mls013_unpinned_engine.py": {"MLS013"},
    "mls014_gpu_snapshot_multi_gpu.py": {"MLS014"},
    "mls015_extra_endpoints.py": {"MLS015"},
    "mls016_syntax_error.py": {"MLS016"},
    "mls017_import_failed.py": {"MLS017"},
    "mls018_import_timeout.py": {"MLS018"},
    # Modal Servers (`@app.server`): the same rules, and the mistakes this primitive brings
    "mls009_dev_mode_server_unauthenticated.py": {"MLS009"},
    "mls019_server_routing_far.py": {"MLS019"},
    "mls020_unauthenticated_no_key.py": {"MLS020"},
    # the SDK refuses @modal.concurrent on a Server at import: static rule + import failure
    "mls021_concurrent_on_server.py": {"MLS021", "MLS017"},
    # whether the app can start, against the model's facts (the catalog: tests run offline)
    "mls022_tp_vs_gpus.py": {"MLS022"},
    "mls023_does_not_fit.py": {"MLS023"},
    "mls024_context_beyond_model.py": {"MLS024"},
    "mls025_precision_unsupported.py": {"MLS025"},
    "mls026_startup_timeout_short.py": {"MLS026"},
    "mls027_concurrency_vs_batch.py": {"MLS027"},
    "mls028_gated_no_token.py": {"MLS028"},
    "mls029_unpinned_extra_model.py": {"MLS029"},
    # how the engine is launched
    "mls030_shell_command.py": {"MLS030"},
    # Modal's clustered containers; the SDK refuses a count of no whole clusters at import
    "mls031_cluster_containers_not_whole.py": {"MLS031", "MLS017"},
    "mls032_cluster_partial_host.py": {"MLS032"},
    "mls033_cluster_without_rdma.py": {"MLS033"},
    "mls034_cluster_parallel_vs_gpus.py": {"MLS034"},
}


def test_every_rule_has_a_fixture_and_every_fixture_exists() -> None:
    covered = set().union(*BAD.values())
    assert covered == {rule.id for rule in RULES}
    on_disk = {p.name for p in FIXTURES.glob("*.py")}
    assert on_disk == set(BAD) | set(CLEAN)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_fires_its_rule(name: str) -> None:
    findings = check_file(FIXTURES / name, import_timeout=5 if "timeout" in name else 60)
    assert {f.rule.id for f in findings} == BAD[name], [f.to_dict() for f in findings]
    for finding in findings:
        assert finding.path.endswith(name)
        assert finding.line >= 1
        assert finding.rule.message and finding.rule.fix and finding.detail


@pytest.mark.parametrize("name", CLEAN)
def test_clean_twin_has_no_findings(name: str) -> None:
    assert check_file(FIXTURES / name) == []


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_pass_with_zero_findings(name: str) -> None:
    path = recipe_path(name)
    if not path.is_file():
        pytest.fail(f"recipe {path} is missing")
    findings = check_file(path)
    assert findings == [], [f.to_dict() for f in findings]


def test_findings_point_at_the_offending_line() -> None:
    source = (FIXTURES / "mls001_unpinned_revision.py").read_text()
    [finding] = check_source(source, path="app.py")
    assert source.splitlines()[finding.line - 1].startswith("MODEL_REVISION = ")


def test_revision_passed_only_through_argv_counts_as_pinned() -> None:
    source = (FIXTURES / "clean_online.py").read_text().replace(
        'MODEL_REVISION = "c1899de289a04d12100db370d81485cdf75e47ca"\n', "").replace(
        '"--revision", MODEL_REVISION', '"--revision", "c1899de289a04d12100db370d81485cdf75e47ca"')
    assert check_source(source) == []
    unpinned = source.replace('"--revision", "c1899de289a04d12100db370d81485cdf75e47ca", ', "")
    assert [f.rule.id for f in check_source(unpinned)] == ["MLS001"]


@pytest.mark.parametrize("token", ["hf_" + "a1B2" * 9, "sk-" + "Zz9" * 10])
def test_token_shaped_strings_are_secrets_anywhere(token: str) -> None:
    source = (FIXTURES / "clean_online.py").read_text() + f'\nNOTE = "{token}"\n'
    assert [f.rule.id for f in check_source(source)] == ["MLS012"]


def test_placeholder_keys_are_not_secrets() -> None:
    extra = '\nclient_kwargs = dict(api_key="EMPTY")\n'
    source = (FIXTURES / "clean_online.py").read_text() + extra
    assert check_source(source) == []


def test_sglang_compile_cache_where_sglang_reads_it() -> None:
    """SGLang 0.5 reads DeepGEMM kernels from $SGLANG_CACHE_DIR/deep_gemm (its environ module):
    a Volume at ~/.cache/deepgemm is never read, unless the image points the variable there."""
    from sglang.srt.environ import envs

    assert envs.SGLANG_DG_CACHE_DIR.get() == os.path.expanduser("~/.cache/sglang/deep_gemm")
    source = (FIXTURES / "clean_low_latency.py").read_text()
    for path, fires in (("/root/.cache/sglang/deep_gemm", False), ("/root/.cache/deepgemm", True)):
        mounted = source.replace('"/root/.cache/sglang"', f'"{path}"')
        assert mounted != source
        assert ("MLS003" in {f.rule.id for f in check_source(mounted)}) is fires, path
    pointed = source.replace('"/root/.cache/sglang"', '"/root/.cache/deepgemm"').replace(
        '.env({', '.env({"SGLANG_DG_CACHE_DIR": "/root/.cache/deepgemm", ', 1)
    assert '"SGLANG_DG_CACHE_DIR"' in pointed
    assert "MLS003" not in {f.rule.id for f in check_source(pointed)}


@pytest.mark.parametrize(("command", "fires"), [
    ('" ".join(argv)', True), ('f"vllm serve {MODEL_NAME}"', True),
    ('"vllm serve " + MODEL_NAME', True), ("command", True),
    ('"vllm serve Qwen/Qwen3-0.6B"', False)])
def test_shell_true_fires_on_built_commands_only(command: str, fires: bool) -> None:
    source = (FIXTURES / "clean_online.py").read_text().replace(
        "subprocess.Popen(argv, ", f"subprocess.Popen({command}, shell=True, ")
    assert "shell=True" in source
    assert ("MLS030" in {f.rule.id for f in check_source(source)}) is fires


def test_a_second_engine_launched_from_shell_text_is_a_second_pattern() -> None:
    """The review eval's app: vLLM from an argv list, SGLang from a string run by the shell."""
    ids = {f.rule.id for f in check_source(
        (SKILL_FILES / "review_me.py").read_text(), path="review_me.py")}
    assert {"MLS007", "MLS030", "MLS015"} <= ids
    source = (FIXTURES / "clean_online.py").read_text()
    extra = source + ('\n\n@app.function(image=image)\ndef other() -> None:\n'
                      '    subprocess.Popen(["python", "-m", "sglang.launch_server"])\n')
    assert "MLS007" in {f.rule.id for f in check_source(extra)}
    assert "MLS007" not in {f.rule.id for f in check_source(source)}


def test_latest_image_tag_is_unpinned() -> None:
    source = (FIXTURES / "clean_low_latency.py").read_text().replace(
        "nvidia/cuda:12.8.1-devel-ubuntu22.04", "lmsysorg/sglang:latest")
    assert [f.rule.id for f in check_source(source)] == ["MLS013"]


def test_dev_mode_behind_proxy_auth_alone_is_still_public() -> None:
    """Every holder of a workspace proxy token could call /sleep: only a private engine port
    (behind a forwarder) keeps the dev endpoints in."""
    web = (FIXTURES / "mls009_dev_mode_public.py").read_text()
    proxied = web.replace(
        "@modal.web_server(port=PORT, startup_timeout=20 * MINUTES)",
        "@modal.web_server(port=PORT, startup_timeout=20 * MINUTES, requires_proxy_auth=True)")
    server = (FIXTURES / "mls009_dev_mode_server_unauthenticated.py").read_text()
    authenticated = server.replace("    unauthenticated=True,\n", "")
    for source in (proxied, authenticated):
        assert source not in (web, server)
        assert [f.rule.id for f in check_source(source)] == ["MLS009"]


# --- the command line -------------------------------------------------------------------------


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    clean = runner.invoke(cli, ["check", str(FIXTURES / "clean_online.py")])
    assert clean.exit_code == 0, clean.output
    assert "no findings" in clean.output
    bad = runner.invoke(cli, ["check", "--json", "--no-import",
                              str(FIXTURES / "mls004_no_hf_xet.py"),
                              str(FIXTURES / "clean_online.py")])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert [f["rule"] for f in report["findings"]] == ["MLS004"]
    assert report["findings"][0]["fix"] and report["findings"][0]["why"]
    assert report["files"] == 2


def test_cli_text_names_rule_location_why_and_fix() -> None:
    result = CliRunner().invoke(cli, ["check", "--no-import",
                                      str(FIXTURES / "mls013_unpinned_engine.py")])
    assert result.exit_code == 1
    assert "mls013_unpinned_engine.py:24: MLS013 unpinned-engine" in result.output
    assert "fix:" in result.output and "why:" in result.output


def test_cli_syntax_error_is_a_finding_not_a_traceback() -> None:
    result = CliRunner().invoke(cli, ["check", str(FIXTURES / "mls016_syntax_error.py")])
    assert result.exit_code == 1
    assert "MLS016" in result.output and "Traceback" not in result.output


def test_cli_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "nope.py")])
    assert result.exit_code == 2
    assert "nope.py" in result.output


def test_cli_list_prints_every_rule() -> None:
    result = CliRunner().invoke(cli, ["check", "--list"])
    assert result.exit_code == 0
    for rule in RULES:
        assert rule.id in result.output and rule.name in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["check", "--list", "--json"]).output)
    assert [r["id"] for r in as_json] == [r.id for r in RULES]


def test_low_latency_helpers_need_no_region() -> None:
    source = (FIXTURES / "clean_low_latency.py").read_text().replace(
        "@app.local_entrypoint()", "@app.function(image=image)\ndef download() -> None:\n"
        "    pass\n\n\n@app.local_entrypoint()")
    assert check_source(source) == []


def test_region_from_the_environment_gets_the_benefit_of_doubt() -> None:
    source = (FIXTURES / "clean_low_latency.py").read_text().replace(
        "    region=REGION,", '    region=os.environ.get("REGION", "us-east"),').replace(
        "import subprocess", "import os\nimport subprocess")
    assert check_source(source) == []


@pytest.mark.parametrize(("value", "is_secret"), [
    ("not-used", False), ("your-api-key-here", False), ("<paste key>", False),
    ("Zq83-Kd02-Lm55-Xw19", True)])
def test_literal_keys_versus_placeholders(value: str, is_secret: bool) -> None:
    source = (FIXTURES / "clean_online.py").read_text() + f'\nclient = dict(api_key="{value}")\n'
    assert [f.rule.id for f in check_source(source)] == (["MLS012"] if is_secret else [])


AGENT_APP = '''
import subprocess
import modal

app = modal.App("quick-llm")
image = modal.Image.debian_slim().pip_install("vllm", "openai")


@app.function(image=image, gpu="A100")
@modal.web_server(port=8000)
def serve():
    subprocess.Popen("vllm serve mistralai/Mistral-7B-Instruct-v0.3 --port 8000", shell=True)


@app.function(image=image)
@modal.fastapi_endpoint()
def hello():
    return {"ok": True}
'''


def test_a_typical_quick_agent_app_gets_every_relevant_finding() -> None:
    ids = {f.rule.id for f in check_source(AGENT_APP)}
    # mistralai gates its models, and the app has no Secret with HF_TOKEN (MLS028)
    assert ids == {"MLS001", "MLS002", "MLS003", "MLS004", "MLS005", "MLS006", "MLS013",
                   "MLS015", "MLS028"}
    pinned = AGENT_APP.replace("--port 8000", "--revision e0bc86c23ce5aae1db576c8cca6f06f1f73af2db "
                               "--port 8000")
    assert "MLS001" not in {f.rule.id for f in check_source(pinned)}


def test_cli_checks_a_whole_folder() -> None:
    result = CliRunner().invoke(cli, ["check", "--no-import", str(FIXTURES)])
    assert result.exit_code == 1
    assert f"in {len(list(FIXTURES.glob('*.py')))} files" in result.output
    recipes = CliRunner().invoke(cli, ["check", str(recipe_path("vllm_online").parent)])
    assert recipes.exit_code == 0, recipes.output


def test_cli_python_without_modal_is_a_usage_error(tmp_path: Path) -> None:
    import sys

    bare = tmp_path / "python"  # an interpreter that cannot see the venv's modal
    bare.write_text(f"#!/bin/sh\nexec {sys.base_prefix}/bin/python3 -I -S \"$@\"\n")  # no site
    bare.chmod(0o755)
    result = CliRunner().invoke(cli, ["check", "--python", str(bare),
                                      str(FIXTURES / "clean_online.py")])
    assert result.exit_code == 2, result.output
    assert "cannot import modal" in result.output and "--python" in result.output


def test_a_main_block_client_counts_as_a_smoke_path() -> None:
    source = (FIXTURES / "mls006_no_smoke_path.py").read_text() + (
        '\n\nif __name__ == "__main__":\n'
        '    import openai\n'
        '    urllib.request.urlopen("https://example.invalid/health")\n'
        '    openai.OpenAI().chat.completions.create(model=MODEL_NAME, messages=[])\n')
    assert check_source(source) == []


@pytest.mark.parametrize("content", [b"\x00\x01binary", b"\xff\xfe not utf-8", b""])
def test_cli_odd_files_are_findings_not_tracebacks(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "odd.py"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code == 1, result.output  # empty: no app, no smoke path


def test_a_tunnel_is_an_extra_port() -> None:
    source = (FIXTURES / "clean_online.py").read_text().replace(
        "    url = serve.get_web_url()\n",
        "    url = serve.get_web_url()\n    with modal.forward(9000) as tunnel:\n"
        "        print(tunnel.url)\n")
    assert [f.rule.id for f in check_source(source)] == ["MLS015"]


def test_the_deprecated_experimental_clustered_is_read_as_a_cluster_too() -> None:
    """`modal.experimental.clustered` (deprecated in SDK 1.6.4, still accepted) is the same
    decorator to the cluster rules: a cluster of 2 x 8 GPUs, so tensor 8 alone leaves half."""
    clean = (FIXTURES / "clean_cluster.py").read_text()
    source = clean.replace("@modal.clustered(size=N_NODES, rdma=True)",
                           "@modal.experimental.clustered(size=N_NODES)")
    assert source != clean
    assert [f.rule.id for f in check_source(source)] == ["MLS033"]
    broken = source.replace('"--pipeline-parallel-size", str(N_NODES),', "")
    assert sorted(f.rule.id for f in check_source(broken)) == ["MLS033", "MLS034"]


@pytest.mark.parametrize(("nnodes", "said"), [
    ("", "@clustered(size=2) but the engine command sets no --nnodes: each container would "
         "start an engine on its own GPUs alone"),
    ('"--nnodes", "3", ', "--nnodes 3 against @clustered(size=2)")])
def test_the_engine_node_count_must_be_the_cluster_size(nnodes: str, said: str) -> None:
    clean = (FIXTURES / "clean_cluster.py").read_text()
    source = clean.replace('"--nnodes", str(N_NODES), ', nnodes)
    assert source != clean
    findings = check_source(source)
    assert [(f.rule.id, f.detail) for f in findings] == [("MLS034", said)]


def test_static_checks_never_crash_on_real_python() -> None:
    """Any Python file gets findings or none, never an exception (here: this repository's)."""
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("src/**/*.py"), *root.glob("tests/*.py"), *root.glob("benchmarks/*.py")]
    assert len(files) > 20
    for path in files:
        check_source(path.read_text(encoding="utf-8"), path=str(path))
    # a dict with an unhashable resolved key (the tuple reads as a list) and a ** spread: no
    # crash, and no finding but the one any file with no smoke path gets
    odd = check_source("x = {(1, 2): 3, **{}}\nrequests = [[1]]\n")
    assert [(f.rule.id, f.line) for f in odd] == [("MLS006", 1)]


def test_a_dict_with_an_unhashable_key_still_gives_its_other_keys() -> None:
    """The clean app's image environment with an odd key and a spread beside the one MLS004
    looks for: that key is still read, so MLS004 stays quiet."""
    source = (FIXTURES / "clean_online.py").read_text()
    odd = source.replace('.env({"HF_XET_HIGH_PERFORMANCE": "1"})',
                         '.env({(1, 2): "x", **{}, "HF_XET_HIGH_PERFORMANCE": "1"})')
    assert odd != source
    assert check_source(odd) == []
    assert [f.rule.id for f in check_source(odd.replace('"HF_XET_HIGH_PERFORMANCE": "1"',
                                                        '"HF_XET_HIGH_PERFORMANCE": "0"'))] == [
        "MLS004"]


# --- whether the app can start (MLS022-MLS029) ------------------------------------------------

# each fixture's own rule is the one its name starts with (a set's order is the hash seed's)
STARTUP = {name: name.split("_")[0].upper() for name in BAD
           if name.split("_")[0].upper() >= "MLS022"}
# rules whose finding rests on the model's facts, and so names where they came from
FROM_FACTS = {"MLS023", "MLS024", "MLS025"}


@pytest.mark.parametrize("name", sorted(STARTUP))
def test_startup_rule_says_why_and_fix_and_names_the_fact(name: str) -> None:
    result = CliRunner().invoke(cli, ["check", "--no-import", str(FIXTURES / name)])
    rule = next(r for r in RULES if r.id == STARTUP[name])
    assert result.exit_code == 1, result.output
    assert f"{rule.id} {rule.name}" in result.output
    assert f"why: {rule.message}" in result.output and f"fix: {rule.fix}" in result.output
    if rule.id in FROM_FACTS:
        assert "facts: built-in catalog)" in result.output
    assert "note:" not in result.output  # every fact was at hand


def _startup_ids(source: str) -> list[str]:
    return [f.rule.id for f in check_source(source) if f.rule.id >= "MLS022"]


def test_tensor_parallelism_above_the_gpus_or_across_the_heads() -> None:
    two = (FIXTURES / "clean_mls022_tp_matches_gpus.py").read_text()
    above = two.replace('"--tensor-parallel-size", str(N_GPU)', '"--tensor-parallel-size", "4"')
    [finding] = check_source(above)
    assert finding.rule.id == "MLS022" and "needs 4 GPUs" in finding.detail
    # Qwen3-0.6B has 16 attention heads and 8 KV heads: 3 GPUs split neither
    three = two.replace("N_GPU = 2", "N_GPU = 3")
    details = [f.detail for f in check_source(three)]
    assert details == ["Qwen/Qwen3-0.6B has 16 attention heads and 8 KV heads, which tensor "
                       "parallelism 3 does not split evenly (facts: built-in catalog)"]


def test_sglang_flags_and_offline_llm_keywords_are_read() -> None:
    sglang = recipe_path("sglang_low_latency").read_text()
    assert _startup_ids(sglang.replace('"--tp-size", str(N_GPU),', '"--tp-size", "4",')) == [
        "MLS022"]
    offline = recipe_path("qwen3_throughput").read_text()
    assert _startup_ids(offline.replace('"tensor_parallel_size": N_GPU,',
                                        '"tensor_parallel_size": 2,')) == ["MLS022"]
    assert _startup_ids(offline.replace('"max_model_len": MAX_MODEL_LEN,',
                                        '"max_model_len": 131072,')) == ["MLS024"]


def test_concurrency_far_below_the_engine_batch() -> None:
    source = (FIXTURES / "clean_mls027_concurrency_matches_batch.py").read_text().replace(
        '"--max-num-seqs", "32"', '"--max-num-seqs", "256"')
    [finding] = check_source(source)
    assert finding.rule.id == "MLS027" and "batch room for 256" in finding.detail


def test_startup_timeout_below_the_weights_load_floor() -> None:
    # Qwen3-235B-A22B in bf16: 470 GB, read off a Volume at 1 GB/s, against a 2-minute start
    source = (FIXTURES / "clean_mls022_tp_matches_gpus.py").read_text().replace(
        '"Qwen/Qwen3-0.6B"', '"Qwen/Qwen3-235B-A22B"').replace(
        'GPU_TYPE = "L4"', 'GPU_TYPE = "H200"').replace("N_GPU = 2", "N_GPU = 8").replace(
        "20 * MINUTES,", "2 * MINUTES,").replace("startup_timeout=20 * MINUTES",
                                                  "startup_timeout=2 * MINUTES")
    [finding] = check_source(source)
    assert finding.rule.id == "MLS026"
    assert finding.detail.startswith("timeout=2 * MINUTES (120 s) < 470 s just to read")


@pytest.mark.parametrize(("extra", "what"), [
    ('"--lora-modules", "sql=fixture-org/sql-lora"', "LoRA adapter fixture-org/sql-lora"),
    ('"--speculative-config", \'{"method": "eagle3", "model": "fixture-org/draft"}\'',
     "speculative draft model fixture-org/draft")])
def test_other_models_need_a_pinned_revision(extra: str, what: str) -> None:
    source = (FIXTURES / "clean_online.py").read_text().replace(
        '"--port", str(PORT)]', f'"--port", str(PORT), {extra}]')
    [finding] = check_source(source)
    assert finding.rule.id == "MLS029" and what in finding.detail


def test_sglang_draft_model_pinned_or_not() -> None:
    sglang = recipe_path("sglang_low_latency").read_text().replace(
        'SPECULATIVE_ALGORITHM = None', 'SPECULATIVE_ALGORITHM = "EAGLE3"').replace(
        'SPECULATIVE_DRAFT_MODEL = None', 'SPECULATIVE_DRAFT_MODEL = "fixture-org/draft"')
    assert _startup_ids(sglang) == ["MLS029"]
    pinned = sglang.replace('SPECULATIVE_DRAFT_REVISION = None',
                            f'SPECULATIVE_DRAFT_REVISION = "{"ab" * 20}"')
    assert _startup_ids(pinned) == []


def test_a_second_download_without_revision() -> None:
    source = (FIXTURES / "clean_online.py").read_text() + (
        "\n\ndef fetch_adapter() -> None:\n"
        "    from huggingface_hub import snapshot_download\n\n"
        '    snapshot_download("fixture-org/adapter")\n'
        "    snapshot_download(MODEL_NAME, revision=MODEL_REVISION)  # the main model: MLS001's\n")
    [finding] = check_source(source)
    assert finding.rule.id == "MLS029" and "download fixture-org/adapter" in finding.detail


def test_an_unknown_model_is_one_note_and_the_other_rules_still_run(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text((FIXTURES / "clean_online.py").read_text().replace(
        '"Qwen/Qwen3-0.6B"', '"acme/unknown-7b"'))
    assert check_file(app, import_check=False) == []
    note = startup_note(app)  # the Hub cannot be asked here, and the catalog lacks the model
    assert note is not None and "acme/unknown-7b" in note and ";" not in note
    result = CliRunner().invoke(cli, ["check", "--no-import", str(app)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {app}: the startup rules that need these were skipped: {note}"]
    assert "mls check: no findings in 1 file" in result.output
    # the rules that need no facts still run: two GPUs and no tensor parallelism
    two = app.read_text().replace("N_GPU = 1", "N_GPU = 2")
    assert [f.rule.id for f in check_source(two)] == ["MLS022"]


def test_a_gpu_outside_the_catalog_or_a_value_unknown_is_noted(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text((FIXTURES / "clean_online.py").read_text().replace(
        'GPU_TYPE = "L4"', 'GPU_TYPE = "X9000"').replace(
        '"--port", str(PORT)]', '"--port", str(PORT), "--max-model-len", os.environ["LEN"]]'))
    assert check_file(app, import_check=False) == []
    assert startup_note(app) == ("GPU 'X9000' is not in the GPU catalog; the value of "
                                 "--max-model-len cannot be worked out")


def test_the_gpu_catalog_given_is_the_one_judged_against(tmp_path: Path) -> None:
    catalog = tmp_path / "gpus.toml"
    catalog.write_text("[gpus.L4]\nmemory_gb = 16\n")
    fits = FIXTURES / "clean_mls023_fits.py"
    assert check_file(fits, import_check=False) == []
    [finding] = check_file(fits, import_check=False, gpu_catalog=catalog)
    assert finding.rule.id == "MLS023" and "at 0.9 of 16 GB" in finding.detail


def test_gated_per_the_hub_at_the_pinned_commit(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An organisation the toolkit does not know as gating: the Hub's own word counts (read
    from a Hub on loopback at the app's commit), and the finding names it."""
    import hashlib

    from tests.hub_server import HubRepo, json_file, running_hub

    commit = hashlib.sha1(b"acme/gated-8b").hexdigest()
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
              "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}
    repo = HubRepo(files={"config.json": json_file(config)}, commit=commit, gated=True,
                   granted=frozenset({"hf_granted_token_for_tests"}))
    _fresh_hub_caches(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_granted_token_for_tests")
    source = _online_app("acme/gated-8b", commit, max_model_len=8192)
    with running_hub({"acme/gated-8b": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        details = {f.rule.id: f.detail for f in check_source(source)}
    assert set(details) == {"MLS024", "MLS028"}
    assert details["MLS028"].startswith(f"acme/gated-8b is gated (the Hub says so (Hub at "
                                        f"{commit[:12]}))")
    assert details["MLS024"].endswith(
        f"(max_position_embeddings 4096; facts: Hub at {commit[:12]})")


def _fresh_hub_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing read before: the Hub on loopback is the only source of the model's facts."""
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "mls"))


def _online_app(model: str, commit: str, *, max_model_len: int) -> str:
    """The clean online fixture, serving `model` at `commit` with a --max-model-len."""
    return (FIXTURES / "clean_online.py").read_text().replace(
        '"Qwen/Qwen3-0.6B"', f'"{model}"').replace(
        "c1899de289a04d12100db370d81485cdf75e47ca", commit).replace(
        '"--port", str(PORT)]', f'"--port", str(PORT), "--max-model-len", "{max_model_len}"]')


@pytest.mark.parametrize(("rope", "limit", "fields"), [
    ({"rope_type": "linear", "factor": 4.0}, 16384,
     "max_position_embeddings 4096 x linear rope scaling factor 4"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}, 4096,
     "max_position_embeddings 4096"),  # YaRN's length is already the scaled one
])
def test_context_limit_counts_the_models_own_rope_scaling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rope: dict[str, object], limit: int,
        fields: str) -> None:
    """MLS024 lets through exactly the context vLLM accepts for the model's own config."""
    import hashlib

    from tests.hub_server import HubRepo, json_file, running_hub

    commit = hashlib.sha1(b"acme/long-8b").hexdigest()
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
              "max_position_embeddings": 4096, "rope_scaling": rope, "torch_dtype": "bfloat16"}
    repo = HubRepo(files={"config.json": json_file(config)}, commit=commit)
    _fresh_hub_caches(tmp_path, monkeypatch)
    with running_hub({"acme/long-8b": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        within = check_source(_online_app("acme/long-8b", commit, max_model_len=limit))
        beyond = check_source(_online_app("acme/long-8b", commit, max_model_len=limit + 1))
    assert [f.rule.id for f in within] == []
    [finding] = beyond
    assert finding.rule.id == "MLS024"
    assert f"> the {limit} positions" in finding.detail and f"({fields}; facts: " in finding.detail


# --- plan and check agree: every app `mls new` writes passes `mls check` -----------------------

REVISION = "220b46e3b2180893580a4454f21f22d3ebb187d3"
# (workload, the recipe the plan picks): dense, MoE, sliding window (gpt-oss), hybrid linear
# attention (Qwen3-Next, Qwen3.5/3.6), MLA (DeepSeek, Kimi, GLM), multimodal wrappers (Qwen3.5),
# FP8 and MXFP4 checkpoints; every pattern, and the Server form.
MATRIX: dict[str, tuple[dict[str, object], str]] = {
    "dense": ({"model": "Qwen/Qwen3-8B"}, "vllm_online"),
    "dense-gated-70b": ({"model": "meta-llama/Llama-3.3-70B-Instruct", "concurrency": 64,
                         "context_length": 32768}, "vllm_online"),
    "moe-low-latency": ({"model": "Qwen/Qwen3-30B-A3B", "goal": "low-latency",
                         "region": "us-east", "concurrency": 4}, "sglang_low_latency"),
    "moe-server": ({"model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "goal": "low-latency",
                    "proxy_auth": True, "concurrency": 2}, "vllm_server"),
    "sliding-mxfp4-cold-start": ({"model": "openai/gpt-oss-20b", "cold_start_s": 20},
                                 "vllm_cold_start"),
    "sliding-mxfp4-online": ({"model": "openai/gpt-oss-120b", "concurrency": 16,
                              "tpot_ms": 30}, "vllm_online"),
    "hybrid-linear": ({"model": "Qwen/Qwen3-Next-80B-A3B-Thinking", "concurrency": 16},
                      "vllm_online"),
    "wrapper-throughput": ({"model": "Qwen/Qwen3.5-27B", "offline": True,
                            "input_tokens": 1024, "output_tokens": 256}, "qwen3_throughput"),
    "wrapper-moe-server": ({"model": "Qwen/Qwen3.6-35B-A3B", "goal": "low-latency",
                            "proxy_auth": True, "region": "eu", "concurrency": 4},
                           "vllm_server"),
    "wrapper-moe-tp": ({"model": "Qwen/Qwen3.5-122B-A10B", "goal": "low-latency",
                        "region": "us-east", "concurrency": 4}, "sglang_low_latency"),
    "mla-fp8": ({"model": "deepseek-ai/DeepSeek-V3", "concurrency": 32}, "vllm_online"),
    "mla-fp8-1t": ({"model": "moonshotai/Kimi-K2-Instruct", "concurrency": 16}, "vllm_online"),
    "mla-fp8-glm": ({"model": "zai-org/GLM-5.1-FP8", "concurrency": 8}, "vllm_online"),
    "fp8-low-latency": ({"model": "Qwen/Qwen3-32B-FP8", "goal": "low-latency",
                         "region": "us-west", "concurrency": 8, "tpot_ms": 25},
                        "sglang_low_latency"),
    "fp8-moe-throughput-kv-fp8": ({"model": "Qwen/Qwen3-235B-A22B-FP8", "goal": "throughput",
                                   "kv_cache_dtype": "fp8"}, "qwen3_throughput"),
    "server-cold-start": ({"model": "Qwen/Qwen3-0.6B", "cold_start_s": 10, "proxy_auth": True},
                          "vllm_server"),
    "sliding-wrapper-gated": ({"model": "google/gemma-3-27b-it", "concurrency": 16,
                               "context_length": 32768}, "vllm_online"),
    "hybrid-mamba-moe": ({"model": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
                          "concurrency": 32}, "vllm_online"),
    "block-configs": ({"model": "nvidia/Llama-3_3-Nemotron-Super-49B-v1", "concurrency": 8},
                      "vllm_online"),
    # 810 GB of bf16 weights: no 8x H100 host holds them, so whole hosts of a cluster
    "cluster-bf16-405b": ({"model": "meta-llama/Llama-3.1-405B-Instruct", "precision": "bf16",
                           "gpu": "H100"}, "vllm_multi_node"),
}
IMPORTED = ("dense-gated-70b", "server-cold-start")  # these two also imported with the SDK


def test_the_matrix_covers_every_recipe() -> None:
    """Every recipe a plan can choose (`mls new` writes no recipe the planner does not pick)."""
    assert {recipe for _, recipe in MATRIX.values()} == set(RECIPES) - NOT_PLANNED


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_app_mls_new_writes_passes_mls_check(name: str, tmp_path: Path) -> None:
    from modal_llm_serving.facts.workload import workload_from_mapping
    from modal_llm_serving.recipes.new import new_app

    fields, recipe = MATRIX[name]
    output = tmp_path / f"{name.replace('-', '_')}.py"
    result = new_app(workload_from_mapping({"revision": REVISION, **fields}), output,
                     import_check=name in IMPORTED)
    assert result.plan.recipe_row.name == recipe
    assert result.findings == [], [f.to_dict() for f in result.findings]
    assert startup_note(output) is None  # every fact the rules need was at hand
