"""`mls check FILE...`: app files against the serving rules (exit 1 on findings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from modal_llm_serving.cli.options import dataclasses_asdict, echo_json, say
from modal_llm_serving.cli.params import Finite
from modal_llm_serving.cli.root import cli
from modal_llm_serving.errors import UsageError


@cli.command("check")
@click.argument("files", nargs=-1, metavar="FILE_OR_FOLDER...", type=click.Path(path_type=Path))
@click.option("--json", "json_", is_flag=True, help="Print the findings as JSON.")
@click.option("--no-import", is_flag=True,
              help="Static checks only; do not import the files with the Modal SDK.")
@click.option("--import-timeout", type=Finite(1, 3600), default=60.0, show_default=True,
              help="Seconds an import may take before it counts as hanging.")
@click.option("--python", "python_", type=click.Path(exists=True, dir_okay=False),
              help="Interpreter for the import check: the one behind your `modal` CLI "
                   "[default: this one].")
@click.option("--list", "list_", is_flag=True, help="List the rules and exit.")
def check_command(files: tuple[Path, ...], json_: bool, no_import: bool,
                  import_timeout: float, python_: str | None, list_: bool) -> None:
    """Check Modal LLM app files against the serving rules.

    Static checks read the syntax tree; then each file is imported with the real Modal SDK in a
    child process (where module-level code only defines things), so a crash or hang on import
    is a finding too. Exit codes: 0 no findings; 1 findings; 2 bad usage (e.g. missing file).
    """
    from modal_llm_serving.check import RULES, check_files, import_skipped_reason, startup_note

    if list_:
        if json_:
            echo_json([dataclasses_asdict(rule) for rule in RULES])
        else:
            for rule in RULES:
                say(f"{rule.id} {rule.name}", f"    why: {rule.message}", f"    fix: {rule.fix}")
        return
    if not files:
        raise UsageError("name at least one app file or folder (or --list for the rules)")
    if python_ and not no_import and not os.access(python_, os.X_OK):
        raise UsageError(f"--python {python_} is not an executable program; give the "
                         "interpreter behind your `modal` CLI (see `mls doctor`)")
    paths: list[Path] = []
    for path in files:
        if path.is_dir():  # a folder: every Python file in it and in its folders
            if not (found := python_files(path)):
                raise UsageError(f"{path} holds no .py file (its hidden folders and "
                                 "__pycache__ left out); name the app file to check")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    for path in paths:
        if not no_import and (reason := import_skipped_reason(path)):
            say(f"note: {path} not imported ({reason}); static checks only", err=True)
        if unchecked := startup_note(path):  # one line, never a finding: exit codes stay
            say(f"note: {path}: the startup rules that need these were skipped: {unchecked}",
                err=True)
    if not no_import and len(paths) > 1:
        say(f"checking {len(paths)} files (each imported with the Modal SDK, about a "
            "second apiece)", err=True)
    findings = check_files(paths, import_check=not no_import, import_timeout=import_timeout,
                           python=python_)
    if json_:
        echo_json({"files": len(paths), "findings": [f.to_dict() for f in findings]})
    else:
        render_findings(findings, files=len(paths))
    if findings:
        sys.exit(1)


def python_files(folder: Path) -> list[Path]:
    """Every .py file under `folder`, sorted; hidden folders (.venv, .git) and __pycache__ are
    not apps, and symlinked folders are not followed (a loop would never end)."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and name != "__pycache__")
        found += [Path(root) / name for name in names if name.endswith(".py")]
    return sorted(found)


def render_findings(findings: list[Any], *, files: int) -> None:
    for finding in findings:
        say(f"{finding.location()}: {finding.rule.id} {finding.rule.name}  {finding.detail}",
            f"    why: {finding.rule.message}", f"    fix: {finding.rule.fix}")
    plural = "s" if files != 1 else ""
    if findings:
        say(f"mls check: {len(findings)} finding(s) in {files} file{plural}")
    else:
        say(f"mls check: no findings in {files} file{plural}")
