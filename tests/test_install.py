"""The README's and SKILL.md's one-line toolkit install, run as a new user would.

A fresh, empty virtualenv, the one `pip install` line pointed at this checkout, and nothing else:
then `mls --version`, `mls skill path` (the skill the wheel carries), `mls check` on a recipe
from that installed skill, which imports it with the freshly installed Modal SDK, and `mls local
command`, which names the extra it needs. Without the package index it is skipped (except in CI).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.network import PYPI_INDEX, require_reachable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.index  # pip resolves the toolkit's dependencies from the index


def one_line_install() -> str:
    """The install line SKILL.md gives for a checkout (the same as the README's)."""
    skill = (ROOT / "skills" / "modal-llm-serving" / "SKILL.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = re.findall(r"^(pip install \./modal-llm-serving)\b", skill, re.M)
    assert lines, "SKILL.md names no `pip install ./modal-llm-serving` line"
    assert lines[0] in readme
    return lines[0]


# The install, started once (by `start_early`): (folder, its environment, the running install).
_INSTALL: list[tuple[Path, dict[str, str], subprocess.Popen[bytes]]] = []


def start_early(folder: Path) -> None:
    """Create the empty virtualenv and run the one install line into it, in the background: it
    mostly waits on the index, so conftest.py starts it as soon as the tests are collected and
    it runs beside the rest of the suite."""
    if _INSTALL:
        return
    venv = folder / "venv"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "VIRTUAL_ENV": str(venv),
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    # the line as written, run where "./modal-llm-serving" is this checkout
    (folder / "modal-llm-serving").symlink_to(ROOT)
    script = f"{shlex.quote(sys.executable)} -m venv venv && {one_line_install()} --quiet"
    with (folder / "install.log").open("wb") as log:  # the child holds its own copy
        _INSTALL.append((folder, env, subprocess.Popen(
            ["bash", "-c", script], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)))


def stop_early() -> None:
    """Stop the install if it is still running when the session ends: nothing outlives it."""
    for _folder, _env, process in _INSTALL:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_one_line_install_into_an_empty_venv_gives_a_working_mls(tmp_path: Path) -> None:
    require_reachable(f"{PYPI_INDEX}/pip/", "the package index")
    start_early(tmp_path)  # started already when conftest.py saw this test selected
    folder, env, process = _INSTALL[0]
    venv = folder / "venv"
    process.wait(timeout=900)
    log = (folder / "install.log").read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, log[-3000:]
    mls = str(venv / "bin" / "mls")
    version = subprocess.run([mls, "--version"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert version.returncode == 0 and re.match(r"mls, version \d+\.\d+\.\d+", version.stdout)
    path = subprocess.run([mls, "skill", "path"], capture_output=True, text=True, env=env,
                          timeout=60).stdout.strip()
    assert Path(path).is_relative_to(venv), path  # the wheel's own copy, not the checkout
    recipe = Path(path) / "scripts" / "vllm_online.py"
    check = subprocess.run([mls, "check", str(recipe)], capture_output=True, text=True,
                           env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no findings in 1 file" in check.stdout
    # `mls local` needs an extra this line leaves out: one line naming it and the pip command
    # (no `make`: a pip user has no checkout)
    local = subprocess.run([mls, "local", "command"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert local.returncode != 0 and local.stdout == ""
    assert local.stderr.count("\n") == 1, local.stderr
    assert "needs the toolkit's `local` extra" in local.stderr
    assert "pip install 'modal-llm-serving[local]' --extra-index-url" in local.stderr
    assert "make" not in local.stderr
