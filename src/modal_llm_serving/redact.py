"""Keep credentials out of every file and message: URL userinfo, secret headers, known values.

Everything the toolkit writes (summaries, reports, records, logs) or prints about a request goes
through these, so a key given as `--api-key`, `--header 'Authorization: ...'`, a proxy token or
`http://user:password@host` never lands on disk or a terminal.

>>> redact_url("https://user:hunter2@example.modal.run/v1")
'https://***@example.modal.run/v1'
>>> redact_headers({"Authorization": "Bearer sk-1", "Modal-Session-ID": "s1"})
{'Authorization': '***', 'Modal-Session-ID': 's1'}
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

__all__ = ["MASK", "SECRET_ENV", "is_secret_header", "known_secrets", "mask", "redact_headers",
           "redact_text", "redact_url"]

MASK = "***"
# Header names that carry credentials: the standard ones, Modal's proxy auth, and any name that
# says key, secret, token, password, auth or cookie (X-Api-Key, X-Auth-Token, ...).
_SECRET_HEADER = re.compile(r"auth|key|secret|token|passw|cookie|credential|signature", re.I)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]*)@", re.I)
# Environment variables whose values are credentials, masked wherever they appear in text: the
# toolkit's and the engines' API keys, Hugging Face tokens, and Modal's tokens (API, proxy auth,
# OAuth; MODAL_PROXY_TOKEN is the combined `wk-....ws-...` form Modal's Endpoint docs export for
# OpenAI clients). The one list: `mls doctor` masks its report with it too.
SECRET_ENV = ("MLS_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET",
              "MODAL_PROXY_TOKEN_ID", "MODAL_PROXY_TOKEN_SECRET", "MODAL_PROXY_TOKEN",
              "MODAL_OAUTH_REFRESH_TOKEN",
              "MODAL_OAUTH_CLIENT_SECRET", "MODAL_OAUTH_JWT_KEY")


def redact_url(url: str) -> str:
    """`scheme://user:pass@host/...` -> `scheme://***@host/...` (wherever it appears in text)."""
    return _USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", url)


def is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers with every credential-carrying value masked."""
    return {name: MASK if is_secret_header(name) else value for name, value in headers.items()}


def known_secrets(extra: Iterable[str | None] = (), *,
                  env: Mapping[str, str] | None = None) -> list[str]:
    """Credential values known here, longest first: the `SECRET_ENV` variables of `env` [default:
    this process's environment] and `extra`."""
    env = os.environ if env is None else env
    values = [env.get(name) for name in SECRET_ENV] + list(extra)
    return sorted({value for value in values if value and len(value) >= 4}, key=len,
                  reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` replaced by `MASK` (longest first, as `known_secrets` gives
    them, so no part of a longer secret is left behind).

    >>> mask("token abc123456 in a message", ["abc123456"])
    'token *** in a message'
    """
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL userinfo and each of `secrets` (and known secret env values) masked."""
    return mask(redact_url(text), known_secrets(secrets))
