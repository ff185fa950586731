"""`mls smoke URL`: is an OpenAI-compatible endpoint up and answering correctly?"""

from __future__ import annotations

import sys
from typing import Any

import click

from modal_llm_serving.cli.options import (
    echo_json,
    header_option,
    proxy_auth_options,
    request_headers,
    say,
)
from modal_llm_serving.cli.params import LONGEST_WAIT_S, SECRET, URL, Finite
from modal_llm_serving.cli.root import cli


@cli.command()
@click.argument("url", type=URL)
@click.option("--api-key", envvar="MLS_API_KEY", type=SECRET,
              help="Bearer key for /v1 routes [env MLS_API_KEY].")
@click.option("--model", help="Model id to test [default: the only served model].")
@header_option("Extra header on every request (repeatable), e.g. 'Modal-Session-ID: s1'.")
@click.option("--ready-timeout", type=Finite(0, LONGEST_WAIT_S), default=300.0, show_default=True,
              help="Seconds to wait for readiness in all (scale-from-zero can take minutes).")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=120.0,
              show_default=True, help="Seconds each later request may take in all.")
@proxy_auth_options
@click.option("--json", "json_", is_flag=True, help="Print the report as JSON.")
def smoke(url: str, api_key: str | None, model: str | None, headers: tuple[str, ...],
          ready_timeout: float, timeout: float, proxy_token_id: str | None,
          proxy_token_secret: str | None, json_: bool) -> None:
    """Smoke-test the OpenAI-compatible endpoint at URL (its root, e.g. http://127.0.0.1:8000).

    Waits for readiness (retrying refused connections and 502/503/504), then checks /health,
    /v1/models, one chat completion and one streamed chat completion. Exits 0 only if all pass.
    """
    from modal_llm_serving.endpoint.smoke import run_smoke

    report = run_smoke(url, api_key=api_key, model=model,
                       headers=request_headers(headers, proxy_token_id, proxy_token_secret),
                       ready_timeout=ready_timeout, request_timeout=timeout,
                       on_wait=lambda message: say(message, err=True))
    if json_:
        echo_json(report.to_dict())
    else:
        render_smoke(report)
    if not report.ok:
        sys.exit(1)


def render_smoke(report: Any) -> None:
    say(f"smoke test of {report.base_url} (model: {report.model or '?'})")
    for step in report.steps:
        mark = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}[step.status]
        say(f"  {mark}  {step.name:<12} {step.seconds:6.2f} s  {step.detail}")
    if failed := report.failed:
        say(f"failed at '{failed.name}'. Try: {failed.hint}", err=True)
    else:
        say("all steps passed")
