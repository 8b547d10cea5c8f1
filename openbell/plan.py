"""The plan of a run: ordered steps, each with its targets and the exact actions it takes.

These are the models every layer shares; :mod:`openbell.flows.plan` builds a plan from a
runbook's declaration, each step's part coming from the plan function declared beside
its task (built from the same command, URL and SQL builders the task uses).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, Field


class PlannedAction(BaseModel):
    """One thing a step will do to one target, as it will be done (a command, a URL...)."""

    target: str
    action: str


class StepPlan(BaseModel):
    """What a step's plan function returns when it has a note besides its actions."""

    actions: list[PlannedAction] = Field(default_factory=list)
    note: str = ""


class PlannedStep(BaseModel):
    """One step of a plan."""

    name: str
    title: str
    after: list[str] = Field(default_factory=list, description="steps that must finish first")
    actions: list[PlannedAction] = Field(default_factory=list)
    note: str = ""
    rerun: str = Field(default="", description="what a run now would skip or redo, and why")


class Plan(BaseModel):
    """What a run will do, step by step."""

    runbook: str
    region: str
    trade_date: date
    runs: bool
    skip_reason: str | None = None
    calendar: dict[str, Any] = Field(default_factory=dict)
    steps: list[PlannedStep] = Field(default_factory=list)

    def command_count(self) -> int:
        return sum(len(s.actions) for s in self.steps)
