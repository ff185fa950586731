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

__all__ = ["NOT_INSTALLED", "default_skills_dir", "install_skill"]

# Left out of an installed skill: the evals' grading criteria and inputs, which an agent under
# test must not read (`mls skill eval` reads them from the carried copy).
NOT_INSTALLED = ("evals",)

# Where agents look for user-level skills, first match wins for the default.
_AGENT_DIRS = {"claude": Path("~/.claude/skills"), "codex": Path("~/.codex/skills"),
               "agents": Path("~/.agents/skills")}


def default_skills_dir(agent: str) -> Path:
    """The user-level skills folder of `agent` (claude, codex or agents)."""
    if agent not in _AGENT_DIRS:
        raise UsageError(f"unknown agent {agent!r}; choose one of {', '.join(_AGENT_DIRS)} or "
                         "give --dir")
    return _AGENT_DIRS[agent].expanduser()


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
    if destination.exists() and not force:
        raise UsageError(f"{destination} exists; pass --force to replace it with this version")
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
