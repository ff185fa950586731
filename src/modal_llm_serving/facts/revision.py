"""Pin a Hub model: ask the Hub for the commit a branch or tag points at, or refuse to guess.

A commit hash cannot be known offline, and an invented one deploys nothing (the download fails
minutes into the first start). `resolve_revision` asks the Hub's API (`HF_ENDPOINT` if set,
`HF_TOKEN` for gated models) and returns the 40-character hash it answers; any failure is one
clear error saying what happened, never a plausible-looking hash. The question ends within
`timeout` seconds in all, and its answer is read as untrusted JSON (`untrusted.read_json`).
"""

from __future__ import annotations

import os
import re
import urllib.parse

import httpx

from modal_llm_serving.deadline import DeadlineExceeded, bounded, fetch
from modal_llm_serving.endpoint.wire import one_line
from modal_llm_serving.errors import EndpointError, UntrustedDataError, UsageError
from modal_llm_serving.untrusted import read_json

__all__ = ["HUB", "hub_endpoint", "resolve_revision"]

HUB = "https://huggingface.co"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MAX_ANSWER = 1024 * 1024  # the Hub's answer here is a few kilobytes
_REF = re.compile(r"^[\w][\w./+-]{0,199}$")  # a branch, tag or commit: no space, no newline


def hub_endpoint(default: str = HUB) -> str:
    """The Hub to ask: `HF_ENDPOINT` if set, else `default`. A value that is not an http(s)
    URL is the user's to fix (one line, exit 2), not a Hub that "cannot be reached"."""
    value = os.environ.get("HF_ENDPOINT")
    if not value:
        return default.rstrip("/")
    parts = urllib.parse.urlsplit(value.strip())
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or any(ch.isspace() or not ch.isprintable() for ch in value.strip())):
        raise UsageError(f"HF_ENDPOINT={value!r} is not an http(s) URL; set it to a Hub's "
                         f"address (e.g. {HUB}) or unset it")
    return value.strip().rstrip("/")


def resolve_revision(model: str, *, ref: str = "main", timeout: float = 10.0) -> str:
    """The commit hash `ref` (a branch, tag or hash) of Hub model `model` points at now."""
    if not _HUB_ID.match(model):
        raise UsageError(f"{model!r} is not a Hub model id like Qwen/Qwen3-8B")
    if not _REF.match(ref) or ".." in ref:
        raise UsageError(f"--ref {ref!r} is not a branch, tag or commit name (letters, digits "
                         "and . _ - / +, no spaces); e.g. main")
    endpoint = hub_endpoint()
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{endpoint}/api/models/{model}/revision/{ref}"
    try:
        with bounded(httpx.Client(headers=headers, timeout=timeout,
                                  follow_redirects=True)) as http:
            response = fetch(http, "GET", url, seconds=timeout, max_bytes=_MAX_ANSWER)
    except (DeadlineExceeded, UntrustedDataError) as exc:
        raise EndpointError(f"{endpoint} did not answer whole within {timeout:g} s ({exc}); "
                            "try again, or check HF_ENDPOINT") from None
    except httpx.HTTPError as exc:
        where = f"HF_ENDPOINT={endpoint}" if os.environ.get("HF_ENDPOINT") else endpoint
        raise EndpointError(f"cannot reach {where} ({type(exc).__name__}); a commit hash "
                            "cannot be known offline: do not guess one, resolve it where the "
                            "Hub is reachable (or copy it from the model page's history)") from exc
    if response.status_code in (401, 403):
        raise EndpointError(f"{model} is gated or private ({response.status_code}): accept its "
                            "license on the model page and set HF_TOKEN, then run again")
    if response.status_code == 404:
        raise EndpointError(f"{endpoint} has no model {model} with revision {ref!r}; check the id "
                            "and the branch or tag")
    if response.status_code != 200:
        raise EndpointError(f"{url} answered {response.status_code}; try again later")
    try:
        answer = read_json(response.content, what=f"the answer of {url}")
    except UntrustedDataError:
        answer = None
    sha = answer.get("sha") if isinstance(answer, dict) else None
    if not isinstance(sha, str) or not _COMMIT.match(sha):
        raise EndpointError(f"{url} answered without a commit hash "
                            f"({one_line(response.content[:80].decode('utf-8', 'replace'), 80)!r})")
    return sha
