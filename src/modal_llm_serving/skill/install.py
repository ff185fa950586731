"""Installing the skill this toolkit carries: that very copy, less its evals, into a skills folder.

The package ships the skill folder (`skills/modal-llm-serving/` in a checkout, package data
`modal_llm_serving/_skill` in a wheel), so the skill an agent reads and the toolkit it runs come
from one release: `install_skill` copies that folder into an agent's skills directory, atomically
(a half-copied skill is never left behind), all of it but its evals.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from modal_llm_serving.errors import UsageError
from modal_llm_serving.skill import SKILL_NAME, skill_dir

__all__ = ["AGENT_FOLDERS", "NOT_INSTALLED", "install_skill", "install_skills", "skills_dirs"]

# Left out of an installed skill: the evals' grading criteria and inputs, which an agent under
# test must not read (`mls skill eval` reads them from the carried copy).
NOT_INSTALLED = ("evals",)

# Where agents find skills, as `modal skills install` (Modal SDK, modal/cli/skills.py) and the
# skills CLI (`npx skills add`) put them: `.agents/skills`, the open standard's folder (Codex and
# the skills CLI's other agents), and `.claude/skills` (Claude Code); in the project, or with
# --global in the home folder (~/.agents/skills, ~/.claude/skills).
AGENT_FOLDERS = {"agents": Path(".agents") / "skills", "claude": Path(".claude") / "skills"}


def skills_dirs(agent: str, *, global_: bool, cwd: Path | None = None,
                home: Path | None = None) -> list[Path]:
    """The skills folders for `agent` (agents, claude, or all of them), in `cwd` [default: the
    current folder] or, `global_`, in `home` [default: the user's home folder]."""
    if agent != "all" and agent not in AGENT_FOLDERS:
        raise UsageError(f"unknown agent {agent!r}; choose all, {', '.join(AGENT_FOLDERS)} or "
                         "give --dir")
    base = (home or Path.home()) if global_ else (cwd or Path.cwd())
    names = list(AGENT_FOLDERS) if agent == "all" else [agent]
    return [base / AGENT_FOLDERS[name] for name in names]


def install_skills(target_dirs: list[Path], *, force: bool = False) -> list[Path]:
    """`install_skill` into each folder; without `force`, one installed copy anywhere stops them
    all before anything is written."""
    if not force:
        for target_dir in target_dirs:
            _refuse_to_replace(target_dir.expanduser() / SKILL_NAME)
    return [install_skill(target_dir, force=force) for target_dir in target_dirs]


def _refuse_to_replace(destination: Path) -> None:
    if destination.exists():
        raise UsageError(f"{destination} exists; pass --force to replace it with this version")


def _ignore(source: Path) -> Callable[[str, list[str]], set[str]]:
    """What `copytree` skips: bytecode anywhere, NOT_INSTALLED at the top of the skill."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__" or name.endswith(".pyc")}
        if Path(folder) == source:
            skipped |= set(NOT_INSTALLED) & set(names)
        return skipped
    return ignore


def install_skill(target_dir: Path, *, force: bool = False) -> Path:
    """Copy the carried skill (less NOT_INSTALLED) to `target_dir/modal-llm-serving`; return the
    installed folder.

    An existing copy is replaced only with `force`. The new copy is assembled beside the target
    and renamed into place, so a reader never sees half a skill.
    """
    source = skill_dir()
    target_dir = target_dir.expanduser()
    destination = target_dir / SKILL_NAME
    if not force:
        _refuse_to_replace(destination)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SKILL_NAME}-", dir=target_dir))
    except OSError as exc:
        raise UsageError(f"cannot write to {target_dir}: {exc.strerror}") from exc
    try:
        copy = staging / SKILL_NAME
        shutil.copytree(source, copy, ignore=_ignore(source))
        if destination.exists():
            old = staging / "old"
            os.replace(destination, old)
        os.replace(copy, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
