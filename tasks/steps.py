"""The glue every runbook step shares: progress, timing and the ledger around a fan-out."""

from __future__ import annotations

from collections.abc import Awaitable

from openbell import chaos
from openbell.outcome import Outcome, utcnow
from openbell.run import StepResult
from openbell.tasks.context import RunContext, in_thread


async def timed_step(
    ctx: RunContext, name: str, title: str, work: Awaitable[list[Outcome]], note: str = ""
) -> StepResult:
    """Await a step's outcomes, bracketed by progress events, as a StepResult.

    The finished step and every outcome go to the run's ledger at once, so the record
    of what was done survives the flow process dying at the next step.
    """
    started = utcnow()
    chaos.point(f"{name}:begin")
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
    if ctx.ledger is not None:
        await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, result)
    chaos.point(f"{name}:end")
    ctx.emit(name, "done", result)
    return result
