"""Database checks: reference data, positions, limits, pre-trade controls, overnight batch.

Each estate database names read-only SQL checks and the SOD step each belongs to; the
step's task runs that step's checks on every database of the region, binding
``:trade_date`` and ``:prev_trade_date``.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell import secrets
from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from openbell.runbooks.schema import Database, SqlCheck
from openbell.tasks.connectors import sql
from openbell.tasks.context import RunContext, fan_out, in_thread
from openbell.tasks.steps import timed_step

STEP_TITLES = {
    "refdata": "Reference data loaded",
    "positions": "Positions loaded",
    "limits": "Limits loaded",
    "controls": "Pre-trade controls armed",
    "batch": "Overnight batch finished",
}


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


@task(name="check_database", cache_policy=NO_CACHE, task_run_name="check_database[{step}]")
async def check_database(ctx: RunContext, step: str) -> StepResult:
    """Run one SOD step's SQL checks on every database of the region."""
    params = check_params(ctx)
    targets: list[tuple[str, tuple[str, Database, SqlCheck]]] = [
        (f"{name}:{check.name}", (name, db, check))
        for name, db in sorted(ctx.estate.databases_in(ctx.region).items())
        for check in db.checks
        if check.step == step
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
            step=step,
            target=target,
            started_at=started,
            detail=detail,
            status=Status.OK if result.passed else Status.FAILED,
            evidence={"value": result.value, "expected": result.expected},
        )

    note = "" if targets else "no checks defined for this step"
    title = STEP_TITLES.get(step, step)
    return await timed_step(ctx, step, title, fan_out(step, targets, probe), note)
