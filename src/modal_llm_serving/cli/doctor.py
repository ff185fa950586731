"""`mls doctor`: is this machine's Modal CLI, SDK, Python and profile right?"""

from __future__ import annotations

import sys
from typing import Any

import click

from modal_llm_serving.cli.options import echo_json, say
from modal_llm_serving.cli.root import cli


@cli.command()
@click.option("--python", "python_", type=click.Path(exists=True, dir_okay=False),
              help="Interpreter whose modal and engines to check [default: the one running mls].")
@click.option("--json", "json_", is_flag=True, help="Print the report as JSON.")
def doctor(python_: str | None, json_: bool) -> None:
    """Is this machine's Modal CLI, SDK, Python and profile what you think it is?

    Checks the `modal` CLI on PATH and its version, the modal package and sys.executable of this
    python, which interpreter the CLI really runs (read from its launcher; a loud warning when it
    is not the environment of this python or of `python` on PATH), the active profile and
    whether a token is configured (never shown, not validated), a Hugging Face token, local vLLM
    and SGLang, and a GPU. Exits 1 if any check fails; warnings do not fail.
    """
    from modal_llm_serving.doctor import run_doctor

    report = run_doctor(python=python_)
    if json_:
        echo_json(report.to_dict())
    else:
        render_doctor(report)
    if not report.ok:
        sys.exit(1)


def render_doctor(report: Any) -> None:
    for check in report.checks:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[check.status]
        say(f"{mark}  {check.title:<19} {check.summary}")
        if check.fix and check.status != "ok":
            say(f"      {'':<19} fix: {check.fix}")
    failed = sum(check.status == "fail" for check in report.checks)
    warned = sum(check.status == "warn" for check in report.checks)
    say(f"{failed} failed, {warned} warnings" if failed or warned else "all checks ok")
