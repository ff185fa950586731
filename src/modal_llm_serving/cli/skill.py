"""`mls skill path|install|eval`: the skill this toolkit carries."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modal_llm_serving import __version__
from modal_llm_serving.cli.options import echo_json, say
from modal_llm_serving.cli.params import LONGEST_WAIT_S, Finite
from modal_llm_serving.cli.root import cli


@cli.group()
def skill() -> None:
    """The agent skill this toolkit carries (the same release: no skew between the two)."""


@skill.command("path")
def skill_path() -> None:
    """Print the folder of the skill this installation carries."""
    from modal_llm_serving.skill import skill_dir

    say(str(skill_dir()))


@skill.command("install")
@click.option("--agent", type=click.Choice(["all", "agents", "claude"]), default="all",
              show_default=True,
              help="Whose skills folder: .agents/skills (Codex and the skills CLI's other "
                   "agents), .claude/skills (Claude Code), or both.")
@click.option("-g", "--global", "global_", is_flag=True,
              help="Into the home folder (~/.agents/skills, ~/.claude/skills) instead of the "
                   "current project's.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="One skills folder to install into instead.")
@click.option("--force", is_flag=True, help="Replace an installed copy.")
def skill_install(agent: str, global_: bool, folder: Path | None, force: bool) -> None:
    """Install the skill this toolkit carries (less its evals) where agents look for skills.

    The folders are the ones `modal skills install` and the skills CLI (`npx skills add`) use:
    .agents/skills and .claude/skills in this project, or in your home folder with --global.
    """
    from modal_llm_serving.skill.install import install_skills, skills_dirs

    targets = [folder] if folder else skills_dirs(agent, global_=global_)
    installed = install_skills(targets, force=force)
    say(f"installed the modal-llm-serving skill ({__version__}) at "
        + " and ".join(str(path) for path in installed))


@skill.command("eval")
@click.option("--agent", type=click.Choice(["claude", "codex"]),
              help="Agent CLI to run [default: the first on PATH with credentials].")
@click.option("--suite", type=click.Choice(["trigger", "tasks", "all"]), default="all",
              show_default=True, help="trigger-evals.json, evals.json, or both.")
@click.option("--limit", type=click.IntRange(1, 100_000),
              help="Run only the first N of each suite.")
@click.option("--timeout", type=Finite(1, LONGEST_WAIT_S), default=900.0, show_default=True,
              help="Seconds one agent run may take.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder [default: results/evals-<UTC time>].")
def skill_eval(agent: str | None, suite: str, limit: int | None, timeout: float,
               out: Path | None) -> None:
    """Run the skill's evals through an agent CLI and score them (needs the agent's credentials).

    Trigger precision/recall from whether each query made the agent load this skill; each task
    case passes when the agent, as judge, finds every expectation met. Without an agent CLI with
    credentials it says so in one line and exits 0 (nothing to run).
    """
    from modal_llm_serving.skill.evals import find_agent, run_evals

    found = find_agent(agent)
    if found is None:
        say(f"evals skipped: no agent CLI with credentials on PATH "
            f"({agent or 'claude, codex'}); install one and log in to run them", err=True)
        return
    if out is None:
        from modal_llm_serving.bench.results import new_out_dir

        out = new_out_dir(Path("results"), "evals")  # never a folder another run has
    suites = ("trigger", "tasks") if suite == "all" else (suite,)
    summary = run_evals(agent=found, out_dir=out, suites=suites, limit=limit, timeout=timeout,
                        on_case=lambda row: say(json.dumps(row), limit=160, err=True))
    echo_json(summary)
    say(f"results: {out}", err=True)
