"""What several commands share: the one way text is printed, request headers, Modal proxy
auth, JSON output."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from modal_llm_serving.cli.params import HEADER, SECRET
from modal_llm_serving.display import terminal_text
from modal_llm_serving.redact import redact_json

P = ParamSpec("P")
R = TypeVar("R")


def say(*lines: str, err: bool = False, limit: int | None = None) -> None:
    """Print each of `lines` as one inert line (secrets masked, control characters escaped, cut
    to `limit` characters): every command prints through here, so nothing from outside reaches
    a terminal raw."""
    for line in lines:
        click.echo(terminal_text(line, limit), err=err)


def say_over(line: str) -> None:
    """Redraw the current stderr line (progress on an interactive terminal)."""
    click.echo("\r" + terminal_text(line), nl=False, err=True)


def echo_json(data: Any) -> None:
    """`data` as JSON, secrets masked; inert as it stands (every control and non-ASCII
    character of a string is a JSON escape)."""
    click.echo(redact_json(data, indent=2, default=str))


def parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    """`Name: value` pairs from repeated --header options (the value is never shown)."""
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter("a header is not 'Name: value' (it has no colon, or no name "
                                     "before it)", param_hint="--header")
        headers[name.strip()] = content.strip()
    return headers


def header_option(help: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """--header, repeatable; a secret-named header's value is registered for masking."""
    return click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                        type=HEADER, help=help)


def proxy_auth_options(command: Callable[P, R]) -> Callable[P, R]:
    """Modal proxy auth (a Server, or a web endpoint with requires_proxy_auth=True)."""
    for option in reversed([
        click.option("--proxy-token-id", envvar="MODAL_PROXY_TOKEN_ID", metavar="WK-...",
                     type=SECRET,
                     help="Modal proxy auth token id, sent as Modal-Key "
                          "[env MODAL_PROXY_TOKEN_ID]."),
        click.option("--proxy-token-secret", envvar="MODAL_PROXY_TOKEN_SECRET", metavar="WS-...",
                     type=SECRET,
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


def dataclasses_asdict(value: Any) -> dict[str, Any]:

    return dataclasses.asdict(value)
