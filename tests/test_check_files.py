"""`mls check` treats the file it checks as someone else's code, and reads it as Python does.

- Module-level code that does anything but define things is never run: every disguise of a
  side effect (an aliased module, a method on a built value, a computed function) is caught by
  an allow-list, the import is skipped and one note line says so; the marker file it would
  write never appears.
- What is imported runs in a child with its own folder and HOME and none of the caller's
  credentials.
- A symlink (to any file name) and a PEP 263 latin-1 file give the findings of the plain file.
- A folder is searched through its folders; a folder with no app in it is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.recipes.files import recipe_path

RECIPE = recipe_path("vllm_online")

# Each writes the marker file (MARKER is replaced by its path) when the module is imported.
SIDE_EFFECTS = [
    "import os as o\no.system('touch MARKER')",
    "from pathlib import Path\nPath('MARKER').write_text('x')",
    "open('MARKER', 'w').write('x')",
    "__import__('os').system('touch MARKER')",
    "import os\ngetattr(os, 'system')('touch MARKER')",
    "exec(\"open('MARKER', 'w')\")",
    "import shutil as s\ns.copy(__file__, 'MARKER')",
    "import pathlib\nX = [pathlib.Path('MARKER').touch()]",
    "import os\nfor _ in range(1):\n    os.mknod('MARKER')",
    "import os\nclass C:\n    os.system('touch MARKER')",
    "import os\ndef f(x=os.system('touch MARKER')):\n    pass",
    "import os\n@os.system\ndef touch_marker():\n    pass",
    "import modal\nwith open('MARKER', 'w'):\n    pass",
    "import os\nif os.environ.get('HOME'):\n    os.system('touch MARKER')",
]


def check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["check", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("effect", SIDE_EFFECTS)
def test_module_level_side_effects_never_run(effect: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = tmp_path / "app.py"
    app.write_text(RECIPE.read_text() + "\n" + effect.replace("MARKER", str(marker)) + "\n")
    code, output = check(str(app))
    assert not marker.exists()
    assert code in (0, 1) and "Traceback" not in output
    [note] = [line for line in output.splitlines() if "not imported" in line]
    assert note.startswith(f"note: {app} not imported (") and "static checks only" in note


def test_a_module_from_the_files_own_folder_is_not_imported(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "helper.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    app = tmp_path / "app.py"
    app.write_text("import helper  # noqa\n" + RECIPE.read_text())
    _code, output = check(str(app))
    assert not marker.exists() and "imports helper from its own folder" in output


def test_the_import_runs_apart_from_the_callers_folder_home_and_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-secret-as-it-gets")
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "app.py"
    # int() of the text fails, and the failure quotes it: what the import could see
    app.write_text(RECIPE.read_text() + "\nSEEN = int(os.environ.get('MODAL_TOKEN_SECRET', "
                   "'absent') + '|' + os.getcwd() + '|' + os.environ.get('HOME', ''))\n")
    code, output = check("--json", str(app))
    assert code == 1, output
    [detail] = [f["detail"] for f in json.loads(output)["findings"] if f["rule"] == "MLS017"]
    secret, cwd, home = detail.split("'")[1].split("|")
    assert secret == "absent"
    assert cwd == home and "mls-check-" in cwd and not Path(cwd).exists()


@pytest.mark.timeout(120)  # a child left alive holds the output pipes: fail here, not at 900 s
def test_a_hang_on_import_is_killed_with_what_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The import starts a process of its own (a module on PYTHONPATH, which the allow-list lets
    through), then hangs: both are killed at the timeout, not the import alone."""
    pid_file = tmp_path / "started.pid"
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "starts_a_process.py").write_text(
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(lib), *filter(None, [os.environ.get("PYTHONPATH")])]))
    app = tmp_path / "app.py"
    app.write_text(RECIPE.read_text() + "\nimport starts_a_process  # noqa\ntime.sleep(600)\n")
    code, output = check("--import-timeout", "5", str(app))
    assert code == 1 and "MLS018" in output, output
    pid = int(pid_file.read_text())
    # gone, or a zombie not yet reaped by init (its output pipes closed: it has exited)
    assert _process_state(pid) in (None, "Z", "X"), f"process {pid} started by the import lives"


def _process_state(pid: int) -> str | None:
    """The state letter of process `pid` (/proc/PID/stat), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_symlink_and_a_latin_1_file_read_as_python_reads_them(tmp_path: Path) -> None:
    target = tmp_path / "recipe-without-suffix"
    target.write_bytes(RECIPE.read_bytes())
    link = tmp_path / "linked.py"
    link.symlink_to(target)
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# -*- coding: latin-1 -*-\n# caf\xe9 au lait\n" + RECIPE.read_bytes())
    for path in (link, latin):
        code, output = check(str(path))
        assert (code, output.splitlines()[-1]) == (0, "mls check: no findings in 1 file"), output


def test_a_folder_is_searched_through_and_an_empty_match_refused(tmp_path: Path) -> None:
    deep = tmp_path / "apps" / "team" / "online"
    deep.mkdir(parents=True)
    (deep / "app.py").write_bytes(RECIPE.read_bytes())
    (tmp_path / "apps" / ".venv").mkdir()
    (tmp_path / "apps" / ".venv" / "site.py").write_text("syntax error here (\n")
    code, output = check("--no-import", str(tmp_path / "apps"))
    assert code == 0 and "no findings in 1 file" in output, output
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no apps here")
    code, output = check(str(tmp_path / "empty"))
    assert code == 2 and "holds no .py file" in output
    assert len([line for line in output.splitlines() if line.strip()]) == 1
