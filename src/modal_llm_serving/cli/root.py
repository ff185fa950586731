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

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_PROBLEM", "cli", "interrupted", "main"]

EXIT_PROBLEM, EXIT_INTERNAL = 1, 3  # 2 (bad input) is click's own; 130 and up: stopping.py


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
        from modal_llm_serving.redact import forget_secrets, register_environment

        forget_secrets()  # the secrets of this invocation only: its environment now, then
        register_environment(os.environ)  # its options as click reads them (cli/params.py)
        with stop_signals_as_ctrl_c():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's option refused by click itself
            raise _one_line(exc) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:  # click's own (a bad option value): shown inert
            raise _inert_click(exc) from None
        except UsageError as exc:
            raise click.UsageError(_message(exc)) from None
        except EngineStartError as exc:
            if exc.log_tail:
                from modal_llm_serving.cli.options import say

                say(f"--- last lines of {exc.log_path} ---", *exc.log_tail.splitlines(), "---",
                    err=True)
            raise click.ClickException(_message(exc)) from None
        except MlsError as exc:
            raise click.ClickException(_message(exc)) from None
        except KeyboardInterrupt:
            from modal_llm_serving.cli.options import say

            words, code = interrupted()
            with contextlib.suppress(OSError, ValueError):  # a closed terminal (SIGHUP): silent
                say("", words, err=True)
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


def _inert_click(exc: click.ClickException) -> click.ClickException:
    """`exc` itself, or the same error with its text made inert (it may quote an option's
    value: a key, a control character)."""
    text = exc.format_message()
    if (inert := _inert(text)) == text:
        return exc
    return click.ClickException(inert)


def _one_line(exc: click.UsageError) -> click.UsageError:
    """click's usage error as the contract's one line, inert: the message and where help is
    (click would print the usage synopsis and a hint on two more lines first)."""
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return click.UsageError(f"{_inert(exc.format_message())}{where}")


def _message(exc: BaseException) -> str:
    """An error's text as one inert line (messages may quote URLs and server bodies)."""
    return _inert(str(exc))


def _inert(text: str) -> str:
    from modal_llm_serving.display import terminal_text
    from modal_llm_serving.endpoint.wire import one_line

    return terminal_text(one_line(text, 600))


def _internal_error(exc: Exception) -> str:
    """Write the traceback (redacted) to a log file; return the one line to show."""
    from modal_llm_serving.cache import cache_dir
    from modal_llm_serving.redact import redact

    summary = _message(exc)[:200]
    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mls-error-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{os.getpid()}.log"
        details = "".join(traceback.format_exception(exc))
        write_atomic(path, f"mls {__version__}, python {sys.version.split()[0]}\n"
                           f"command: {redact(shlex.join(sys.argv))}\n\n{redact(details)}")
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
    mls tune APP --from RESULTS  the app's concurrency knobs from a benchmark's SLO capacity
    """


def main() -> None:
    cli(prog_name="mls")
