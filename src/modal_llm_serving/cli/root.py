"""The `mls` command line: each command parses, calls the library once, and renders.

Exit codes (the README's contract): 0 success; 1 a check, smoke test or run found a problem, or
an expected failure (shown as one line); 2 bad input (an option, a file, a URL; one line naming
it); 3 an internal error (a bug: one line, details in a log file); 130 interrupted (Ctrl-C).
Every error reaches the user through `MlsGroup.invoke`, the one place they become messages.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from modal_llm_serving import __version__
from modal_llm_serving.cli.params import LONGEST_WAIT_S, Finite
from modal_llm_serving.errors import EngineStartError, MlsError, UsageError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_PROBLEM, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 3, 130  # 2 (bad input) is click's own


class InternalError(click.ClickException):
    """An unexpected exception, shown as one line; its traceback went to a log file."""

    exit_code = EXIT_INTERNAL


class MlsGroup(click.Group):
    """The root command: turns every exception a command raises into the contract above."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise  # click's own: already a message and an exit code
        except UsageError as exc:
            raise click.UsageError(_message(exc)) from None
        except EngineStartError as exc:
            if exc.log_tail:
                click.echo(f"--- last lines of {exc.log_path} ---\n{_redacted(exc.log_tail)}"
                           "\n---", err=True)
            raise click.ClickException(_message(exc)) from None
        except MlsError as exc:
            raise click.ClickException(_message(exc)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # `mls ... | head`: the reader left; nothing more to say
            sys.stderr.close()
            raise click.exceptions.Exit(EXIT_PROBLEM) from None
        except Exception as exc:  # a bug: one line here, the traceback in a file
            raise InternalError(_internal_error(exc)) from None


def _message(exc: BaseException) -> str:
    """An error's text as one redacted line (messages may quote URLs and server bodies)."""
    from modal_llm_serving.endpoint.wire import one_line

    return one_line(_redacted(str(exc)), 600)


def _argv_secrets(argv: list[str]) -> list[str]:
    """Values given on the command line for options that carry credentials."""
    from modal_llm_serving.redact import is_secret_header

    found = []
    for index, word in enumerate(argv):
        name, eq, inline = word.partition("=")
        value = inline if eq else (argv[index + 1] if index + 1 < len(argv) else "")
        if name.startswith("--") and any(part in name for part in ("key", "secret", "token")):
            found.append(value)
        if name == "--header":
            header, _, content = value.partition(":")
            if is_secret_header(header):
                found.append(content.strip())
    return [value for value in found if value]


def _redacted(text: str) -> str:
    from modal_llm_serving.redact import redact_text

    return redact_text(text, _argv_secrets(sys.argv))


def _internal_error(exc: Exception) -> str:
    """Write the traceback (redacted) to a log file; return the one line to show."""
    from modal_llm_serving.local.embedded_model import cache_dir

    summary = _message(exc)[:200]
    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mls-error-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{os.getpid()}.log"
        details = "".join(traceback.format_exception(exc))
        path.write_text(f"mls {__version__}, python {sys.version.split()[0]}\n"
                        f"command: {_redacted(shlex.join(sys.argv))}\n\n{_redacted(details)}",
                        encoding="utf-8")
        where = f"details in {path}"
    except OSError as log_error:
        where = f"(no log file: {log_error.strerror or log_error})"
    return (f"internal error: {type(exc).__name__}: {summary} — a bug in mls, not your input; "
            f"{where}; please report it with that file")


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


def proxy_auth_options(command: Callable[P, R]) -> Callable[P, R]:
    """Modal proxy auth (a Server, or a web endpoint with requires_proxy_auth=True)."""
    for option in reversed([
        click.option("--proxy-token-id", envvar="MODAL_PROXY_TOKEN_ID", metavar="WK-...",
                     help="Modal proxy auth token id, sent as Modal-Key "
                          "[env MODAL_PROXY_TOKEN_ID]."),
        click.option("--proxy-token-secret", envvar="MODAL_PROXY_TOKEN_SECRET", metavar="WS-...",
                     help="Its secret, sent as Modal-Secret [env MODAL_PROXY_TOKEN_SECRET]; "
                          "never printed or stored."),
    ]):
        command = option(command)
    return command


def request_headers(headers: tuple[str, ...], proxy_token_id: str | None,
                    proxy_token_secret: str | None) -> dict[str, str]:
    """--header values plus the Modal proxy auth pair, which must come together."""
    from modal_llm_serving.endpoint.client import check_headers

    parsed = parse_headers(headers)
    if bool(proxy_token_id) != bool(proxy_token_secret):
        raise click.UsageError("give both --proxy-token-id and --proxy-token-secret (or "
                               "MODAL_PROXY_TOKEN_ID and MODAL_PROXY_TOKEN_SECRET), or neither")
    if proxy_token_id and proxy_token_secret:
        parsed |= {"Modal-Key": proxy_token_id, "Modal-Secret": proxy_token_secret}
    return check_headers(parsed)


@click.group(cls=MlsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mls")
def cli() -> None:
    """Serve open-weight LLMs on Modal with vLLM and SGLang.

    \b
    mls local serve              real vLLM on this machine, embedded SmolLM2, smoke-tested
    mls smoke URL                is an OpenAI-compatible endpoint up and correct?
    mls doctor                   is this machine's Modal CLI, SDK, python, profile right?
    mls plan WORKLOAD.toml       GPU, engine settings, predicted ceilings, cost, in plain words
    mls new WORKLOAD.toml -o F   the matching recipe with the plan's settings, checked
    mls check FILE...            an app file against the serving rules (exit 1 on findings)
    """


# --- mls smoke ---------------------------------------------------------------------------------


@cli.command()
@click.argument("url")
@click.option("--api-key", envvar="MLS_API_KEY",
              help="Bearer key for /v1 routes [env MLS_API_KEY].")
@click.option("--model", help="Model id to test [default: the only served model].")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="Extra header on every request (repeatable), e.g. 'Modal-Session-ID: s1'.")
@click.option("--ready-timeout", type=Finite(0, LONGEST_WAIT_S), default=300.0, show_default=True,
              help="Seconds to wait for readiness (scale-from-zero can take minutes).")
@proxy_auth_options
@click.option("--json", "json_", is_flag=True, help="Print the report as JSON.")
def smoke(url: str, api_key: str | None, model: str | None, headers: tuple[str, ...],
          ready_timeout: float, proxy_token_id: str | None, proxy_token_secret: str | None,
          json_: bool) -> None:
    """Smoke-test the OpenAI-compatible endpoint at URL (its root, e.g. http://127.0.0.1:8000).

    Waits for readiness (retrying refused connections and 502/503/504), then checks /health,
    /v1/models, one chat completion and one streamed chat completion. Exits 0 only if all pass.
    """
    from modal_llm_serving.endpoint.smoke import run_smoke

    report = run_smoke(url, api_key=api_key, model=model,
                       headers=request_headers(headers, proxy_token_id, proxy_token_secret),
                       ready_timeout=ready_timeout,
                       on_wait=lambda message: click.echo(message, err=True))
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


def recipe_option(command: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--recipe", default="vllm_online", show_default=True, metavar="FILE_OR_NAME",
        help="The app whose engine command to run: a file (e.g. one `mls new` wrote) or a recipe "
             "name (vllm_online, vllm_cold_start, ...).")(command)


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
@click.option("--api-key", envvar="MLS_API_KEY",
              help="Require this bearer key on /v1 [env MLS_API_KEY; default: none locally].")
@click.option("--log-file", type=click.Path(dir_okay=False, writable=True),
              help="Engine log [default: <cache>/logs/vllm-PORT.log].")
@click.option("--ready-timeout", type=Finite(1, LONGEST_WAIT_S), default=300.0, show_default=True,
              help="Seconds to wait for the engine.")
@click.option("--exit-after-smoke", is_flag=True,
              help="Stop the engine once the smoke test has run; exit with its result.")
def local_serve(recipe: str, model: str | None, revision: str | None,
                served_model_name: str | None, host: str, port: int | None, kv_cache_gib: int,
                api_key: str | None, log_file: str | None, ready_timeout: float,
                exit_after_smoke: bool) -> None:
    """Serve a recipe's own engine command with real vLLM here, then smoke-test it.

    The command comes from the recipe (its engine_command()), with the model, host and port
    passed as its keyword overrides and, on the CPU build, the documented CPU transforms applied;
    every difference is printed. Then it waits until the model is listed, runs the smoke test and
    keeps serving until Ctrl-C (or SIGTERM), which stops the engine and its children.
    """
    from modal_llm_serving.endpoint.smoke import run_smoke
    from modal_llm_serving.local.serve import engine_build, start_server

    build = engine_build()
    command = _local_command(recipe, model, revision, served_model_name, host, port, build,
                             show=lambda message: click.echo(message, err=True))
    server = start_server(command, api_key=api_key, kv_cache_gib=kv_cache_gib,
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


@local.command("command")
@recipe_option
@model_options
@click.option("--check/--no-check", default=True, show_default=True,
              help="Parse the recipe's command with the engine's own parser (installed vLLM or "
                   "SGLang).")
@click.option("--json", "json_", is_flag=True, help="Print the commands as JSON.")
def local_command_(recipe: str, model: str | None, revision: str | None,
                   served_model_name: str | None, host: str, port: int | None, check: bool,
                   json_: bool) -> None:
    """Print a recipe's engine command, the one `mls local serve` runs here, and each change.

    With --check (the default) the recipe's command is parsed by the engine's own argument
    parser, so a flag the pinned engine version does not know fails here, not on a GPU.
    """
    from modal_llm_serving.local.engine_args import parse_command
    from modal_llm_serving.local.serve import engine_build, launcher_argv
    from modal_llm_serving.local.transforms import engine_of
    from modal_llm_serving.recipes.files import load_recipe, recipe_command, resolve_recipe

    path = resolve_recipe(recipe)
    recipe_argv = recipe_command(load_recipe(path))
    if check:
        parse_command(recipe_argv)
    if engine_of(recipe_argv) == "sglang":  # nothing runs it here; the parser check is all
        if json_:
            echo_json({"recipe": str(path), "recipe_argv": recipe_argv, "checked": check})
        else:
            click.echo(f"recipe's command ({path.name}):\n  {shlex.join(recipe_argv)}")
            click.echo("SGLang has no CPU build: `mls local serve` cannot run it here"
                       + ("; SGLang's own parser accepts it" if check else ""))
        return
    command = _local_command(recipe, model, revision, served_model_name, host, port,
                             engine_build(), show=None if json_ else click.echo)
    if json_:
        echo_json({"recipe": str(path), "recipe_argv": command.recipe_argv,
                   "argv": launcher_argv(command.argv), "env": command.env, "checked": check,
                   "changes": [dataclasses_asdict(change) for change in command.changes]})
    elif check:
        click.echo("vLLM's own parser accepts the recipe's command")


def _local_command(recipe: str, model: str | None, revision: str | None,
                   served_model_name: str | None, host: str, port: int | None,
                   build: str | None, *, show: Callable[[str], None] | None) -> Any:
    """Build the command `mls local serve` runs; `show` each step and the result, if given."""
    from modal_llm_serving.local.serve import launcher_argv, local_command
    from modal_llm_serving.recipes.files import resolve_recipe

    say = show or (lambda _message: None)
    path = resolve_recipe(recipe)
    command = local_command(path, model=model, revision=revision,
                            served_model_name=served_model_name, host=host, port=port,
                            build=build, progress=say)
    say(f"recipe's command ({path.name}):\n  {shlex.join(command.recipe_argv)}")
    say(f"runs here:\n  {shlex.join(launcher_argv(command.argv))}")
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
def doctor(python_: str | None, json_: bool) -> None:
    """Is this machine's Modal CLI, SDK, Python and profile what you think it is?

    Checks the `modal` CLI on PATH and its version, the modal package and sys.executable of this
    python, which interpreter the CLI really runs (read from its launcher; a loud warning when it
    is not the environment of this python or of `python` on PATH), the active profile and
    whether a token is configured (never shown, not validated), a Hugging Face token, local vLLM
    and SGLang, and a GPU. Exits 1 if any check fails; warnings do not fail.
    """
    from modal_llm_serving.doctor.checks import run_doctor

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


# --- mls revision -------------------------------------------------------------------------------


@cli.command("revision")
@click.argument("model")
@click.option("--ref", default="main", show_default=True, help="Branch or tag to resolve.")
def revision_command(model: str, ref: str) -> None:
    """Print the commit hash MODEL's REF points at on the Hub, to pin it (never guessed).

    Asks the Hub's API (HF_ENDPOINT if set; HF_TOKEN for gated models). Offline, or on any
    failure, it exits 1 with the reason and prints no hash.
    """
    from modal_llm_serving.facts.revision import resolve_revision

    click.echo(resolve_revision(model, ref=ref))


# --- mls skill -----------------------------------------------------------------------------------


@cli.group()
def skill() -> None:
    """The agent skill this toolkit carries (the same release: no skew between the two)."""


@skill.command("path")
def skill_path() -> None:
    """Print the folder of the skill this installation carries."""
    from modal_llm_serving.skill import skill_dir

    click.echo(str(skill_dir()))


@skill.command("install")
@click.option("--agent", type=click.Choice(["claude", "codex", "agents"]), default="claude",
              show_default=True, help="Whose user-level skills folder to install into.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Skills folder to install into instead (e.g. a project's .claude/skills).")
@click.option("--force", is_flag=True, help="Replace an installed copy.")
def skill_install(agent: str, folder: Path | None, force: bool) -> None:
    """Install exactly the skill this toolkit carries into an agent's skills folder."""
    from modal_llm_serving.skill.install import default_skills_dir, install_skill

    installed = install_skill(folder or default_skills_dir(agent), force=force)
    click.echo(f"installed the modal-llm-serving skill ({__version__}) at {installed}")


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
        click.echo(f"evals skipped: no agent CLI with credentials on PATH "
                   f"({agent or 'claude, codex'}); install one and log in to run them", err=True)
        return
    if out is None:
        from modal_llm_serving.bench.results import new_out_dir

        out = new_out_dir(Path("results"), "evals")  # never a folder another run has
    suites = ("trigger", "tasks") if suite == "all" else (suite,)
    summary = run_evals(agent=found, out_dir=out, suites=suites, limit=limit, timeout=timeout,
                        on_case=lambda row: click.echo(json.dumps(row)[:160], err=True))
    echo_json(summary)
    click.echo(f"results: {out}", err=True)


# --- mls bench ---------------------------------------------------------------------------------


@cli.group()
def bench() -> None:
    """Benchmark an OpenAI-compatible streaming endpoint (TTFT, TPOT, ITL, E2EL, throughput).

    \b
    mls bench run URL --concurrency 1,8,32 -n 200     closed-loop sweep
    mls bench run URL --rate 2,4 --duration 60         open loop (Poisson), from the schedule
    mls bench report results/bench-...                 re-render a saved run
    mls bench cold-start URL --repeat 3 --wait 900     time to first token from zero
    """


def _bench_common(command: Callable[P, R]) -> Callable[P, R]:
    """Options every bench command shares: who to talk to and how."""
    options: list[Callable[[Any], Any]] = [
        click.option("--model", help="Model id [default: the only served model]."),
        click.option("--api-key", envvar="MLS_API_KEY",
                     help="Bearer key for /v1 routes [env MLS_API_KEY]."),
        click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                     help="Extra header on every request (repeatable)."),
        proxy_auth_options,
        click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat",
                     show_default=True, help="/v1/chat/completions or /v1/completions."),
        click.option("--json", "json_", is_flag=True, help="Print the summary as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@bench.command("run")
@click.argument("url")
@_bench_common
@click.option("--concurrency", "-c", metavar="N[,N...]",
              help="Closed loop: requests in flight; a comma list sweeps [default: 1].")
@click.option("--rate", "-r", metavar="R[,R...]",
              help="Open loop: requests/s (inf = all at once); a comma list sweeps.")
@click.option("--arrival", type=click.Choice(["poisson", "constant", "gamma"]),
              default="poisson", show_default=True, help="Open-loop arrival process.")
@click.option("--burstiness", type=Finite(0, 1e6, min_open=True), default=1.0, show_default=True,
              help="Gamma shape (1 = Poisson, < 1 burstier).")
@click.option("--max-concurrency", type=click.IntRange(1, 100_000),
              help="Open loop: cap on requests in flight.")
@click.option("--num-requests", "-n", type=click.IntRange(1, 1_000_000_000),
              help="Requests per level [default: 100 unless --duration].")
@click.option("--duration", type=Finite(0, LONGEST_WAIT_S, min_open=True),
              help="Seconds per level; no new request starts after it.")
@click.option("--warmup", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds at the start excluded from the measurement window.")
@click.option("--cooldown", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds at the end excluded from the measurement window.")
@click.option("--input-len", default="128", show_default=True, metavar="SPEC",
              help="Prompt tokens: N, uniform:MIN:MAX or normal:MEAN:STD.")
@click.option("--output-len", metavar="SPEC",
              help="Output tokens (same forms) [default: 128, or from the dataset].")
@click.option("--dataset", type=click.Path(dir_okay=False, path_type=Path),
              help="Prompts: JSONL ({prompt, output_tokens} or {messages}) or ShareGPT JSON.")
@click.option("--tokenizer", help="Local tokenizer folder or Hub id [default: the server's "
                                  "/tokenize].")
@click.option("--turns", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Turns per conversation (multi-turn sessions reuse their prefix).")
@click.option("--session-header", default="Modal-Session-ID", show_default=True,
              help="Header carrying one id per conversation (sticky routing) when --turns > 1.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Ask for exactly the output length (vLLM/SGLang ignore_eos).")
@click.option("--min-tokens", is_flag=True,
              help="Also send min_tokens = output length (servers without ignore_eos).")
@click.option("--slo", "slos", multiple=True, metavar="METRIC:MS",
              help="SLO for goodput, e.g. --slo ttft:500 --slo tpot:50 (ttft, tpot, e2el).")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=600.0,
              show_default=True, help="Seconds a request may take in all.")
@click.option("--stall-timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True),
              default=120.0,
              show_default=True, help="Seconds a stream may go without a byte.")
@click.option("--retries", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Retries of a 429/503 answer (each attempt counted in the record).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Prompts and arrivals.")
@click.option("--transport", type=click.Choice(["raw", "aiohttp", "httpx"]), default="raw",
              show_default=True, help="HTTP client (raw measured lowest overhead).")
@click.option("--workers", type=click.IntRange(1, 256), metavar="N",
              help="Processes the streams are split over, each with its own event loop "
                   "[default: one per 128 streams, at most one per core].")
@click.option("--prewarm/--no-prewarm", default=True, show_default=True,
              help="Open the pool's connections before the clock starts (raw transport); "
                   "--no-prewarm counts first-request handshakes, as vllm bench serve does.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder [default: results/bench-<UTC time>].")
@click.option("--overwrite", is_flag=True,
              help="Replace the results already in --out (without it, a used folder is refused).")
@click.option("--no-report", is_flag=True, help="Skip the Markdown report and plots.")
def bench_run(url: str, headers: tuple[str, ...], proxy_token_id: str | None,
              proxy_token_secret: str | None, json_: bool, out: Path | None, overwrite: bool,
              no_report: bool, **options: Any) -> None:
    """Benchmark the endpoint at URL; write per-request JSONL, summary JSON and a report.

    Each level of a sweep runs to its bounds (--num-requests and/or --duration). Progress shows
    on stderr; results are written as requests finish, so Ctrl-C keeps what finished.
    """
    from modal_llm_serving.bench.api import BenchOptions, run_bench
    from modal_llm_serving.bench.report import render_report, summary_lines

    bench_options = BenchOptions(
        url=url, headers=request_headers(headers, proxy_token_id, proxy_token_secret), **options)
    chosen: list[Path] = []

    def on_level(level: Any, summary: dict[str, Any]) -> None:
        if not json_:
            click.echo("\n" + "\n".join(summary_lines(summary)))

    try:
        summaries = run_bench(
            bench_options, out_dir=out, overwrite=overwrite, on_out_dir=chosen.append,
            progress=_bench_progress(), on_info=lambda message: click.echo(message, err=True),
            on_level=on_level)
    except KeyboardInterrupt:
        if chosen and chosen[0].is_dir():
            click.echo(f"\ninterrupted: finished requests are in {chosen[0]} "
                       f"(`mls bench report {chosen[0]}` summarizes them)", err=True)
        else:
            click.echo("\ninterrupted before any request finished", err=True)
        sys.exit(EXIT_INTERRUPTED)
    out = chosen[0]
    if not no_report:
        click.echo(f"report: {render_report(out)}", err=True)
    click.echo(f"results: {out}", err=True)
    if json_:
        echo_json(summaries[0] if len(summaries) == 1 else summaries)
    if any(summary["completed"] == 0 for summary in summaries):
        click.echo("no request succeeded at some level; see the errors above", err=True)
        sys.exit(1)


def _bench_progress() -> Callable[[Any, Any], None]:
    interactive = sys.stderr.isatty()
    last = [0.0]

    def show(level: Any, snap: Any) -> None:
        target = (f"/{snap.target}" if snap.target else
                  f" of {snap.duration_s:g} s" if snap.duration_s else "")
        line = (f"{level.slug}: {snap.elapsed_s:6.1f} s  done {snap.done}{target}  failed "
                f"{snap.failed}  in flight {snap.in_flight}  {snap.output_tok_s:8.1f} tok/s")
        if interactive:
            click.echo(f"\r{line:<90}", nl=False, err=True)
        elif snap.elapsed_s - last[0] >= 10:
            last[0] = snap.elapsed_s
            click.echo(line, err=True)

    return show


@bench.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_", is_flag=True, help="Print the saved summary as JSON.")
def bench_report(folder: Path, json_: bool) -> None:
    """Re-render report.md and plots of a saved run (or sweep) FOLDER."""
    from modal_llm_serving.bench.report import render_report, summary_lines
    from modal_llm_serving.bench.results import read_summary

    path = render_report(folder)
    if json_:
        sweep = folder / "sweep.json"
        echo_json(json.loads(sweep.read_text()) if sweep.is_file() else read_summary(folder))
        return
    if not (folder / "sweep.json").is_file():
        click.echo("\n".join(summary_lines(read_summary(folder))))
    click.echo(f"report: {path}")


@bench.command("cold-start")
@click.argument("url")
@_bench_common
@click.option("--repeat", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Trials.")
@click.option("--wait", type=Finite(0, LONGEST_WAIT_S), default=0.0, show_default=True,
              help="Seconds between trials (let the endpoint scale back to zero).")
@click.option("--timeout", type=Finite(0, LONGEST_WAIT_S, min_open=True), default=900.0,
              show_default=True, help="Seconds a trial may wait for its first token.")
@click.option("--since", type=Finite(0, 1e11), metavar="UNIX_SECONDS",
              help="Start the first trial's clock at this past moment (e.g. `date +%s.%N` "
                   "taken when the deploy returned) [default: now].")
def bench_cold_start(url: str, model: str | None, api_key: str | None, headers: tuple[str, ...],
                     proxy_token_id: str | None, proxy_token_secret: str | None,
                     endpoint: str, json_: bool, repeat: int, wait: float,
                     timeout: float, since: float | None) -> None:
    """Time from now to the first token at URL, retrying 503s and connection errors."""
    from modal_llm_serving.bench.coldstart import run_cold_start
    from modal_llm_serving.endpoint.client import normalize_base_url

    base_url = normalize_base_url(url)
    if model is None:
        raise click.UsageError("--model is required: a scaled-to-zero endpoint cannot list its "
                               "models before it is up")
    result = run_cold_start(base_url=base_url, model=model, api_key=api_key,
                            headers=request_headers(headers, proxy_token_id,
                                                    proxy_token_secret),
                            endpoint=endpoint, repeat=repeat,
                            wait_s=wait, timeout_s=timeout, since_epoch_s=since,
                            on_event=lambda message: click.echo(message, err=True))
    if json_:
        echo_json(result)
    else:
        seconds = result["seconds_to_first_token"]
        if seconds["n"]:
            click.echo(f"time to first token (n={seconds['n']}): median {seconds['median']:.2f} s,"
                       f" min {seconds['min']:.2f} s, max {seconds['max']:.2f} s "
                       f"({result['definition']})")
    if result["failed"]:
        sys.exit(1)


# --- mls plan / mls new / mls check ------------------------------------------------------------


def workload_options(command: Callable[P, R]) -> Callable[P, R]:
    """The workload: an optional TOML file, then `--set FIELD=VALUE`, then flags (last win)."""
    options = [
        click.argument("workload_file", required=False, metavar="[WORKLOAD.toml]",
                       type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--model", help="Hub id (org/name) or a local checkpoint folder."),
        click.option("--revision", help="Commit hash of a Hub model (required for Hub ids)."),
        click.option("--goal", metavar="GOAL",
                     help="online | cold-start | low-latency | throughput [default: inferred]."),
        click.option("--concurrency", type=int,
                     help="Requests in flight at peak [default: 8]."),
        click.option("--context-length", type=int, help="Max tokens per sequence."),
        click.option("--precision", help="bf16 | fp16 | fp8 | int8 | int4 | mxfp4."),
        click.option("--ttft-ms", type=Finite(0, min_open=True),
                     help="Time-to-first-token SLO, ms."),
        click.option("--tpot-ms", type=Finite(0, min_open=True),
                     help="Time-per-output-token SLO, ms."),
        click.option("--throughput", "throughput_tok_s", type=Finite(0, min_open=True),
                     help="Output tokens/s wanted across replicas."),
        click.option("--region", help="Modal region to pin, e.g. us-east [default: any]."),
        click.option("--cold-start-s", type=Finite(0), help="Longest acceptable cold start, s."),
        click.option("--budget", "budget_per_hour", type=Finite(0, min_open=True),
                     help="USD per hour at peak."),
        click.option("--offline", is_flag=True, help="Batch work with no per-request HTTP."),
        click.option("--gpu", help="Only this GPU type from the catalog, e.g. H100."),
        click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
                     help="Any other workload field (TOML value), e.g. --set input_tokens=2000."),
        click.option("--gpu-catalog", envvar="MLS_GPU_CATALOG",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="TOML file overriding GPU figures and prices [env MLS_GPU_CATALOG]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _workload(workload_file: Path | None, assignments: tuple[str, ...],
              flags: dict[str, Any]) -> Any:
    from modal_llm_serving.facts.workload import workload_from_inputs

    return workload_from_inputs(workload_file, flags=flags, assignments=assignments)


@cli.command("plan")
@workload_options
@click.option("--json", "json_", is_flag=True, help="Print the plan as JSON.")
def plan_command(workload_file: Path | None, assignments: tuple[str, ...],
                 gpu_catalog: Path | None, json_: bool, **flags: Any) -> None:
    """Plan a deployment: pattern, GPU type and count, engine and Modal settings, predictions.

    \b
    mls plan workload.toml
    mls plan --model Qwen/Qwen3-8B --revision <commit> --concurrency 32 --tpot-ms 40
    Exit codes: 0 planned; 1 refused (out of scope, or nothing fits: the message says what
    would); 2 invalid workload (the message names the field).
    """
    from modal_llm_serving.errors import PlanRefused
    from modal_llm_serving.plan.decide import explain, make_plan

    workload = _workload(workload_file, assignments, flags)
    try:
        result = make_plan(workload, gpu_catalog=gpu_catalog)
    except PlanRefused as exc:
        if not json_:
            raise
        echo_json({"refused": str(exc), "workload": workload.to_dict()})  # for tools and agents
        sys.exit(1)
    if json_:
        echo_json(result.to_dict())
    else:
        click.echo(explain(result))


@cli.command("new")
@workload_options
@click.option("-o", "--output", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The app file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "json_", is_flag=True, help="Print what was done as JSON.")
def new_command(workload_file: Path | None, assignments: tuple[str, ...],
                gpu_catalog: Path | None, output: Path, force: bool, json_: bool,
                **flags: Any) -> None:
    """Plan the workload, write the matching recipe with the plan's settings, check it.

    Only the recipe's UPPER_CASE settings constants change (a syntax-tree edit). Exit codes:
    0 written and `mls check` clean; 1 refused, or the written file has findings; 2 bad input.
    """
    from modal_llm_serving.recipes.new import new_app

    click.echo("planning and writing the app; then importing it with the Modal SDK to check "
               "it", err=True)
    result = new_app(_workload(workload_file, assignments, flags), output, force=force,
                     gpu_catalog=gpu_catalog)
    if json_:
        echo_json(result.to_dict())
    else:
        plan = result.plan
        click.echo(f"wrote {output} from {result.recipe.name} ({plan.pattern} pattern, "
                   f"{plan.chosen.label()})")
        for name, (old, new) in result.render.changed.items():
            click.echo(f"  {name}: {old} -> {new}")
        if result.render.missing:
            click.echo("  not settings of this recipe (left to its defaults): "
                       + ", ".join(result.render.missing))
        for warning in plan.warnings:
            click.echo(f"  ! {warning}")
        render_findings(result.findings, files=1)
        if not result.findings:
            click.echo(f"next: modal run {output}   (smoke test)   |   modal deploy {output}")
    if result.findings:
        sys.exit(1)


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
    from modal_llm_serving.check.checker import RULES, check_files, import_skipped_reason

    if list_:
        if json_:
            echo_json([dataclasses_asdict(rule) for rule in RULES])
        else:
            for rule in RULES:
                click.echo(f"{rule.id} {rule.name}\n    why: {rule.message}\n    fix: {rule.fix}")
        return
    if not files:
        raise UsageError("name at least one app file or folder (or --list for the rules)")
    if python_ and not no_import and not os.access(python_, os.X_OK):
        raise UsageError(f"--python {python_} is not an executable program; give the "
                         "interpreter behind your `modal` CLI (see `mls doctor`)")
    paths: list[Path] = []
    for path in files:
        if path.is_dir():  # a folder: every Python file in it
            paths += sorted(path.glob("*.py"))
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    for path in paths:
        if not no_import and (reason := import_skipped_reason(path)):
            click.echo(f"note: {path} not imported ({reason}); static checks only", err=True)
    if not no_import and len(paths) > 1:
        click.echo(f"checking {len(paths)} files (each imported with the Modal SDK, about a "
                   "second apiece)", err=True)
    findings = check_files(paths, import_check=not no_import, import_timeout=import_timeout,
                           python=python_)
    if json_:
        echo_json({"files": len(paths), "findings": [f.to_dict() for f in findings]})
    else:
        render_findings(findings, files=len(paths))
    if findings:
        sys.exit(1)


def dataclasses_asdict(value: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(value)


def render_findings(findings: list[Any], *, files: int) -> None:
    for finding in findings:
        click.echo(f"{finding.location()}: {finding.rule.id} {finding.rule.name}  "
                   f"{finding.detail}\n    why: {finding.rule.message}\n"
                   f"    fix: {finding.rule.fix}")
    plural = "s" if files != 1 else ""
    if findings:
        click.echo(f"mls check: {len(findings)} finding(s) in {files} file{plural}")
    else:
        click.echo(f"mls check: no findings in {files} file{plural}")


def main() -> None:
    cli(prog_name="mls")

