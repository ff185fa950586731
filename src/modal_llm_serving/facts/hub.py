"""Read a Hub model's facts at a pinned commit: its config.json and its safetensors headers.

`read_hub_model(model, revision)` asks the Hub through `huggingface_hub`, so that library's
conventions hold: `HF_ENDPOINT` picks the Hub, `HF_TOKEN` signs the requests (gated and private
models), `HF_HUB_OFFLINE=1` forbids the network, and config.json lands in the Hugging Face cache
(`HF_HUB_CACHE`, else `HF_HOME`/hub). The weights are never downloaded: the parameter count per
dtype comes from each safetensors file's header, read with HTTP range requests, and that summary
is kept in the toolkit's cache as one small JSON file per model and commit, so a second read needs
no network at all. A commit never changes, so nothing cached here goes stale.

huggingface_hub reads those variables once, when it is imported; this module reads them at each
call and hands them to it, so a long-lived process (or a test) that changes them is obeyed too.
Every failure is one line (`UsageError`, exit 2) and leaves nothing in the toolkit's cache.

The Hub (or whatever HF_ENDPOINT names) is outside data: one read of a model's facts ends within
`HUB_TIMEOUT_S` in all, whatever the server trickles (`deadline.py`, applied to huggingface_hub's
shared client), and what it answers is read with bounds (`untrusted.py`, and the library's own
JSON errors caught as a bad answer).
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2  # huggingface_hub's HTTP client: its connection errors reach us unwrapped
from huggingface_hub import HfApi, constants, get_session, get_token, hf_hub_download
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)

# Documented as public, but exported lazily (a computed __all__) that mypy cannot follow.
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

from modal_llm_serving.cache import cache_dir
from modal_llm_serving.deadline import DeadlineExceeded, bounded, within
from modal_llm_serving.errors import HubUnreachable, UsageError
from modal_llm_serving.facts.revision import hub_endpoint
from modal_llm_serving.untrusted import read_json_file

__all__ = ["HUB_TIMEOUT_S", "TEXT_CONFIG_KEYS", "HubModel", "hub_cache", "read_hub_model"]

T = TypeVar("T")
# One model's facts from the Hub: its info, config.json and every shard's header, in all.
HUB_TIMEOUT_S = 120.0

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Where multimodal wrappers keep their language model's config: text_config (Gemma 3, Llama 4,
# Mistral 3, Kimi-VL), llm_config (InternVL), language_config (DeepSeek-VL2).
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Shard headers are read in parallel (as huggingface_hub's own get_safetensors_metadata does):
# a 163-shard checkpoint is 163 small range requests.
_HEADER_READERS = 8
# What one failed Hub call can raise; anything else is a bug and keeps its traceback.
_HUB_ERRORS = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError,
               SafetensorsParsingError, FileMetadataError)


@dataclass(frozen=True)
class HubModel:
    """What the Hub says about one model at one commit."""

    model: str
    revision: str  # the 40-hex commit everything here was read at
    config: Mapping[str, Any]  # config.json as written, multimodal wrapper and all
    text_config_key: str | None  # the key of `config` holding the language model's config, if any
    parameters: Mapping[str, int]  # safetensors dtype → parameters; empty without safetensors
    checkpoint_bytes: int | None  # the index's metadata.total_size, else the headers' data sizes
    weights: str | None  # the safetensors file or index the counts come from
    gated: bool | None  # None when the Hub's API did not say
    source: str  # "Hub at <first 12 of the commit>"

    @property
    def text_config(self) -> Mapping[str, Any]:
        """The language model's own config: the nested one of a multimodal wrapper, else all."""
        if self.text_config_key is None:
            return self.config
        nested: Mapping[str, Any] = self.config[self.text_config_key]
        return nested

    @property
    def total_params(self) -> int | None:
        """All parameters of the safetensors weights (None when the repo has none)."""
        return sum(self.parameters.values()) if self.parameters else None


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it, read from the environment now."""
    if explicit := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(explicit).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub"


def read_hub_model(model: str, revision: str, *, timeout: float = HUB_TIMEOUT_S) -> HubModel:
    """Facts of Hub model `model` at commit `revision`: from the caches, else from the Hub,
    within `timeout` seconds in all.

    **Raises:** `UsageError` (one line) when the id or revision is malformed, or the Hub cannot
    answer: gated without access, unknown model or revision, offline, unreachable, rate-limited,
    too slow (`HubUnreachable`), or not with JSON a reader can trust.
    """
    _check_pins(model, revision)
    endpoint = hub_endpoint(constants.ENDPOINT)
    offline = constants.is_offline_mode() or _is_true(os.environ.get("HF_HUB_OFFLINE"))
    summary_file = cache_dir() / "hub" / f"models--{model.replace('/', '--')}" / f"{revision}.json"
    summary = _load_summary(summary_file)
    if summary is None and offline:
        raise HubUnreachable(_never_read(model, revision))
    bounded(get_session())  # huggingface_hub's shared client: its I/O obeys `within` below
    rev = revision[:12]
    try:
        with within(timeout, what=f"reading {model} at {rev} from {endpoint}"):
            if summary is None:
                api = HfApi(endpoint=endpoint)
                info = _answer_of(functools.partial(api.model_info, model, revision=revision),
                                  what=f"{endpoint}'s model info of {model} at {rev}")
                config_file = _config_file(model, revision, endpoint=endpoint, offline=False)
                config = _read_json(config_file, model=model, revision=revision)
                summary = {"gated": None if info.gated is None else info.gated is not False,
                           **_weights_summary(api, model, revision, endpoint=endpoint)}
                _save_summary(summary_file, summary)
            else:
                config_file = _config_file(model, revision, endpoint=endpoint, offline=offline)
                config = _read_json(config_file, model=model, revision=revision)
    except _HUB_ERRORS as exc:
        message = _explain(exc, model=model, revision=revision, endpoint=endpoint,
                           offline=offline)
        cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) else exc
        unreachable = offline or isinstance(cause, httpx2.TransportError | OfflineModeIsEnabled)
        raise (HubUnreachable if unreachable else UsageError)(message) from exc
    except DeadlineExceeded:
        raise HubUnreachable(f"{endpoint} did not answer for {model} at {rev} within "
                             f"{timeout:g} s: check the network and HF_ENDPOINT, then run "
                             "again") from None
    key = next((k for k in TEXT_CONFIG_KEYS if isinstance(config.get(k), dict)), None)
    return HubModel(model=model, revision=revision, config=config, text_config_key=key,
                    parameters=summary["parameters"], checkpoint_bytes=summary["checkpoint_bytes"],
                    weights=summary["weights"], gated=summary["gated"],
                    source=f"Hub at {revision[:12]}")


def _check_pins(model: str, revision: str) -> None:
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise UsageError(f"{model!r} is not a Hub model id like Qwen/Qwen3-8B") from None
    if not _COMMIT.match(revision):
        raise UsageError(f"revision {revision!r} of {model} is not a 40-character commit hash: "
                         f"pin one with `mls revision {model}`")


def _is_true(value: str | None) -> bool:
    # The spellings huggingface_hub accepts for its boolean variables.
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def _config_file(model: str, revision: str, *, endpoint: str, offline: bool) -> Path:
    # A commit that is already in the cache is answered from disk, without a request.
    path = hf_hub_download(model, "config.json", revision=revision, cache_dir=hub_cache(),
                           endpoint=endpoint, local_files_only=offline)
    return Path(str(path))


def _read_json(path: Path, *, model: str, revision: str) -> dict[str, Any]:
    """A JSON object the repo holds (config.json, the safetensors index), read from the cache."""
    try:
        content = read_json_file(path, what=f"{path.name} of {model} at {revision[:12]}")
    except ValueError as exc:  # not UTF-8, not JSON, or past a bound (UntrustedDataError)
        raise UsageError(str(exc)) from None
    if not isinstance(content, dict):
        raise UsageError(f"{path.name} of {model} at {revision[:12]} is not a JSON object")
    return content


def _weights_summary(api: HfApi, model: str, revision: str, *, endpoint: str) -> dict[str, Any]:
    """Parameters per dtype and checkpoint bytes, from the safetensors headers (range requests).

    Composed from huggingface_hub's parts rather than its get_safetensors_metadata, which
    downloads the index into the cache folder of import time (it takes no cache_dir) and turns an
    unknown repo or revision into "not a safetensors repo".
    """
    header = functools.partial(_answer_of, functools.partial(
        api.parse_safetensors_file_metadata, model, revision=revision),
        what=f"a safetensors header of {model} at {revision[:12]}")
    try:
        files = [header(_SINGLE)]
        weights, total_size = _SINGLE, None
    except RemoteEntryNotFoundError:
        try:
            index_file = hf_hub_download(model, _INDEX, revision=revision, cache_dir=hub_cache(),
                                         endpoint=endpoint)
        except RemoteEntryNotFoundError:
            return {"weights": None, "parameters": {}, "checkpoint_bytes": None}
        index = _read_json(Path(str(index_file)), model=model, revision=revision)
        weight_map, metadata = index.get("weight_map"), index.get("metadata")
        if not isinstance(weight_map, dict) or not all(
                isinstance(name, str) for name in weight_map.values()):
            raise UsageError(f"{_INDEX} of {model} at {revision[:12]} has no weight_map of "
                             "file names: is the upload whole?") from None
        shards = sorted(set(weight_map.values()))
        # each reader thread runs in a copy of this context: the deadline goes with it
        contexts = [contextvars.copy_context() for _ in shards]
        with ThreadPoolExecutor(_HEADER_READERS) as pool:
            files = list(pool.map(lambda context, shard: context.run(header, shard), contexts,
                                  shards))
        total_size = metadata.get("total_size") if isinstance(metadata, dict) else None
        weights = _INDEX
    parameters: dict[str, int] = {}
    for file in files:
        for dtype, count in file.parameter_count.items():
            parameters[dtype] = parameters.get(dtype, 0) + count
    data_bytes = sum(max((t.data_offsets[1] for t in f.tensors.values()), default=0) for f in files)
    if isinstance(total_size, int | float) and total_size > 0:  # the index's own figure wins
        data_bytes = int(total_size)
    return {"weights": weights, "parameters": dict(sorted(parameters.items())),
            "checkpoint_bytes": data_bytes}


def _answer_of(call: Callable[..., T], *args: Any, what: str) -> T:
    """`call(*args)`, a huggingface_hub read of a Hub answer: the library parses that JSON with
    no bounds and builds its objects from whatever shape came, so what it raises for an odd
    answer (RecursionError, KeyError, TypeError, ValueError) is a bad answer, said in one line."""
    try:
        return call(*args)
    except (RecursionError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{what} cannot be read ({type(exc).__name__}): is HF_ENDPOINT a "
                         "Hugging Face Hub?") from None


def _load_summary(path: Path) -> dict[str, Any] | None:
    # A summary that cannot be read back whole is treated as absent: the Hub is asked again.
    try:
        summary = read_json_file(path)
    except (OSError, ValueError):
        return None
    fields_ok = (isinstance(summary, dict)
                 and isinstance(summary.get("parameters"), dict)
                 and all(isinstance(v, int) for v in summary["parameters"].values())
                 and isinstance(summary.get("checkpoint_bytes"), int | None)
                 and isinstance(summary.get("weights"), str | None)
                 and isinstance(summary.get("gated"), bool | None))
    return summary if fields_ok else None


def _save_summary(path: Path, summary: dict[str, Any]) -> None:
    # Written beside its final name, then renamed: a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        try:
            json.dump(summary, tmp, indent=1, sort_keys=True)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def _never_read(model: str, revision: str) -> str:
    return (f"HF_HUB_OFFLINE is set and {model} at {revision[:12]} was never read from the Hub "
            "here: run once with the Hub reachable (facts are cached per commit)")


def _explain(exc: Exception, *, model: str, revision: str, endpoint: str, offline: bool) -> str:
    """One line saying what went wrong and what to do, built without the library's text."""
    rev = revision[:12]
    # hf_hub_download reports a failed look-up as "not in the local cache", caused by the reason.
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) else exc
    if isinstance(cause, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        who = ("the account of your token (HF_TOKEN) has no access yet" if get_token()
               else "no token is set (HF_TOKEN)")
        return (f"{model} is gated and {who}: accept its license at {endpoint}/{model} while "
                "signed in, then set HF_TOKEN to a token of that account")
    if isinstance(cause, RepositoryNotFoundError):
        return (f"{endpoint} has no model {model} (if it is private, set HF_TOKEN to a token that "
                "can read it); check the id")
    if isinstance(cause, RevisionNotFoundError):
        return (f"{model} has no commit {revision} on {endpoint}: pin an existing one with "
                f"`mls revision {model}`")
    if isinstance(cause, RemoteEntryNotFoundError):
        name = str(cause.response.url).rsplit("/", 1)[-1]
        hint = "is it a transformers model?" if name == "config.json" else "its index lists it"
        return f"{model} at {rev} has no {name}: {hint}"
    if isinstance(cause, HfHubHTTPError) and cause.response.status_code == 429:
        wait = cause.response.headers.get("Retry-After")
        after = f" (it asks to wait {wait} s)" if wait else ""
        return (f"{endpoint} is rate-limiting this machine (HTTP 429){after}: run again later; "
                "requests signed with HF_TOKEN get a higher limit")
    if isinstance(cause, HfHubHTTPError):
        return (f"{endpoint} answered HTTP {cause.response.status_code} for {model} at {rev}: "
                "try again later")
    if isinstance(cause, httpx2.TransportError | OfflineModeIsEnabled):
        return (f"cannot reach {endpoint} ({type(cause).__name__}) and {model} at {rev} is not "
                "cached here: check the network and HF_ENDPOINT, then run again")
    if isinstance(cause, SafetensorsParsingError):
        return f"a safetensors header of {model} at {rev} cannot be parsed: is the upload whole?"
    if isinstance(cause, FileMetadataError):
        return (f"{endpoint} does not answer like a Hugging Face Hub (no commit or ETag "
                "headers): check HF_ENDPOINT")
    if offline:  # a local-only look-up found nothing
        return _never_read(model, revision)
    return f"{model} at {rev}: the Hub could not be read ({type(exc).__name__})"
