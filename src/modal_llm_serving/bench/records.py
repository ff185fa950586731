"""What one benchmark request leaves behind: raw `perf_counter_ns` stamps, counts and its fate.

The streaming loop only stamps times; every latency is a computed property (None when the data
for it is missing), so the JSONL on disk holds the raw truth and any metric can be recomputed.
All stamps are nanoseconds relative to the run's start (`t0`), so records from one run compare.

Token-bearing event (the same rule as `vllm bench serve`, one refinement): a streamed event whose
`choices` list is non-empty. vLLM opens every chat stream with a role-only chunk
(`{"role": "assistant", "content": ""}`) emitted in the same engine step as the first token; it
carries no token, so it is not counted (a server that sends it before prefill would otherwise
fake a fast TTFT). An empty-content delta that is not that opener *is* counted: it is a token
whose bytes are an incomplete UTF-8 sequence, held back by the detokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from modal_llm_serving.endpoint.wire import is_int

__all__ = ["RequestRecord"]

NS_PER_MS = 1_000_000


@dataclasses.dataclass
class RequestRecord:
    """One request: when it was scheduled, sent, answered, and what came back."""

    index: int
    input_len: int  # prompt tokens we aimed for (the server's count is `prompt_tokens`)
    max_tokens: int
    scheduled_ns: int | None = None  # open loop only: when the schedule said to send it
    sent_ns: int = 0  # just before the request bytes were handed to the connection
    first_token_ns: int | None = None  # first token-bearing event's bytes came off the socket
    last_token_ns: int | None = None
    end_ns: int = 0  # response finished (or failed)
    itl_ns: list[int] = dataclasses.field(default_factory=list)  # gaps between token events
    token_events: int = 0
    prompt_tokens: int | None = None  # usage.prompt_tokens
    completion_tokens: int | None = None  # usage.completion_tokens (N_out)
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, if sent
    status: int | None = None  # HTTP status of the last attempt
    error: str | None = None  # kind: http_503, timeout, reset, malformed_chunk, connect, ...
    error_detail: str | None = None
    attempts: int = 1
    saw_done: bool = False
    session_id: str | None = None  # multi-turn: the conversation this request belongs to
    turn: int = 0
    text_chars: int = 0
    server_timing: dict[str, int] | None = None  # a server's own stamps, if it sends them

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def n_out(self) -> int | None:
        """Output tokens: usage.completion_tokens; only without usage, the token-event count."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return self.token_events if self.token_events else None

    @property
    def ttft_ms(self) -> float | None:
        """TTFT = first token-bearing event − send."""
        if not self.ok or self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.sent_ns) / NS_PER_MS

    @property
    def e2el_ms(self) -> float | None:
        """E2EL = last token event − send."""
        if not self.ok or self.last_token_ns is None:
            return None
        return (self.last_token_ns - self.sent_ns) / NS_PER_MS

    @property
    def tokens_in_first_event(self) -> int:
        """1 for token-per-event streams; for chunked streams, tokens per event (rounded)."""
        n_out = self.n_out
        if not n_out or not self.token_events:
            return 1
        return max(1, round(n_out / self.token_events))

    @property
    def tpot_ms(self) -> float | None:
        """TPOT = (t_last − t_first) / (N_out − tokens in first event)."""
        n_out = self.n_out
        if not self.ok or self.first_token_ns is None or self.last_token_ns is None or not n_out:
            return None
        rest = n_out - self.tokens_in_first_event
        if rest <= 0:
            return None
        return (self.last_token_ns - self.first_token_ns) / NS_PER_MS / rest

    @property
    def sched_ttft_ms(self) -> float | None:
        """Coordinated-omission corrected TTFT = first token-bearing event − scheduled send."""
        if self.scheduled_ns is None or self.ttft_ms is None or self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.scheduled_ns) / NS_PER_MS

    @property
    def sched_e2el_ms(self) -> float | None:
        """Coordinated-omission corrected E2EL = last token event − scheduled send."""
        if self.scheduled_ns is None or self.e2el_ms is None or self.last_token_ns is None:
            return None
        return (self.last_token_ns - self.scheduled_ns) / NS_PER_MS

    @property
    def dispatch_lag_ms(self) -> float | None:
        """Send − scheduled send: how late the client was (open loop)."""
        if self.scheduled_ns is None:
            return None
        return (self.sent_ns - self.scheduled_ns) / NS_PER_MS

    def to_dict(self) -> dict[str, Any]:
        """Raw fields plus the derived metrics, for one JSONL line (a shallow dict: it is
        serialized at once, and asdict's deep copy of every gap list cost 5% of the client)."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data.update(ok=self.ok, n_out=self.n_out, ttft_ms=self.ttft_ms, tpot_ms=self.tpot_ms,
                    e2el_ms=self.e2el_ms, sched_ttft_ms=self.sched_ttft_ms,
                    sched_e2el_ms=self.sched_e2el_ms, dispatch_lag_ms=self.dispatch_lag_ms)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """A record from a saved JSONL line; ValueError if a field has the wrong type (a file
        is input too: edited, truncated or written by something else)."""
        values: dict[str, Any] = {}
        for name, kinds in _SAVED_TYPES.items():
            if name not in data:
                continue
            value: Any = data[name]
            if value is None and type(None) in kinds:
                values[name] = value
            elif isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
                raise ValueError(f"field {name!r} is {value!r:.40}, not {kinds}")
            elif name == "itl_ns" and not all(is_int(gap) for gap in cast(list[Any], value)):
                raise ValueError("field 'itl_ns' holds a value that is not an integer")
            elif name == "server_timing" and not all(
                    isinstance(key, str) and is_int(stamp)
                    for key, stamp in cast(dict[Any, Any], value).items()):
                raise ValueError("field 'server_timing' is not names to integer stamps")
            else:
                values[name] = value
        if "index" not in values or "input_len" not in values or "max_tokens" not in values:
            raise ValueError("a record needs index, input_len and max_tokens")
        return cls(**values)


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(RequestRecord))
_INT, _OPT_INT, _OPT_STR = (int,), (int, type(None)), (str, type(None))
_SAVED_TYPES: dict[str, tuple[type, ...]] = {
    "index": _INT, "input_len": _INT, "max_tokens": _INT, "scheduled_ns": _OPT_INT,
    "sent_ns": _INT, "first_token_ns": _OPT_INT, "last_token_ns": _OPT_INT, "end_ns": _INT,
    "itl_ns": (list,), "token_events": _INT, "prompt_tokens": _OPT_INT,
    "completion_tokens": _OPT_INT, "cached_tokens": _OPT_INT, "status": _OPT_INT, "error": _OPT_STR,
    "error_detail": _OPT_STR, "attempts": _INT, "saw_done": (bool,), "session_id": _OPT_STR,
    "turn": _INT, "text_chars": _INT, "server_timing": (dict, type(None)),
}
