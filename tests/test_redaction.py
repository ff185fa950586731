"""Redaction by value: a secret the process knows is masked in every output, whatever carries it.

Each kind of secret (`--api-key`, `MLS_API_KEY`, `OPENAI_API_KEY`, `HF_TOKEN`, the Modal proxy
pair, a secret `--header`, URL userinfo) is drawn at random (short ones, regex metacharacters,
characters that URL-encode) and given the way a user gives it. The echo server
(tests/echo_server.py) repeats it in its errors and in its successful answers: the request
headers it was sent (raw, URL-encoded, JSON-quoted), and a model id and a leak made of it (for
the secrets it was never sent). Every command that talks to a server runs against it in each of
its modes; no terminal text and no string of a file written may hold the secret in any form.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import stat
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from modal_llm_serving.cli import cli
from tests.echo_server import echo_server
from tests.ports import REFUSING_PORT, REFUSING_URL

EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "2"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# Printable ASCII a user can put in a header or a URL (encoded): letters and digits, regex
# metacharacters, and what URL-encoding and JSON quoting change.
_ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
             ".^$*+?()[]{}|\\-_~/=&%:@#!'\"<>,; ")


def _distinctive(value: str) -> bool:
    """An uppercase letter and a digit: what no key, number or word the toolkit writes of its
    own can spell, so finding the value in an output means it leaked. No space at either end
    (a header's value is stripped)."""
    return (any(char.isupper() for char in value) and any(char.isdigit() for char in value)
            and value == value.strip())


secret_values = st.text(alphabet=_ALPHABET, min_size=3, max_size=24).filter(_distinctive)

KINDS = ("api-key", "env-api-key", "openai-env", "hf-token", "proxy-id", "proxy-secret",
         "header", "auth-header", "userinfo")
SENT = {"api-key", "env-api-key", "proxy-id", "proxy-secret", "header", "auth-header"}


def forms(secret: str) -> set[str]:
    """The secret as text may carry it: raw, URL-encoded, JSON-quoted, HTML-escaped."""
    quoted = urllib.parse.quote(secret, safe="")
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda match: match[0].lower(), quoted)
    return {secret, quoted, lower_hex, urllib.parse.quote_plus(secret),
            json.dumps(secret)[1:-1], html.escape(secret)}


def given_as(kind: str, secret: str, url: str) -> tuple[str, list[str], dict[str, str]]:
    """The server URL, the options and the environment that give `secret` as `kind`."""
    if kind == "userinfo":
        return url.replace("://", f"://user:{urllib.parse.quote(secret, safe='')}@"), [], {}
    options = {"api-key": ["--api-key", secret],
               "proxy-id": ["--proxy-token-id", secret, "--proxy-token-secret", "WS-other1"],
               "proxy-secret": ["--proxy-token-id", "WK-other1", "--proxy-token-secret", secret],
               "header": ["--header", f"X-Api-Key: {secret}"],
               "auth-header": ["--header", f"Authorization: Token {secret}"]}.get(kind, [])
    variable = {"env-api-key": "MLS_API_KEY", "openai-env": "OPENAI_API_KEY",
                "hf-token": "HF_TOKEN"}.get(kind)
    return url, options, {variable: secret} if variable else {}


def assert_hidden(secret: str, text: str, where: str) -> None:
    for form in forms(secret):
        assert form not in text, f"{form!r} in {where}:\n{text[:3000]}"


def assert_no_file_holds(secret: str, folder: Path) -> None:
    """No file's text, nor any string its JSON decodes to (escapes undone), holds the secret."""
    for path in folder.rglob("*"):
        if not path.is_file() or path.suffix == ".png":
            continue
        text = path.read_text(encoding="utf-8")
        assert_hidden(secret, text, str(path))
        documents = {".jsonl": text.splitlines(), ".json": [text]}.get(path.suffix, [])
        for line in documents:
            assert_hidden(secret, "\n".join(_strings(json.loads(line))), str(path))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def run(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result


def commands(url: str, options: list[str], out: Path, *, mode: str) -> list[list[str]]:
    """Every command that talks to a server, with the options that give the secret."""
    model = ["--model", "m"] if mode == "error" else []
    return [
        ["smoke", url, "--ready-timeout", "5", *options],
        ["smoke", url, "--ready-timeout", "5", "--json", *options],
        # no report here: the two `bench report` below render it from what the run saved
        ["bench", "run", url, "-n", "2", "--input-len", "8", "--output-len", "4",
         "--out", str(out), "--timeout", "10", "--no-report", *model, *options],
        ["bench", "report", str(out)],
        ["bench", "report", str(out), "--json"],
        ["bench", "cold-start", url, "--model", "m", "--timeout", "3", *options],
        ["bench", "cold-start", url, "--model", "m", "--timeout", "3", "--json", *options],
        ["revision", "org/model"],
    ]


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(secret=secret_values)
@example(secret="A1x")  # short
@example(secret="K3y.*+?^$()[]{}|\\")  # regex metacharacters
@example(secret="Sk9/+=&%2F@:#? x")  # what URL-encoding changes, an encoded form inside
def test_no_output_holds_a_secret(kind: str, secret: str,
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("runs")
    leak = "" if kind in SENT else " ".join(sorted(forms(secret)))
    for mode in ("ok", "error", "stream-error"):
        with echo_server(mode=mode, model=f"m-{secret}", leak=leak) as server:
            url, options, env = given_as(kind, secret, server.url)
            env = {"HF_ENDPOINT": url, **env}
            for number, args in enumerate(commands(url, options, folder / mode, mode=mode)):
                result = run(args, env)
                assert_hidden(secret, result.output, f"the output of {args}")
                assert number > 0 or "***" in result.output, result.output
            assert any(secret in echo for echo in server.echoes), server.echoes  # it was sent
        assert_no_file_holds(secret, folder / mode)
        assert (folder / mode / "report.md").is_file()


def test_basic_auth_from_userinfo_is_masked_as_httpx_encodes_it() -> None:
    """httpx sends `http://user:pw@host` as `Authorization: Basic base64(user:pw)`."""
    with echo_server(mode="error") as server:
        url = server.url.replace("://", "://us3r:Pa55%2Fword@")
        result = run(["smoke", url, "--ready-timeout", "5"], {})
        encoded = base64.b64encode(b"us3r:Pa55/word").decode()
        assert any(encoded in echo for echo in server.echoes)
        assert encoded not in result.output and "Pa55" not in result.output, result.output


@pytest.mark.parametrize("query", ["token", "api_key", "sig", "X-Amz-Signature"])
@pytest.mark.parametrize("command", [["smoke"], ["bench", "run"],
                                     ["bench", "cold-start", "--model", "m"]])
def test_a_refused_url_never_shows_its_credentials(query: str, command: list[str]) -> None:
    secret = "Q7-url-cred"
    url = f"http://user:{secret}x@127.0.0.1:{REFUSING_PORT}/v1?{query}={secret}&page=2"
    result = run([*command, url], {})
    assert result.exit_code == 2 and "query" in result.output, result.output
    assert secret not in result.output and "page=2" in result.output, result.output


def test_the_tokenizer_option_is_not_taken_for_a_secret(tmp_path: Path) -> None:
    result = run(["bench", "run", REFUSING_URL, "--model", "m", "--tokenizer",
                  str(tmp_path / "tok-X1"), "--out", str(tmp_path / "o")], {})
    assert result.exit_code == 2 and "tok-X1" in result.output, result.output


@SETTINGS
@given(secret=secret_values, config_secret=secret_values)
@example(secret="D0c.*+", config_secret="C0nf?+")
def test_doctor_masks_every_token_even_from_a_cli_that_prints_them(
        secret: str, config_secret: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A broken `modal` CLI may echo its environment; the doctor's report masks every secret
    variable's value, and the tokens of Modal's config file. The config file's tokens are drawn
    apart from the variables' secret (and do not hold it), so only registering the config
    file's own tokens can mask them."""
    token_id, token_secret = f"ak-{config_secret}1", f"as-{config_secret}2"
    assume(secret not in token_id and secret not in token_secret)
    home = tmp_path_factory.mktemp("home")
    modal = home / "bin" / "modal"
    modal.parent.mkdir()
    modal.write_text(f"#!{sys.executable}\nimport os, sys\n"
                     "sys.stderr.write('bad: ' + ' '.join(os.environ.get(name, '') for name in "
                     "('HF_TOKEN', 'MODAL_PROXY_TOKEN_SECRET', 'OPENAI_API_KEY')) + ' ' + "
                     "open(os.path.expanduser('~/.modal.toml')).read() + '\\n')\nsys.exit(2)\n")
    modal.chmod(modal.stat().st_mode | stat.S_IXUSR)
    (home / ".modal.toml").write_text(f"[default]\ntoken_id = {json.dumps(token_id)}\n"
                                      f"token_secret = {json.dumps(token_secret)}\n")
    env = {"PATH": f"{modal.parent}:{os.environ['PATH']}", "HOME": str(home),
           "HF_TOKEN": secret, "MODAL_PROXY_TOKEN_SECRET": f"{secret}-p",
           "OPENAI_API_KEY": f"o-{secret}"}
    for args in (["doctor"], ["doctor", "--json"]):
        result = run(args, env)
        assert "***" in result.output, result.output
        assert_hidden(secret, result.output, f"the output of {args}")
        assert_hidden(config_secret, result.output, f"the output of {args}")
