"""The glue every runbook step shares: progress events and timing around a fan-out."""

from __future__ import annotations

from collections.abc import Awaitable

from openbell.outcome import Outcome, utcnow
from openbell.run import StepResult
from tasks.context import RunContext


async def timed_step(
    ctx: RunContext, name: str, title: str, work: Awaitable[list[Outcome]], note: str = ""
) -> StepResult:
    """Await a step's outcomes, bracketed by progress events, as a StepResult."""
    started = utcnow()
    ctx.emit(name, "start", title)
    outcomes = await work
    result = StepResult(
        name=name,
        title=title,
        outcomes=outcomes,
        started_at=started,
        finished_at=utcnow(),
        note=note,
    )
    ctx.emit(name, "done", result)
    return result
