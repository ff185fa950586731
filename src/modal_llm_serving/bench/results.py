"""Where a run's results go: per-request JSONL written as requests finish, then summary JSON.

    OUT/requests.jsonl     one line per request, flushed as it finishes (an interrupted run keeps
                           everything that finished)
    OUT/summary.json       vLLM-compatible keys where the meaning is the same, ours otherwise
    OUT/engine_metrics.jsonl  the engine's /metrics, one line per scrape (bench/engine.py)
    OUT/report.md, *.png   rendered from the two above (`mls bench report OUT` re-renders)
A sweep writes one such folder per load level under OUT/, plus OUT/sweep.json.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.errors import FileError, UsageError
from modal_llm_serving.files import LOCK_NAME, FolderClaim, cannot_write, write_atomic
from modal_llm_serving.redact import redact_json
from modal_llm_serving.untrusted import read_json, read_json_file

if TYPE_CHECKING:
    from modal_llm_serving.bench.summary import LevelSummary

__all__ = ["JsonlSink", "Records", "new_out_dir", "prepare_out_dir", "read_records", "read_summary",
           "read_sweep", "rebuild_summary", "summary_problem", "sweep_levels", "write_json",
           "write_summary", "write_sweep"]

# At most this much of finished records is lost if the process is killed outright.
FLUSH_S = 0.2


class JsonlSink:
    """Appends one JSON line per finished record; flushes at most every `FLUSH_S` seconds.

    A flush per line is a system call per request, paid on the event loop that stamps the other
    streams (an interrupted run flushes on close). The file only ever ends in a whole line: a
    write the disk refuses (full, quota, file size limit) is cut back to the last whole record
    and raises `FileError` once; records after that are dropped (the run is ending).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                       | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise cannot_write(path, exc) from None
        self._pending: list[str] = []
        self._kept = 0  # bytes on disk, all of them whole lines
        self._last_flush = time.monotonic()
        self.count = 0
        self.failure: FileError | None = None

    def __call__(self, record: RequestRecord) -> None:
        if self.failure is not None:
            return
        self._pending.append(redact_json(record.to_dict(), allow_nan=False, default=_clean)
                             + "\n")
        self.count += 1
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_S:
            self._last_flush = now
            self.flush()

    def flush(self) -> None:
        if self.failure is not None or not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "surrogateescape")
        self._pending.clear()
        written = 0
        try:
            while written < len(data):
                written += os.write(self._descriptor, data[written:])
        except OSError as exc:
            self._kept += data.rfind(b"\n", 0, written) + 1  # the whole lines that got there
            with contextlib.suppress(OSError):
                os.ftruncate(self._descriptor, self._kept)
            self.failure = cannot_write(self.path, exc)
            raise self.failure from None
        self._kept += written

    def close(self) -> None:
        if self._descriptor < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._descriptor)
            self._descriptor = -1

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:  # already failing: keep what can be kept, raise the first
            with contextlib.suppress(FileError):
                self.close()
        else:
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
    """Write atomically (a unique temp file, then rename): a reader never sees half a summary;
    the machine refusing it (disk full, read-only) is a one-line `FileError`. Every string is
    redacted (a server's text in an error example, a model id)."""
    try:
        write_atomic(path, redact_json(_finite(data), indent=2, allow_nan=False, default=str)
                     + "\n")
    except OSError as exc:
        raise cannot_write(path, exc) from None


def write_summary(folder: Path, summary: LevelSummary) -> None:
    """A level's folder/summary.json."""
    write_json(folder / "summary.json", summary.to_dict())


RESULT_FILES = ("requests.jsonl", "summary.json", "sweep.json", "report.md",
                "engine_metrics.jsonl")


def _is_result_file(path: Path) -> bool:
    return path.is_file() and (path.name in RESULT_FILES or path.name == LOCK_NAME
                               or path.suffix in (".png", ".tmp"))


def _result_files(folder: Path) -> list[Path] | None:
    """Every file of a results folder (levels included), or None if it holds anything else."""
    found = []
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            inner = _result_files(path)
            if inner is None:
                return None
            found += [*inner, path]
        elif _is_result_file(path) and not path.is_symlink():
            found.append(path)
        else:
            return None
    return found


def prepare_out_dir(folder: Path, *, overwrite: bool = False) -> FolderClaim:
    """Claim `folder` and make it ready before any work: created, writable, held by this run
    alone (the claim returned; release it when the run ends), and empty, so results of two runs
    never mix. A folder with results is refused unless `overwrite` (then only its result files
    go); a folder with anything else, or one another run is writing, is always refused."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; give a folder for the results")
    claim = FolderClaim(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        claim.acquire()  # before looking inside: a live run's folder is never judged or cleared
    except OSError as exc:
        raise UsageError(f"--out {folder}: cannot write there ({exc.strerror or exc}); give a "
                         "folder you can write to") from None
    try:
        _clear_for_run(folder, overwrite=overwrite)
    except BaseException:
        claim.release()
        raise
    return claim


def _clear_for_run(folder: Path, *, overwrite: bool) -> None:
    files = _result_files(folder)
    if files is None:
        raise UsageError(f"--out {folder} holds files that are not benchmark results; give "
                         "an empty or new folder")
    files = [path for path in files if path != folder / LOCK_NAME]
    if files and not overwrite:
        raise UsageError(f"--out {folder} already holds results; pass --overwrite to replace "
                         "them, or give a new folder")
    for path in files:  # files before their folders (the order _result_files lists them)
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()


def new_out_dir(parent: Path, prefix: str) -> Path:
    """A results folder `parent/prefix-<UTC time>` that no other run has (claimed atomically:
    two runs in the same second get -2, -3, ...)."""
    import datetime as dt

    stamp = f"{prefix}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
    except OSError as exc:
        raise UsageError(f"cannot create a results folder in {parent} ({exc.strerror or exc}); "
                         "pass --out with a folder you can write to") from None
    raise UsageError(f"{parent} already has 999 results folders named {stamp}*; pass --out")


# What a summary must hold for the report and the terminal view (a file is input: check it).
SUMMARY_NUMBERS = ("duration", "request_throughput", "output_throughput",
                   "total_token_throughput", "achieved_concurrency")
SUMMARY_COUNTS = ("completed", "failed")


def summary_problem(data: object) -> str | None:
    """Why `data` is not a usable summary, or None if it is."""
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for key in SUMMARY_COUNTS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key!r} is missing or not a count"
    for key in SUMMARY_NUMBERS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            return f"{key!r} is missing or not a number"
    return None


_STATS = ("mean", "max", "p50", "p90", "p95", "p99")  # what the report shows of each metric


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _sanitized(data: dict[str, Any]) -> dict[str, Any]:
    """A checked summary with every optional part that has the wrong shape dropped, so the
    report shows what is sound and leaves out (never trips over) what is not."""
    data = dict(data)
    for key in [key for key in data if key.startswith("n_")]:
        metric = key[2:]
        stats_ok = all(f"{stat}_{metric}_ms" in data and _number_or_none(
            data[f"{stat}_{metric}_ms"]) for stat in _STATS)
        if isinstance(data[key], bool) or not isinstance(data[key], int) or not stats_ok:
            del data[key]
    counts = data.get("error_counts")
    if not (isinstance(counts, dict) and all(isinstance(k, str) and isinstance(v, int)
                                             for k, v in counts.items())):
        data.pop("error_counts", None)
    examples = data.get("error_examples")
    if not (isinstance(examples, dict) and all(isinstance(v, str) for v in examples.values())):
        data.pop("error_examples", None)
    if not (_number_or_none(data.get("request_goodput")) and _number_or_none(
            data.get("slo_attainment"))) or data.get("slo_attainment") is None:
        data.pop("request_goodput", None)
    for key in ("harness", "config", "data", "client"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    data["harness"] = {key: value for key, value in data.get("harness", {}).items()
                       if (key == "warnings" and isinstance(value, list)
                           and all(isinstance(item, str) for item in value))
                       or (key != "warnings" and _number_or_none(value))}
    if not _number_or_none(data["data"].get("exact_input_fraction")):
        data["data"] = {**data["data"], "exact_input_fraction": None}
    if isinstance(data.get("engine"), dict):  # the engine's view: numbers, and two texts
        data["engine"] = {key: value for key, value in data["engine"].items()
                          if (key in ("source", "unavailable") and isinstance(value, str))
                          or (key not in ("source", "unavailable") and _number_or_none(value))}
    else:
        data.pop("engine", None)
    for key in ("total_cached_tokens", "cached_token_share"):
        if not _number_or_none(data.get(key)):
            data.pop(key)
    if not isinstance(data.get("label", ""), str):
        data.pop("label")
    return data


def read_summary(folder: Path) -> dict[str, Any]:
    """The saved summary, checked; one rebuilt from requests.jsonl when it is missing or broken
    (an interrupted run, a truncated or edited file)."""
    path = folder / "summary.json"
    problem: str | None = "it is missing"
    if path.is_file():
        try:
            data = read_json_file(path)
        except ValueError as exc:  # not UTF-8, not JSON, or past a bound (UntrustedDataError)
            problem = f"it is not valid JSON ({type(exc).__name__})"
        else:
            if (problem := summary_problem(data)) is None:
                return _sanitized(data)
    if (folder / "requests.jsonl").is_file():
        return rebuild_summary(folder, why="interrupted" if problem == "it is missing" else
                               f"summary.json unusable: {problem}")
    raise UsageError(f"{path}: {problem}, and there is no requests.jsonl to rebuild it from; "
                     "give a folder written by `mls bench run`")


def rebuild_summary(folder: Path, *, why: str = "interrupted") -> dict[str, Any]:
    """Summarize an interrupted run from its JSONL (no window, no SLOs, no harness health) and
    save it, marked as rebuilt. Lines that are not records are skipped and counted."""
    from modal_llm_serving.bench.metrics import Accumulator
    from modal_llm_serving.bench.summary import LevelSummary

    accumulator = Accumulator()
    skipped = 0
    records = read_records(folder / "requests.jsonl")
    for data in records:
        try:
            record = RequestRecord.from_dict(data)
        except ValueError:
            skipped += 1
            continue
        accumulator.add(record)
    skipped += records.skipped
    summary = LevelSummary(measured=accumulator.summary(), harness={},
                           label=f"{folder.name} ({why}; rebuilt from requests.jsonl)", run=None,
                           skipped_lines=skipped)
    write_summary(folder, summary)
    return _sanitized(summary.to_dict())


class Records:
    """The JSONL's records, one dict at a time; `skipped` counts the lines that were not one
    within the bounds of `untrusted.read_json` (a half-written last line of a killed run, stray
    text, bytes that are not UTF-8, a number or a nesting out of bounds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            for line in handle:
                try:
                    data = read_json(line, what=str(self.path))
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    yield data
                elif line.strip():
                    self.skipped += 1


def read_records(path: Path) -> Records:
    """The JSONL's records (iterate it), counting the lines that are not records."""
    return Records(path)


def write_sweep(folder: Path, slugs: list[str], summaries: list[LevelSummary], *,
                capacity: dict[str, Any] | None = None) -> None:
    """The sweep's index: every planned level, and whether all of them finished (written at
    the start and after each level, so an interrupted sweep still names its levels); a
    capacity search adds its `capacity` (shape: bench/slo.py)."""
    write_json(folder / "sweep.json", {"levels": slugs, "complete": len(summaries) == len(slugs),
                                       "summaries": [summary.to_dict() for summary in summaries],
                                       **({} if capacity is None else {"capacity": capacity})})


def read_sweep(folder: Path) -> Any:
    """A sweep's saved index (sweep.json) as written, or a UsageError saying why it is unusable."""
    path = folder / "sweep.json"
    try:
        return read_json_file(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:  # not UTF-8, not JSON, or past a bound (UntrustedDataError)
        raise UsageError(f"{path} is unusable ({exc}); run `mls bench report` without --json "
                         "to rebuild what its levels hold") from None


def sweep_levels(folder: Path) -> list[str] | None:
    """A sweep folder's level folders that hold results, in sweep order; None if not a sweep.

    From sweep.json when it is readable; otherwise (truncated, edited, missing after a crash)
    from the subfolders that hold a requests.jsonl or a summary.json.
    """
    present = [path.name for path in sorted(folder.iterdir()) if path.is_dir() and (
        (path / "requests.jsonl").is_file() or (path / "summary.json").is_file())]
    try:
        data = read_json_file(folder / "sweep.json")
        listed = data.get("levels") if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError):
        listed = None
    if isinstance(listed, list) and all(isinstance(slug, str) for slug in listed):
        ordered = [slug for slug in listed if slug in present]
        return ordered + [slug for slug in present if slug not in ordered]
    if (folder / "sweep.json").exists() or (present and not (folder / "requests.jsonl").exists()):
        return present
    return None
