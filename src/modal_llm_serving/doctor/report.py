"""The doctor's report: each question's answer (ok / warn / fail, and the fix), without secrets.

Every string of a check passes through `without_secrets` (redact's masking) before it is
reported: a second line of defence (no check prints a token on purpose, but a broken CLI may echo
its environment).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from modal_llm_serving.redact import redact_data

__all__ = ["Check", "DoctorReport", "Status", "without_secrets"]

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One question answered: `status` ok / warn / fail, and the fix when it is not ok."""

    id: str
    title: str
    status: Status
    summary: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    """Every check, in the order a person should read them."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True unless some check failed (warnings do not fail the doctor)."""
        return all(check.status != "fail" for check in self.checks)

    def get(self, check_id: str) -> Check:
        for check in self.checks:
            if check.id == check_id:
                return check
        raise KeyError(check_id)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


def without_secrets(check: Check) -> Check:
    """`check` with every registered secret masked in its summary, fix and data."""
    return Check(check.id, check.title, check.status, redact_data(check.summary),
                 redact_data(check.fix), redact_data(check.data))
