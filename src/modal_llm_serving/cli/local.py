"""`mls local serve|command`: a recipe's own engine command, run with real vLLM here."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from modal_llm_serving.cli.options import P, R, dataclasses_asdict, echo_json, say, say_over
from modal_llm_serving.cli.params import LONGEST_WAIT_S, SECRET, Finite
from modal_llm_serving.cli.root import cli
from modal_llm_serving.cli.smoke import render_smoke
from modal_llm_serving.display import terminal_text
from modal_llm_serving.errors import EngineStartError
from modal_llm_serving.recipes.files import RECIPE_TIMEOUT_S
from modal_llm_serving.recipes.table import RECIPE_NAMES, recipe_for


@cli.group()
def local() -> None:
    """Run the engine on this machine, with the same command line a recipe runs on Modal."""


def recipe_option(command: Callable[P, R]) -> Callable[P, R]:
    command = click.option(
        "--import-timeout", type=Finite(1, 3600), default=RECIPE_TIMEOUT_S, show_default=True,
        help="Seconds the recipe may take to import and build its command (it runs in a "
             "child process).")(command)
    return click.option(
        "--recipe", default=recipe_for("online").name, show_default=True, metavar="FILE_OR_NAME",
        help="The app whose engine command to run: a file (e.g. one `mls new` wrote) or a recipe "
             f"name ({', '.join(RECIPE_NAMES[:2])}, ...).")(command)


def model_options(command: Callable[P, R]) -> Callable[P, R]:
    for option in reversed([
        click.option("--model", help="Checkpoint folder or Hub id served in place of the "
                                     "recipe's [default: embedded SmolLM2-135M-Instruct]."),
        click.option("--revision", help="Commit hash; required with a Hub id."),
        click.option("--served-model-name", help="Id clients send [default: the model's name]."),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Interface to listen on."),
        click.option("--port", type=click.IntRange(1, 65535), help="Port [default: a free one]."),
    ]):
        command = option(command)
    return command


@local.command("serve")
@recipe_option
@model_options
@click.option("--kv-cache-gib", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="KV cache space for the CPU build (VLLM_CPU_KVCACHE_SPACE).")
@click.option("--api-key", envvar="MLS_API_KEY", type=SECRET,
              help="Require this bearer key on /v1 [env MLS_API_KEY; default: none locally].")
@click.option("--log-file", type=click.Path(dir_okay=False, writable=True),
              help="Engine log [default: <cache>/logs/vllm-PORT.log].")
@click.option("--ready-timeout", type=Finite(1, LONGEST_WAIT_S), default=300.0, show_default=True,
              help="Seconds to wait for the engine.")
@click.option("--exit-after-smoke", is_flag=True,
              help="Stop the engine once the smoke test has run; exit with its result.")
def local_serve(recipe: str, import_timeout: float, model: str | None, revision: str | None,
                served_model_name: str | None, host: str, port: int | None, kv_cache_gib: int,
                api_key: str | None, log_file: str | None, ready_timeout: float,
                exit_after_smoke: bool) -> None:
    """Serve a recipe's own engine command with real vLLM here, then smoke-test it.

    The command comes from the recipe (its engine_command()), with the model, host and port
    passed as its keyword overrides and, on the CPU build, the documented CPU transforms applied;
    every difference is printed. Then it waits until the model is listed, runs the smoke test and
    keeps serving until Ctrl-C (or SIGTERM), which stops the engine and its children and exits
    130 (SIGTERM: 143), as every interrupted command does.
    """
    from modal_llm_serving.endpoint.smoke import run_smoke
    from modal_llm_serving.local.serve import engine_build, start_server

    build = engine_build()
    command = _local_command(recipe, model, revision, served_model_name, host, port, build,
                             show=lambda message: say(message, err=True),
                             import_timeout=import_timeout)
    server = start_server(command, api_key=api_key, kv_cache_gib=kv_cache_gib,
                          log_path=Path(log_file) if log_file else None)
    try:
        say(f"engine log: {server.log_path}", err=True)
        seconds = server.wait_ready(timeout=ready_timeout, on_wait=_show_wait())
        say("", f"ready in {seconds:.1f} s at {server.base_url}", err=True)
        report = run_smoke(server.base_url, api_key=api_key, model=server.served_model_name)
        render_smoke(report)
        if not report.ok or exit_after_smoke:
            sys.exit(0 if report.ok else 1)
        say(*_usage_examples(server.base_url, server.served_model_name, api_key).split("\n"))
        say("serving; Ctrl-C stops the engine", err=True)
        server.process.wait()
        raise EngineStartError(f"the engine exited with code {server.process.returncode}",
                               log_tail=server.log_tail(), log_path=str(server.log_path))
    except KeyboardInterrupt:
        say("", "stopping the engine", err=True)
        raise  # the root command says how it was stopped and exits 130 (SIGTERM: 143)
    finally:
        server.stop()


@local.command("command")
@recipe_option
@model_options
@click.option("--check/--no-check", default=True, show_default=True,
              help="Parse the recipe's command with the engine's own parser (installed vLLM or "
                   "SGLang).")
@click.option("--json", "json_", is_flag=True, help="Print the commands as JSON.")
def local_command_(recipe: str, import_timeout: float, model: str | None, revision: str | None,
                   served_model_name: str | None, host: str, port: int | None, check: bool,
                   json_: bool) -> None:
    """Print a recipe's engine command, the one `mls local serve` runs here, and each change.

    With --check (the default) the recipe's command is parsed by the engine's own argument
    parser, so a flag the pinned engine version does not know fails here, not on a GPU.
    """
    from modal_llm_serving.local.argv import engine_of
    from modal_llm_serving.local.engine_args import parse_command
    from modal_llm_serving.local.serve import engine_build, launcher_argv
    from modal_llm_serving.recipes.files import recipe_commands, resolve_recipe

    path = resolve_recipe(recipe)
    [recipe_argv] = recipe_commands(path, [{}], timeout=import_timeout)
    if check:
        parse_command(recipe_argv)
    if engine_of(recipe_argv) == "sglang":  # nothing runs it here; the parser check is all
        if json_:
            echo_json({"recipe": str(path), "recipe_argv": recipe_argv, "checked": check})
        else:
            say(f"recipe's command ({path.name}):", f"  {shlex.join(recipe_argv)}")
            say("SGLang has no CPU build: `mls local serve` cannot run it here"
                + ("; SGLang's own parser accepts it" if check else ""))
        return
    command = _local_command(recipe, model, revision, served_model_name, host, port,
                             engine_build(), show=None if json_ else say,
                             import_timeout=import_timeout)
    if json_:
        echo_json({"recipe": str(path), "recipe_argv": command.recipe_argv,
                   "argv": launcher_argv(command.argv), "env": command.env, "checked": check,
                   "changes": [dataclasses_asdict(change) for change in command.changes]})
    elif check:
        say("vLLM's own parser accepts the recipe's command")


def _local_command(recipe: str, model: str | None, revision: str | None,
                   served_model_name: str | None, host: str, port: int | None,
                   build: str | None, *, show: Callable[[str], None] | None,
                   import_timeout: float) -> Any:
    """Build the command `mls local serve` runs; `show` each step and the result, if given."""
    from modal_llm_serving.local.serve import launcher_argv, local_command
    from modal_llm_serving.recipes.files import resolve_recipe

    say = show or (lambda _message: None)
    path = resolve_recipe(recipe)
    command = local_command(path, model=model, revision=revision,
                            served_model_name=served_model_name, host=host, port=port,
                            build=build, progress=say, import_timeout=import_timeout)
    say(f"recipe's command ({path.name}):")
    say(f"  {shlex.join(command.recipe_argv)}")
    say("runs here:")
    say(f"  {shlex.join(launcher_argv(command.argv))}")
    say("differences:" if command.changes else "differences: none")
    for change in command.changes:
        say(f"  {change.describe()}")
    if command.env:
        from modal_llm_serving.local.transforms import CPU_ENVIRONMENT

        reasons = {setting.variable: setting.reason for setting in CPU_ENVIRONMENT}
        say("environment (the command is unchanged; a value you set yourself wins):")
        for variable, value in command.env.items():
            say(f"  {variable}={value}: {reasons.get(variable, '')}")
    return command


def _show_wait() -> Callable[[float, str], None]:
    """A one-line progress display: seconds waited and the engine's latest log line."""
    interactive = sys.stderr.isatty()
    last_shown = [-10.0]

    def show(waited: float, line: str) -> None:
        if interactive:
            latest = terminal_text(line)[-70:]  # masked before it is cut: no part of a key
            say_over(f"waiting for the engine: {waited:4.0f} s  {latest:<70}")
        elif waited - last_shown[0] >= 10:
            last_shown[0] = waited
            say(f"waiting for the engine: {waited:.0f} s", err=True)

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
