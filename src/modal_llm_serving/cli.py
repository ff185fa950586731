"""The `mls` command line: each command parses, calls the library once, and renders.

Exit codes: 0 success; 1 a check, smoke test or run found a problem (or an expected error, shown
as one line); 2 bad usage (unknown flag, invalid value).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from modal_llm_serving import __version__
from modal_llm_serving.errors import EngineStartError, MlsError, UsageError

P = ParamSpec("P")
R = TypeVar("R")


def expected_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the library's expected errors into one-line messages (no traceback), exit 1."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from exc
        except EngineStartError as exc:
            if exc.log_tail:
                click.echo(f"--- last lines of {exc.log_path} ---\n{exc.log_tail.rstrip()}\n---",
                           err=True)
            raise click.ClickException(str(exc)) from exc
        except MlsError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    """`Name: value` pairs from repeated --header options."""
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not 'Name: value'", param_hint="--header")
        headers[name.strip()] = content.strip()
    return headers


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mls")
def cli() -> None:
    """Serve open-weight LLMs on Modal with vLLM and SGLang.

    \b
    mls local serve              real vLLM on this machine, embedded SmolLM2, smoke-tested
    mls smoke URL                is an OpenAI-compatible endpoint up and correct?
    mls doctor                   is this machine's Modal CLI, SDK, python, profile right?
    """


# --- mls smoke ---------------------------------------------------------------------------------


@cli.command()
@click.argument("url")
@click.option("--api-key", envvar="MLS_API_KEY",
              help="Bearer key for /v1 routes [env MLS_API_KEY].")
@click.option("--model", help="Model id to test [default: the only served model].")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="Extra header on every request (repeatable), e.g. 'Modal-Session-ID: s1'.")
@click.option("--ready-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds to wait for readiness (scale-from-zero can take minutes).")
@click.option("--json", "json_", is_flag=True, help="Print the report as JSON.")
@expected_errors
def smoke(url: str, api_key: str | None, model: str | None, headers: tuple[str, ...],
          ready_timeout: float, json_: bool) -> None:
    """Smoke-test the OpenAI-compatible endpoint at URL (its root, e.g. http://127.0.0.1:8000).

    Waits for readiness (retrying refused connections and 502/503/504), then checks /health,
    /v1/models, one chat completion and one streamed chat completion. Exits 0 only if all pass.
    """
    from modal_llm_serving.smoke import run_smoke

    try:
        report = run_smoke(url, api_key=api_key, model=model, headers=parse_headers(headers),
                           ready_timeout=ready_timeout,
                           on_wait=lambda message: click.echo(message, err=True))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    if json_:
        echo_json(report.to_dict())
    else:
        render_smoke(report)
    if not report.ok:
        sys.exit(1)


def render_smoke(report: Any) -> None:
    click.echo(f"smoke test of {report.base_url} (model: {report.model or '?'})")
    for step in report.steps:
        mark = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}[step.status]
        click.echo(f"  {mark}  {step.name:<12} {step.seconds:6.2f} s  {step.detail}")
    if failed := report.failed:
        click.echo(f"failed at '{failed.name}'. Try: {failed.hint}", err=True)
    else:
        click.echo("all steps passed")


# --- mls local ---------------------------------------------------------------------------------


@cli.group()
def local() -> None:
    """Run the engine on this machine, with the same command line a recipe runs on Modal."""


@local.command("serve")
@click.option("--model",
              help="Checkpoint folder or Hub id [default: embedded SmolLM2-135M-Instruct].")
@click.option("--revision", help="Commit hash; required with a Hub id.")
@click.option("--served-model-name", help="Id clients send [default: the model's name].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port [default: a free one].")
@click.option("--max-model-len", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Context length (prompt + output tokens).")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequences decoded together.")
@click.option("--kv-cache-gib", type=click.IntRange(min=1), default=1, show_default=True,
              help="KV cache space for the CPU build (VLLM_CPU_KVCACHE_SPACE).")
@click.option("--api-key", envvar="MLS_API_KEY",
              help="Require this bearer key on /v1 [env MLS_API_KEY; default: none locally].")
@click.option("--log-file", type=click.Path(dir_okay=False, writable=True),
              help="Engine log [default: <cache>/logs/vllm-PORT.log].")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for the engine.")
@click.option("--exit-after-smoke", is_flag=True,
              help="Stop the engine once the smoke test has run; exit with its result.")
@expected_errors
def local_serve(model: str | None, revision: str | None, served_model_name: str | None,
                host: str, port: int | None, max_model_len: int, max_num_seqs: int,
                kv_cache_gib: int, api_key: str | None, log_file: str | None,
                ready_timeout: float, exit_after_smoke: bool) -> None:
    """Serve a model with real vLLM here, wait until it lists the model, smoke-test it.

    Then it keeps serving until Ctrl-C (or SIGTERM), which stops the engine and its children.
    """
    from pathlib import Path

    from modal_llm_serving.engines import EngineConfig, for_local_cpu
    from modal_llm_serving.local import engine_build, free_port, resolve_model, start_server
    from modal_llm_serving.smoke import run_smoke

    build = engine_build()
    if build is not None:
        kind = "CPU build" if build == "vllm-cpu" else "CUDA build"
        click.echo(f"engine: {build} ({kind})", err=True)
    if model is None:
        click.echo("model: embedded SmolLM2-135M-Instruct (converted once, then cached)", err=True)
    path, pinned, default_name = resolve_model(model, revision)
    config = EngineConfig(
        model=path, revision=pinned, served_model_name=served_model_name or default_name,
        host=host, port=port or free_port(host), max_model_len=max_model_len,
        max_num_seqs=max_num_seqs, api_key=api_key)
    if build == "vllm-cpu":
        config = for_local_cpu(config)
    server = start_server(config, kv_cache_gib=kv_cache_gib,
                          log_path=Path(log_file) if log_file else None)
    _stop_on_sigterm()
    try:
        click.echo(f"engine log: {server.log_path}", err=True)
        seconds = server.wait_ready(timeout=ready_timeout, on_wait=_show_wait())
        click.echo(f"\nready in {seconds:.1f} s at {server.base_url}", err=True)
        report = run_smoke(server.base_url, api_key=api_key, model=server.served_model_name)
        render_smoke(report)
        if not report.ok or exit_after_smoke:
            sys.exit(0 if report.ok else 1)
        click.echo(_usage_examples(server.base_url, server.served_model_name, api_key))
        click.echo("serving; Ctrl-C stops the engine", err=True)
        server.process.wait()
        raise EngineStartError(f"the engine exited with code {server.process.returncode}",
                               log_tail=server.log_tail(), log_path=str(server.log_path))
    except KeyboardInterrupt:
        click.echo("\nstopping the engine", err=True)
    finally:
        server.stop()


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _show_wait() -> Callable[[float, str], None]:
    """A one-line progress display: seconds waited and the engine's latest log line."""
    interactive = sys.stderr.isatty()
    last_shown = [-10.0]

    def show(waited: float, line: str) -> None:
        if interactive:
            click.echo(f"\rwaiting for the engine: {waited:4.0f} s  {line[-70:]:<70}",
                       nl=False, err=True)
        elif waited - last_shown[0] >= 10:
            last_shown[0] = waited
            click.echo(f"waiting for the engine: {waited:.0f} s", err=True)

    return show


def _usage_examples(base_url: str, model: str, api_key: str | None) -> str:
    auth = " -H 'Authorization: Bearer $MLS_API_KEY'" if api_key else ""
    key = 'os.environ["MLS_API_KEY"]' if api_key else '"unused"'
    return f"""
base URL: {base_url}/v1

  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  import os
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}/v1", api_key={key})
  reply = client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)
"""


# --- mls doctor --------------------------------------------------------------------------------


@cli.command()
@click.option("--python", "python_", type=click.Path(exists=True, dir_okay=False),
              help="Interpreter whose modal and engines to check [default: the one running mls].")
@click.option("--json", "json_", is_flag=True, help="Print the report as JSON.")
@expected_errors
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
        click.echo(f"{mark}  {check.title:<19} {check.summary}")
        if check.fix and check.status != "ok":
            click.echo(f"      {'':<19} fix: {check.fix}")
    failed = sum(check.status == "fail" for check in report.checks)
    warned = sum(check.status == "warn" for check in report.checks)
    click.echo(f"{failed} failed, {warned} warnings" if failed or warned else "all checks ok")


# --- mls dev -----------------------------------------------------------------------------------


@cli.group()
def dev() -> None:
    """Commands for developing this toolkit itself."""


@dev.command("sync-recipes")
@click.option("--check", is_flag=True,
              help="Change nothing; exit 1 if any recipe's copy differs from engines.py.")
@click.option("--dir", "folder", type=click.Path(exists=True, file_okay=False),
              help="Recipes folder [default: the skill's scripts/ in this checkout].")
@expected_errors
def dev_sync_recipes(check: bool, folder: str | None) -> None:
    """Copy the engine-command block of engines.py into every recipe that differs.

    Each recipe carries a verbatim copy (between `# BEGIN engine-command` and
    `# END engine-command`) so it imports with only `modal` installed.
    """
    from pathlib import Path

    from modal_llm_serving.recipes import stale_recipes, sync_recipes

    where = Path(folder) if folder else None
    if check:
        if stale := stale_recipes(where):
            names = ", ".join(path.name for path in stale)
            raise click.ClickException(f"out of date: {names}; run `mls dev sync-recipes`")
        click.echo("every recipe's engine block matches engines.py")
        return
    changed = sync_recipes(where)
    for path in changed:
        click.echo(f"updated {path}")
    click.echo(f"{len(changed)} recipe(s) updated" if changed else "already in sync")


def main() -> None:
    cli(prog_name="mls")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
