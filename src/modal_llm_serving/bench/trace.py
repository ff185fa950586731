"""Trace replay: a JSONL of arrivals and lengths, sent on its own clock (`--trace FILE`).

One line per request:

    {"timestamp": 0.0, "input_len": 512, "output_len": 128}
    {"timestamp": 0.4, "input_len": 96, "output_len": 64, "session_id": "u17"}

`timestamp` is seconds from the trace's start, `input_len` the request's new prompt tokens,
`output_len` the tokens it asks for; other keys are ignored (traces carry hashes and the like).
Lines that share a `session_id` are the turns of one conversation, in timestamp order: each turn
also carries the turns before it (as `--turns` does, so its request is longer than `input_len`
by its history), and goes out at its timestamp or when the turn before it has been answered,
whichever is later. The replay is an open loop: sessions start at their first timestamp divided
by `--trace-speed`, whatever the server does, so latency is also reported from the schedule.

A trace is a file from elsewhere: it is read as hostile input (a bounded line length, line
count and token total; every field checked), and a bad line is one error naming it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modal_llm_serving.bench.data import MAX_TOKENS, Prompt, Tokenizer, exact_text, token_corpus
from modal_llm_serving.endpoint.wire import is_int
from modal_llm_serving.errors import DatasetError
from modal_llm_serving.files import require_regular_file
from modal_llm_serving.untrusted import read_json

__all__ = ["MAX_LINES", "TraceLine", "load_trace", "trace_prompts", "trace_sessions"]

MAX_LINE_BYTES = 64 * 1024  # a line with a few hashes; far more is not a trace line
MAX_LINES = 200_000
MAX_INPUT_TOKENS = 50_000_000  # the prompts of a whole trace are built in memory (~4 bytes each)
MAX_TIMESTAMP_S = 30 * 86_400  # a month: beyond any benchmark
MAX_SESSION_ID = 256
HINT = '; each line is like {"timestamp": 0.5, "input_len": 512, "output_len": 128}'


@dataclasses.dataclass(frozen=True)
class TraceLine:
    """One request of a trace, checked."""

    timestamp_s: float
    input_len: int
    output_len: int
    session_id: str | None


def load_trace(path: Path) -> list[list[TraceLine]]:
    """The trace's sessions (a line without a session id is a session of one), each in
    timestamp order, ordered by their first timestamp; DatasetError names a bad line."""
    require_regular_file(path, what="--trace")  # /dev/zero is one line without end
    try:
        for _ in _raw_lines(path):  # the bounds first, before any line is decoded
            pass
        lines = [_line(raw, f"{path}:{number}") for number, raw in _raw_lines(path)
                 if raw.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not lines:
        raise DatasetError(f"{path} holds no requests{HINT}")
    if sum(line.input_len for line in lines) > MAX_INPUT_TOKENS:
        raise DatasetError(f"{path} asks for more than {MAX_INPUT_TOKENS} prompt tokens in all; "
                           "replay a part of it")
    sessions: dict[str, list[TraceLine]] = {}
    alone: list[list[TraceLine]] = []
    for line in lines:
        if line.session_id is None:
            alone.append([line])
        else:
            sessions.setdefault(line.session_id, []).append(line)
    ordered = [sorted(turns, key=lambda line: line.timestamp_s) for turns in sessions.values()]
    return sorted([*alone, *ordered], key=lambda turns: turns[0].timestamp_s)


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's numbered lines, each read to at most MAX_LINE_BYTES, at most MAX_LINES."""
    with path.open("rb") as handle:
        for number in range(1, MAX_LINES + 2):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if number > MAX_LINES:
                raise DatasetError(f"{path} has more than {MAX_LINES} lines; replay a part of it")
            if len(raw) > MAX_LINE_BYTES:
                raise DatasetError(f"{path}:{number} is longer than {MAX_LINE_BYTES} bytes{HINT}")
            yield number, raw


def _line(raw: bytes, where: str) -> TraceLine:
    try:
        row: Any = read_json(raw, what=where, max_bytes=MAX_LINE_BYTES)
    except ValueError as exc:  # not UTF-8, not JSON, or past a bound (UntrustedDataError)
        raise DatasetError(f"{exc}{HINT}") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{where} is not a JSON object{HINT}")
    stamp = row.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not (
            math.isfinite(stamp) and 0 <= stamp <= MAX_TIMESTAMP_S):
        raise DatasetError(f'{where}: "timestamp" must be seconds from the start, 0 to '
                           f"{MAX_TIMESTAMP_S}{HINT}")
    lengths = []
    for key in ("input_len", "output_len"):
        value = row.get(key)
        if not is_int(value) or not 1 <= value <= MAX_TOKENS:
            raise DatasetError(f'{where}: "{key}" must be a whole number of tokens, 1 to '
                               f"{MAX_TOKENS}{HINT}")
        lengths.append(value)
    session = row.get("session_id")
    if session is not None and not (is_int(session) or (
            isinstance(session, str) and 0 < len(session) <= MAX_SESSION_ID)):
        raise DatasetError(f'{where}: "session_id" must be a string of 1 to {MAX_SESSION_ID} '
                           "characters or a whole number")
    return TraceLine(timestamp_s=float(stamp), input_len=lengths[0], output_len=lengths[1],
                     session_id=None if session is None else str(session))


def trace_prompts(tokenizer: Tokenizer, sessions: list[list[TraceLine]], *,
                  seed: int) -> tuple[list[Prompt], float]:
    """One prompt per line, sessions one after another (a later turn `follows` the one before
    it), each of its exact input length and distinct (a shared text would be a prefix-cache hit
    no user made); returns them and the fraction of exact lengths."""
    rng = random.Random(seed)
    corpus = token_corpus(tokenizer, rng)
    prompts, exact = [], 0
    for turns in sessions:
        for turn, line in enumerate(turns):
            text, actual = exact_text(tokenizer, corpus, line.input_len, rng)
            exact += actual == line.input_len
            prompts.append(Prompt(text=text, input_len=actual, output_len=line.output_len,
                                  at_s=line.timestamp_s, follows=turn > 0))
    return prompts, exact / len(prompts)


def trace_sessions(prompts: list[Prompt]) -> list[range]:
    """The sessions of trace prompts (from `trace_prompts`): each one's range of indices."""
    starts = [index for index, prompt in enumerate(prompts) if not prompt.follows]
    return [range(start, end) for start, end in zip(starts, [*starts[1:], len(prompts)],
                                                     strict=True)]
