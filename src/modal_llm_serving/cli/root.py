"""The root `mls` group, and the one place every error becomes a message and an exit code.

Exit codes (the README's contract): 0 success; 1 a check, smoke test or run found a problem, or
an expected failure (shown as one line); 2 bad input (an option, a file, a URL; one line naming
it), or this machine refusing a file (disk full, read-only, no permission); 3 an internal error
(a bug: one line, details in a log file); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM),
129 hung up (SIGHUP): SIGTERM and SIGHUP end a command exactly as Ctrl-C does.
Every error reaches the user through `MlsGroup.invoke`, the one place they become messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import sys
import traceback
from typing import Any

import click

from modal_llm_serving import __version__
from modal_llm_serving.errors import EngineStartError, MlsError, UsageError
from modal_llm_serving.files import ENVIRONMENT_ERRNOS, cannot_write, write_atomic
from modal_llm_serving.stopping import EXIT_INTERRUPTED, interrupted, stop_signals_as_ctrl_c

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_PROBLEM", "cli", "interrupted", "main",
           "say"]

EXIT_PROBLEM, EXIT_INTERNAL = 1, 3  # 2 (bad input) is click's own; 130 and up: stopping.py


def say(message: str) -> None:
    """One line on stderr that a closed terminal (SIGHUP) cannot turn into an error."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(message, err=True)


class InternalError(click.ClickException):
    """An unexpected exception, shown as one line; its traceback went to a log file."""

    exit_code = EXIT_INTERNAL


class MlsGroup(click.Group):
    """The root command: turns every exception a command raises into the contract above."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # `mls --bad-option`, `mls nope`: parsed here, before invoke
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        with stop_signals_as_ctrl_c():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's option refused by click itself
            raise _one_line(exc) from None
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
            words, code = interrupted()
            say(f"\n{words}")
            raise click.exceptions.Exit(code) from None
        except BrokenPipeError:  # `mls ... | head`: the reader left; nothing more to say
            sys.stderr.close()
            raise click.exceptions.Exit(EXIT_PROBLEM) from None
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise InternalError(_internal_error(exc)) from None
            # this machine refused (disk full, read-only, no permission) where no command
            # expected it: still the user's to fix, never a bug of ours
            where = exc.filename if exc.filename is not None else "a file"
            raise click.UsageError(_message(cannot_write(where, exc, what="use"))) from None
        except Exception as exc:  # a bug: one line here, the traceback in a file
            raise InternalError(_internal_error(exc)) from None


def _one_line(exc: click.UsageError) -> click.UsageError:
    """click's usage error as the contract's one line: the message and where help is (click
    would print the usage synopsis and a hint on two more lines first)."""
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return click.UsageError(f"{exc.format_message()}{where}")


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
    from modal_llm_serving.cache import cache_dir

    summary = _message(exc)[:200]
    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mls-error-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{os.getpid()}.log"
        details = "".join(traceback.format_exception(exc))
        write_atomic(path, f"mls {__version__}, python {sys.version.split()[0]}\n"
                           f"command: {_redacted(shlex.join(sys.argv))}\n\n{_redacted(details)}")
        where = f"details in {path}"
    except OSError as log_error:
        where = f"(no log file: {log_error.strerror or log_error})"
    except MlsError as log_error:  # the cache folder setting itself is wrong
        where = f"(no log file: {log_error})"
    return (f"internal error: {type(exc).__name__}: {summary} — a bug in mls, not your input; "
            f"{where}; please report it with that file")


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


def main() -> None:
    cli(prog_name="mls")
