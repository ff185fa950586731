"""`mls check`: every rule fires on its fixture, stays quiet on the clean twins and the recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.check import RULES, check_file, check_source
from modal_llm_serving.cli import cli
from modal_llm_serving.recipes.files import recipe_path
from modal_llm_serving.recipes.table import RECIPE_NAMES as RECIPES

FIXTURES = Path(__file__).parent / "fixtures" / "check"
CLEAN = ("clean_online.py", "clean_low_latency.py", "clean_server.py")
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


def test_latest_image_tag_is_unpinned() -> None:
    source = (FIXTURES / "clean_low_latency.py").read_text().replace(
        "nvidia/cuda:12.8.1-devel-ubuntu22.04", "lmsysorg/sglang:latest")
    assert [f.rule.id for f in check_source(source)] == ["MLS013"]


def test_dev_mode_behind_proxy_auth_is_not_public() -> None:
    source = (FIXTURES / "mls009_dev_mode_public.py").read_text().replace(
        "@modal.web_server(port=PORT, startup_timeout=20 * MINUTES)",
        "@modal.web_server(port=PORT, startup_timeout=20 * MINUTES, requires_proxy_auth=True)")
    assert check_source(source) == []


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
    assert ids == {"MLS001", "MLS002", "MLS003", "MLS004", "MLS005", "MLS006", "MLS013",
                   "MLS015"}
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


def test_static_checks_never_crash_on_real_python() -> None:
    """Any Python file gets findings or none, never an exception (here: this repository's)."""
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("src/**/*.py"), *root.glob("tests/*.py"), *root.glob("benchmarks/*.py")]
    assert len(files) > 20
    for path in files:
        check_source(path.read_text(encoding="utf-8"), path=str(path))
    assert check_source("x = {(1, 2): 3, **{}}\nrequests = [[1]]\n") is not None
