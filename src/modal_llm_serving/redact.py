"""Keep credentials out of every file and message: one registry of the secrets this process knows,
and the one masking that everything written or printed goes through.

Registering happens once, at start-up: the CLI registers the values of the `SECRET_ENV`
variables, then each credential option, secret-named `--header` and URL as click reads it;
`mls doctor` adds the tokens of Modal's config file. `redact` then masks every registered value,
in every form it travels in (URL-encoded, JSON-, HTML- and repr-escaped, Basic-auth base64), and
what is a secret whoever wrote it (URL userinfo, secret-named query parameters), in any text: a
server's error that echoes a key, an exception's message, a URL. The writers (records, summaries,
reports) and the printers (`display.terminal_text`, `display.markdown_text`) all call it.

>>> forget_secrets(); register_secret("sk-12345")
>>> redact("bad key sk-12345, see https://user:pw@h.example/v1?token=abc&page=2")
'bad key ***, see https://***@h.example/v1?token=***&page=2'
>>> redact_headers({"Authorization": "Bearer sk-1", "Modal-Session-ID": "s1"})
{'Authorization': '***', 'Modal-Session-ID': 's1'}
"""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "SECRET_ENV", "forget_secrets", "is_secret_name", "redact", "redact_data",
           "redact_headers", "redact_json", "redact_url", "register_environment",
           "register_headers", "register_secret", "register_url"]

MASK = "***"
# Names that carry credentials, as a header or a query parameter: the standard ones, Modal's
# proxy auth (Modal-Key, Modal-Secret), any name that says key, secret, token, password, auth,
# cookie or signature (X-Api-Key, X-Auth-Token, access_token), and `sig` (signed URLs).
_SECRET_NAME = re.compile(r"auth|key|secret|token|passw|cookie|credential|signature"
                          r"|(?<![a-z])sig(?![a-z])", re.I)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]*)@", re.I)
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;](?P<name>[^=&;#\s?'\"]+)=)(?P<value>[^&;#\s'\"<>]*)")
# Environment variables whose values are credentials: the toolkit's and the engines' API keys,
# the agent CLIs' keys (`mls skill eval`), Hugging Face tokens, and Modal's tokens (API, proxy
# auth, OAuth; MODAL_PROXY_TOKEN is the combined `wk-....ws-...` form Modal's Endpoint docs
# export for OpenAI clients).
SECRET_ENV = ("MLS_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET",
              "MODAL_PROXY_TOKEN_ID", "MODAL_PROXY_TOKEN_SECRET", "MODAL_PROXY_TOKEN",
              "MODAL_OAUTH_REFRESH_TOKEN",
              "MODAL_OAUTH_CLIENT_SECRET", "MODAL_OAUTH_JWT_KEY")
# Environment variables holding a URL whose userinfo or query may carry a credential.
URL_ENV = ("HF_ENDPOINT",)

# Every registered secret in every form it may be written in, longest first (so no part of a
# longer secret is left behind by a shorter one that it contains).
_forms: list[str] = []


def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter called `name` carries a credential."""
    return bool(_SECRET_NAME.search(name))


def forget_secrets() -> None:
    """Start afresh: a new command in this process (tests run many) knows only its own."""
    _forms.clear()


def register_secret(value: str | None) -> None:
    """Mask `value` from now on, in every form it travels in. Any length counts (a short key
    masks every occurrence of its characters); a value made only of `*` cannot be told from the
    mask and is skipped."""
    if not value or not value.strip("*"):
        return
    quoted = {urllib.parse.quote(value, safe=""), urllib.parse.quote(value),
              urllib.parse.quote_plus(value), urllib.parse.quote_plus(value, safe="/:")}
    forms = {value, *quoted, *(_lower_hex(form) for form in quoted),
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             html.escape(value), html.escape(value, quote=False),
             repr(value)[1:-1], ascii(value)[1:-1]}
    _forms.extend(form for form in forms if form not in _forms and form.strip("*"))
    _forms.sort(key=len, reverse=True)


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda match: match[0].lower(), text)


def register_headers(headers: Mapping[str, str]) -> None:
    """Register the value of every secret-named header, and the credential after its scheme
    (`Bearer sk-...`: a server may echo either)."""
    for name, value in headers.items():
        if is_secret_name(name):
            register_secret(value)
            scheme, _, credential = value.strip().partition(" ")
            if scheme.isalpha() and credential.strip():
                register_secret(credential.strip())


def register_url(url: str) -> None:
    """Register a URL's userinfo (whole, its password, its user when that is all there is: a
    token, and the Basic-auth header httpx makes of it) and the values of its secret-named
    query parameters."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at and userinfo:
        user, _, password = userinfo.partition(":")
        plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        credential = password or user
        for value in (userinfo, urllib.parse.unquote(userinfo), credential,
                      urllib.parse.unquote(credential),
                      base64.b64encode(plain.encode("utf-8", "replace")).decode()):
            register_secret(value)
    for pair in re.split(r"[&;]", parts.query):
        name, eq, value = pair.partition("=")
        if eq and value and is_secret_name(urllib.parse.unquote_plus(name)):
            register_secret(value)
            register_secret(urllib.parse.unquote_plus(value))


def register_environment(env: Mapping[str, str]) -> None:
    """Register the `SECRET_ENV` values of `env` and the credentials in its `URL_ENV` URLs."""
    for name in SECRET_ENV:
        register_secret(env.get(name))
    for name in URL_ENV:
        if env.get(name):
            register_url(env[name])


def redact_url(text: str) -> str:
    """`scheme://user:pass@host/...?token=t` -> `scheme://***@host/...?token=***`, wherever a
    URL appears in `text` (a secret by its place, registered or not)."""
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", text)
    return _QUERY_PARAM.sub(lambda match: f"{match['lead']}{MASK}"
                            if is_secret_name(match["name"]) and match["value"] else match[0],
                            text)


def redact(text: str) -> str:
    """`text` with URL credentials and every registered secret masked.

    Masking repeats until nothing is left: a secret ending in `*` could otherwise be rebuilt
    from its first characters and the mask (each pass removes characters, so it ends).
    """
    text = redact_url(text)
    while True:
        before = text
        for form in _forms:
            if form in text:
                text = text.replace(form, MASK)
        if text == before:
            return text


def redact_data(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every string redacted; any other
    object becomes its redacted text (as `json.dumps(..., default=str)` would write it). Keys
    are kept: they are the toolkit's own names (fields, error kinds, header names)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_LONE_SURROGATE.sub("\ufffd", key) if isinstance(key, str) else key:
                redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return _LONE_SURROGATE.sub("\ufffd", redact(value if isinstance(value, str) else str(value)))


# A surrogate code point in a Python string is always a lone one (a pair is one character); JSON
# would write it as an escape that no strict reader (ours: untrusted.py) takes back.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAY_HOLD_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


def redact_json(data: Any, **dumps: Any) -> str:
    """`json.dumps(data, **dumps)` with every string redacted and lone surrogates replaced by
    U+FFFD, so what the toolkit writes it can read back.

    The JSON text is made first and walked again only if it may hold a secret or a surrogate: a
    string holding a secret holds it JSON-escaped (a form `register_secret` knows), and URL
    credentials need an `@` or an `=`. Most benchmark records hold none, and they are written on
    the measuring loop.
    """
    text = json.dumps(data, **dumps)
    if ("@" in text or "=" in text or any(form in text for form in _forms)
            or _MAY_HOLD_SURROGATE.search(text)):
        text = json.dumps(redact_data(data), **dumps)
    return text


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers with every credential-carrying value masked (by name, registered or not)."""
    return {name: MASK if is_secret_name(name) else redact(value)
            for name, value in headers.items()}
