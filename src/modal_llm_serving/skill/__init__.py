"""The agent skill this toolkit carries: where it is, installing it, running its evals."""

from __future__ import annotations

from pathlib import Path

from modal_llm_serving.errors import UsageError

__all__ = ["SKILL_NAME", "skill_dir"]

SKILL_NAME = "modal-llm-serving"


def skill_dir() -> Path:
    """The skill folder this installation carries (a checkout's, else the wheel's copy).

    The one place that knows where the skill is: its recipes (`scripts/`), references and evals
    are all found from here.
    """
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parents[1] / "skills" / SKILL_NAME, package / "_skill"):
        if (candidate / "SKILL.md").is_file():
            return candidate
    raise UsageError(f"this installation carries no skill folder (looked in {package / '_skill'});"
                     " reinstall the toolkit from its repository")
