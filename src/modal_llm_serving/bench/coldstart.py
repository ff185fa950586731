"""Cold-start mode: from a given moment, how long until the first successful token?

The moment is the start of each trial, or for the first trial a past moment you give
(`--since`: e.g. when `modal deploy` returned, or when the endpoint last served).

For scaled-to-zero endpoints (a Modal http_server answers 503 while it starts a container): each
trial starts its clock, sends one small streaming request, retries 502/503/504 and connection
errors (refused, reset, timeout) with a short pause, and stops at the first token-bearing event.
Repeated N times with a told wait between trials (long enough for the endpoint to scale back to
zero, or the second trial measures a warm container).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from modal_llm_serving.bench.metrics import stats
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.stream import RequestSpec, send_streaming
from modal_llm_serving.bench.transport import make_transport
from modal_llm_serving.errors import UsageError
from modal_llm_serving.redact import redact_url

__all__ = ["ColdStartTrial", "run_cold_start"]

RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_KINDS = frozenset({"connect", "reset", "timeout"})
RETRY_PAUSE_S = 0.5  # between a trial's attempts


@dataclasses.dataclass
class ColdStartTrial:
    """One trial: seconds to the first token (None if it never came) and what it took."""

    trial: int
    seconds_to_first_token: float | None
    attempts: int
    outcomes: dict[str, int]  # e.g. {"http_503": 41, "ok": 1}
    error: str | None = None


async def _trial(number: int, *, spec: RequestSpec, timeout_s: float,
                 since_ns: int | None) -> ColdStartTrial:
    outcomes: dict[str, int] = {}
    start_ns = time.perf_counter_ns() if since_ns is None else since_ns
    deadline = start_ns + int(timeout_s * 1e9)
    attempts = 0
    last_error = ""
    while time.perf_counter_ns() < deadline:
        attempts += 1
        # each attempt, its whole answer included, ends by the trial's deadline (--timeout)
        remaining = max(0.001, (deadline - time.perf_counter_ns()) / 1e9)
        record = RequestRecord(index=attempts, input_len=0, max_tokens=1)
        async with make_transport("raw", pool=1, timeout_s=remaining,
                                  stall_timeout_s=remaining) as transport:
            await send_streaming(transport, spec, record, t0_ns=start_ns)
        kind = "ok" if record.ok else (record.error or "unknown")
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if record.first_token_ns is not None and record.ok:
            return ColdStartTrial(number, record.first_token_ns / 1e9, attempts, outcomes)
        retryable = record.status in RETRY_STATUSES or (record.error in RETRY_KINDS)
        last_error = f"{kind}: {record.error_detail or ''}".strip()
        if not retryable:
            return ColdStartTrial(number, None, attempts, outcomes,
                                  error=f"not retryable: {last_error}")
        await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, (deadline - time.perf_counter_ns()) / 1e9)))
    return ColdStartTrial(number, None, attempts, outcomes,
                          error=f"no token within {timeout_s:g} s (last: {last_error})")


async def _run(*, spec: RequestSpec, repeat: int, wait_s: float, timeout_s: float,
               since_ns: int | None, on_event: Callable[[str], None]) -> list[ColdStartTrial]:
    trials = []
    for number in range(1, repeat + 1):
        if number > 1 and wait_s > 0:
            on_event(f"waiting {wait_s:g} s before trial {number} (for scale-down to zero)")
            await asyncio.sleep(wait_s)
        on_event(f"trial {number}/{repeat}: clock started")
        trial = await _trial(number, spec=spec, timeout_s=timeout_s,
                             since_ns=since_ns if number == 1 else None)
        trials.append(trial)
        shown = (f"{trial.seconds_to_first_token:.2f} s" if trial.seconds_to_first_token
                 is not None else f"failed ({trial.error})")
        on_event(f"trial {number}: first token after {shown}, {trial.attempts} attempt(s) "
                 f"{trial.outcomes}")
    return trials


def run_cold_start(*, base_url: str, model: str, api_key: str | None, headers: dict[str, str],
                   endpoint: str = "chat", repeat: int = 1, wait_s: float = 0.0,
                   timeout_s: float = 600.0, since_epoch_s: float | None = None,
                   on_event: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run `repeat` trials; return a summary with each trial and stats of the successful ones.

    `since_epoch_s` (wall-clock seconds, e.g. when a deploy finished or the last request was
    served) starts the first trial's clock at that past moment instead of now.
    """
    since_ns = None
    if since_epoch_s is not None:
        ago = time.time() - since_epoch_s  # wall clock only to place the moment, once
        if ago < 0:
            raise UsageError("--since is in the future; give a past moment")
        since_ns = time.perf_counter_ns() - int(ago * 1e9)
    from modal_llm_serving.bench.runner import run_event_loop

    chat = endpoint == "chat"
    body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": 1,
                            "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": "Say hi."}]
    else:
        body["prompt"] = "Say hi."
    all_headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
    if api_key:
        all_headers["Authorization"] = f"Bearer {api_key}"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    spec = RequestSpec(url=base_url + path, body=json.dumps(body).encode(), headers=all_headers,
                       chat=chat)
    trials = run_event_loop(_run(spec=spec, repeat=repeat, wait_s=wait_s, timeout_s=timeout_s,
                                 since_ns=since_ns, on_event=on_event))
    seconds = [t.seconds_to_first_token for t in trials if t.seconds_to_first_token is not None]
    return {
        "base_url": redact_url(base_url), "model": model, "repeat": repeat, "wait_s": wait_s,
        "timeout_s": timeout_s, "retry_pause_s": RETRY_PAUSE_S, "since_epoch_s": since_epoch_s,
        "definition": "time to first token = first token-bearing event − trial start, retrying "
                      "502/503/504 and connection errors",
        "trials": [dataclasses.asdict(trial) for trial in trials],
        "succeeded": len(seconds), "failed": len(trials) - len(seconds),
        "seconds_to_first_token": stats(seconds),
    }
