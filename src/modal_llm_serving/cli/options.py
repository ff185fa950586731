"""What several commands share: request headers, Modal proxy auth, JSON output."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

P = ParamSpec("P")
R = TypeVar("R")


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


def dataclasses_asdict(value: Any) -> dict[str, Any]:

    return dataclasses.asdict(value)
