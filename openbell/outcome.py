"""What every check and change reports: an Outcome per target."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    """The result of one step on one target.

    ``ok``: already as desired; ``changed``: we changed it and verified;
    ``skipped``: not applicable (calendar, dependency failed, dry run);
    ``failed``: checked and wrong, or the action failed;
    ``unknown``: we cannot tell (e.g. connection lost mid-command).
    """

    OK = "ok"
    CHANGED = "changed"
    SKIPPED = "skipped"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def passed(self) -> bool:
        return self in (Status.OK, Status.CHANGED, Status.SKIPPED)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Outcome(BaseModel):
    """One step's result on one target.

    Example:
        >>> Outcome(step="disk", target="emea-app1", status=Status.OK, detail="42% used").passed
        True
    """

    model_config = ConfigDict(frozen=True)

    step: str
    target: str
    status: Status
    detail: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)

    @property
    def passed(self) -> bool:
        return self.status.passed

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


def worst(statuses: list[Status]) -> Status:
    """The status that summarises several: failed > unknown > changed > ok > skipped."""
    order = [Status.FAILED, Status.UNKNOWN, Status.CHANGED, Status.OK, Status.SKIPPED]
    for s in order:
        if s in statuses:
            return s
    return Status.SKIPPED
