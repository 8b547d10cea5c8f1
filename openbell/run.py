"""The record of one runbook run: steps, their outcomes, and the summary."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from openbell.outcome import Outcome, Status, utcnow, worst


class StepResult(BaseModel):
    """One runbook step and what it found on each target."""

    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    outcomes: list[Outcome] = Field(default_factory=list)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)
    note: str = ""

    @property
    def status(self) -> Status:
        if not self.outcomes:
            return Status.SKIPPED
        return worst([o.status for o in self.outcomes])

    @property
    def passed(self) -> bool:
        return self.status.passed

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status.value] = out.get(o.status.value, 0) + 1
        return out

    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    def summary(self) -> str:
        """One line: the note, or the first problem, or the counts."""
        probs = self.problems()
        if probs:
            first = probs[0]
            more = f" (+{len(probs) - 1} more)" if len(probs) > 1 else ""
            return f"{first.target}: {first.detail}{more}"
        if self.note:
            return self.note
        changed = [o for o in self.outcomes if o.status == Status.CHANGED]
        if len(self.outcomes) == 1 or changed:
            first = (changed or self.outcomes)[0]
            more = f" (+{len(self.outcomes) - 1} more)" if len(self.outcomes) > 1 else ""
            return f"{first.target}: {first.detail}{more}"
        return ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "nothing to do"


class RunRecord(BaseModel):
    """Everything a report needs about one run."""

    run_id: str
    runbook: str
    region: str
    trade_date: date
    dry_run: bool = False
    operator: str
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    calendar: dict[str, Any] = Field(default_factory=dict)
    skipped_reason: str | None = None
    steps: list[StepResult] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = Field(default_factory=list)
    estate_source: str | None = None
    flow_run_id: str | None = None
    reports: dict[str, str] = Field(default_factory=dict)

    @property
    def status(self) -> Status:
        if self.skipped_reason:
            return Status.SKIPPED
        statuses = [s.status for s in self.steps]
        return worst(statuses) if statuses else Status.SKIPPED

    @property
    def passed(self) -> bool:
        return self.status.passed

    @property
    def title(self) -> str:
        names = {"sod": "Start of day", "eod": "End of day"}
        return f"{names.get(self.runbook, self.runbook)} {self.region.upper()} {self.trade_date}"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            for k, v in s.counts().items():
                out[k] = out.get(k, 0) + v
        return out
