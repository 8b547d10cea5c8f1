"""Database checks: reference data, positions, limits, pre-trade controls, overnight batch.

Each estate database names read-only SQL checks and the step each belongs to (a step
whose work is ``check_database``: ``refdata``, ``positions``... in start of day); the
step runs its checks on every database of the region, binding ``:trade_date`` and
``:prev_trade_date``.
"""

from __future__ import annotations

from typing import Any

from openbell import secrets
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.runbooks.schema import Database, SqlCheck
from openbell.tasks.connectors import sql
from openbell.tasks.context import PlanContext, RunContext, StepRun, in_thread


def check_params(ctx: RunContext) -> dict[str, Any]:
    return {
        "trade_date": ctx.trade_date.isoformat(),
        "prev_trade_date": ctx.prev_trade_date.isoformat() if ctx.prev_trade_date else None,
    }


def sql_runner(ctx: RunContext, name: str, db: Database) -> sql.SqlRunner:
    """The run's read-only SQL runner for one database (made once per run)."""
    if name not in ctx.sql_runners:
        url = db.url if db.url is not None else secrets.resolve(db.url_secret or "")
        ctx.sql_runners[name] = sql.SqlRunner(name, url, timeout_s=db.timeout_s)
    return ctx.sql_runners[name]


def plan_database(p: PlanContext) -> list[PlannedAction]:
    """The step's read-only SQL checks on every database of the region."""
    return [
        PlannedAction(
            target=f"{n}:{c.name}",
            action=f"SQL (read-only, {db.timeout_s:g} s): "
            f"{' '.join(c.sql.split())} -> {c.expect.describe()}",
        )
        for n, db in sorted(p.estate.databases_in(p.region).items())
        for c in db.checks
        if c.step == p.step
    ]


async def check_database(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Run this step's SQL checks on every database of the region."""
    params = check_params(ctx)
    targets: list[tuple[str, tuple[str, Database, SqlCheck]]] = [
        (f"{name}:{check.name}", (name, db, check))
        for name, db in sorted(ctx.estate.databases_in(ctx.region).items())
        for check in db.checks
        if check.step == step.name
    ]

    async def probe(target: str, item: tuple[str, Database, SqlCheck]) -> Outcome:
        started = utcnow()
        name, db, check = item
        runner = sql_runner(ctx, name, db)
        result = await in_thread(ctx, sql.run_check, runner, check, params)
        detail = f"{result.value!r} (expected {result.expected})"
        if check.description:
            detail += f": {check.description}"
        return Outcome(
            step=step.name,
            target=target,
            started_at=started,
            detail=detail,
            status=Status.OK if result.passed else Status.FAILED,
            evidence={"value": result.value, "expected": result.expected},
        )

    step.note = "" if targets else "no checks defined for this step"
    return await step.fan_out(ctx, targets, probe)
