"""Every failure the toolkit expects, as one tree; the CLI turns each into a one-line message.

    MlsError
    ├── UsageError              bad input: a flag, a file, a model id without a revision
    │   ├── WorkloadError       a workload field is invalid (carries the field's name)
    │   ├── FileError           this machine refused a read or write (disk full, read-only, ...)
    │   ├── DatasetError        a benchmark's --dataset file cannot be used (names the line)
    │   └── HubUnreachable      the Hub cannot be asked (offline, no network) and nothing is cached
    ├── PlanRefused             no plan can meet the workload; says what would fit instead
    ├── SloNotMet               no measured load level met the SLOs; says the lowest's numbers
    ├── EngineNotInstalled      the local engine (vLLM / SGLang) is missing
    ├── EngineStartError        the engine exited or never became ready (carries its last log lines)
    ├── ModelCacheError         the embedded model could not be extracted or converted
    ├── RecipeError             a recipe file is missing, or does not build an engine command
    ├── EngineArgsError         an engine's own parser rejects a command line
    ├── BenchDataError          benchmark prompts could not be built (the server's tokenizer)
    ├── UntrustedDataError      outside data (an answer, a file read back) breaks a bound; also
    │                           a ValueError, so a caller's `except ValueError` classifies it
    └── EndpointError           an HTTP endpoint misbehaved
        ├── EndpointTimeout     not ready before the deadline
        └── EndpointStatusError answered with an unexpected HTTP status
"""

from __future__ import annotations

__all__ = [
    "BenchDataError",
    "BenchWorkerError",
    "DatasetError",
    "EndpointError",
    "EndpointStatusError",
    "EndpointTimeout",
    "EngineArgsError",
    "EngineNotInstalled",
    "EngineStartError",
    "FileError",
    "HubUnreachable",
    "MlsError",
    "ModelCacheError",
    "PlanRefused",
    "RecipeError",
    "SloNotMet",
    "UntrustedDataError",
    "UsageError",
    "WorkloadError",
]


class MlsError(Exception):
    """Base of every error the toolkit raises on purpose."""


class BenchWorkerError(MlsError):
    """Raised when a bench worker process dies or fails; the message names the worker."""


class UsageError(MlsError):
    """Raised when the user's input cannot work; the message says how to fix it."""


class DatasetError(UsageError):
    """Raised when a benchmark's --dataset file cannot be used; the message names the line."""


class FileError(UsageError):
    """Raised when this machine refuses a read or write (disk full, read-only, no permission)."""


class HubUnreachable(UsageError):
    """Raised when the Hub cannot be asked (offline, no network) and nothing read is cached."""


class WorkloadError(UsageError):
    """Raised when a workload field (file or flag) is invalid; `field` names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class PlanRefused(MlsError):
    """Raised when no plan can meet the workload; the message says what would fit."""


class SloNotMet(MlsError):
    """Raised when no measured load level met the SLOs; the message gives the lowest's numbers."""


class EngineNotInstalled(MlsError):
    """Raised when the local engine is not importable; the message says how to install it."""


class EngineStartError(MlsError):
    """Raised when the engine exits or never gets ready; `log_tail` holds its last log lines."""

    def __init__(self, message: str, *, log_tail: str = "", log_path: str | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.log_path = log_path


class ModelCacheError(MlsError):
    """Raised when the embedded default model cannot be extracted or converted."""


class RecipeError(MlsError):
    """Raised when a recipe cannot be found or loaded, or does not build an engine command."""


class EngineArgsError(MlsError):
    """Raised when vLLM's or SGLang's own argument parser rejects a command line."""


class BenchDataError(MlsError):
    """Raised when a benchmark's prompts (JSONL, ShareGPT, tokenizer) cannot be used."""


class UntrustedDataError(MlsError, ValueError):
    """Raised when outside data is not JSON, or breaks a bound: depth, size, number, text."""


class EndpointError(MlsError):
    """Raised when an HTTP endpoint does not behave as an OpenAI-compatible server should."""


class EndpointTimeout(EndpointError):
    """Raised when an endpoint is not ready before the deadline."""


class EndpointStatusError(EndpointError):
    """Raised when an endpoint answers with a status that retrying will not change."""

    def __init__(self, message: str, *, status: int, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
