"""Where a run's results go: per-request JSONL written as requests finish, then summary JSON.

    OUT/requests.jsonl     one line per request, flushed as it finishes (an interrupted run keeps
                           everything that finished)
    OUT/summary.json       vLLM-compatible keys where the meaning is the same, ours otherwise
    OUT/report.md, *.png   rendered from the two above (`mls bench report OUT` re-renders)
A sweep writes one such folder per load level under OUT/, plus OUT/sweep.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.errors import UsageError

__all__ = ["JsonlSink", "read_records", "read_summary", "rebuild_summary", "write_json"]


class JsonlSink:
    """Appends one JSON line per finished record; flushes at most every `flush_s` seconds.

    A flush per line is a system call per request, paid on the event loop that stamps the other
    streams; at most `flush_s` of finished records are lost if the process is killed outright
    (an interrupted run flushes on close).
    """

    def __init__(self, path: Path, *, flush_s: float = 0.2) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] = path.open("w", encoding="utf-8")
        self._flush_s = flush_s
        self._last_flush = time.monotonic()
        self.count = 0

    def __call__(self, record: RequestRecord) -> None:
        self._handle.write(json.dumps(record.to_dict(), allow_nan=False, default=_clean) + "\n")
        self.count += 1
        now = time.monotonic()
        if now - self._last_flush >= self._flush_s:
            self._handle.flush()
            self._last_flush = now

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _clean(value: object) -> object:
    return str(value)


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null (or "inf" for an infinite request rate)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value == math.inf else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file, then rename): a reader never sees half a summary."""
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n")
    temp.replace(path)


def read_summary(folder: Path) -> dict[str, Any]:
    """The saved summary; for an interrupted run (JSONL only), one rebuilt from its records."""
    path = folder / "summary.json"
    if not path.is_file() and (folder / "requests.jsonl").is_file():
        return rebuild_summary(folder)
    if not path.is_file():
        raise UsageError(f"{folder} has no summary.json; give a folder written by `mls bench run`")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); re-run the benchmark") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a benchmark summary")
    return data


def rebuild_summary(folder: Path) -> dict[str, Any]:
    """Summarize an interrupted run from its JSONL (no window, no SLOs, no harness health) and
    save it, marked as rebuilt."""
    from modal_llm_serving.bench.metrics import FORMULAS, Accumulator

    accumulator = Accumulator()
    for data in read_records(folder / "requests.jsonl"):
        accumulator.add(RequestRecord.from_dict(data))
    summary = accumulator.summary()
    summary.update(label=f"{folder.name} (interrupted; rebuilt from requests.jsonl)",
                   rebuilt_from_jsonl=True, formulas=FORMULAS, harness={})
    write_json(folder / "summary.json", summary)
    return summary


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSONL's records, one at a time (a half-written last line is skipped)."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except ValueError:
                continue
