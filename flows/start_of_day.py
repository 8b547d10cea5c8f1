"""Start of day: the pre-open checklist of a region, as one Prefect flow.

Steps (DOMAIN.md, start of day), each a Prefect task that fans out over its targets:

1. calendar_gate          is the trade date a session? (else the run is skipped, not failed)
2. check_disk             disk use under threshold            } host checks over SSH,
   check_clock            clock offset inside the RTS 25 tier  } concurrent with
   check_fix_store        FIX store directory writable         } everything below
   check_logs_rotated     yesterday's logs rotated             }
3. ensure_apps_running    tier by tier in dependency order; started only if down,
                          then verified (health 200, expected version)
4. check_fix_sessions     Logon, HeartBtInt echoed, TestRequest answered, Logout
5. check_feeds            market data fresh, no unrecovered gaps
6. check_database         reference data, positions, limits, pre-trade controls,
                          overnight batch (read-only SQL with expectations)
7. check_alert_path       a test notification reaches the on-call channel
8. signoff                report (HTML, Markdown, JSON) and Slack summary
"""

from __future__ import annotations

import asyncio

from prefect import flow

from flows.common import RunParams, finish_run, open_run, run_namer
from flows.plan import SQL_STEPS, build_sod_plan
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord, StepResult
from tasks.alerts import check_alert_path
from tasks.apps import apps_not_up, ensure_apps_running
from tasks.context import RunContext
from tasks.database import check_database
from tasks.feeds import check_feeds
from tasks.hosts import check_clock, check_disk, check_fix_store, check_logs_rotated
from tasks.sessions import check_fix_sessions


async def _apps_in_order(ctx: RunContext) -> list[StepResult]:
    """Tier after tier; an app whose dependency is not up is skipped, not started."""
    results: list[StepResult] = []
    not_up: set[str] = set()
    for tier, apps in enumerate(ctx.estate.app_tiers(ctx.region)):
        result = await ensure_apps_running(ctx, tier, apps, not_up)
        not_up |= apps_not_up(result)
        results.append(result)
    return results


def _crashed(name: str, exc: BaseException) -> StepResult:
    """A step whose task itself raised: recorded as failed, never lost."""
    outcome = Outcome(
        step=name,
        target=name,
        status=Status.FAILED,
        detail=f"step crashed: {type(exc).__name__}: {exc}",
    )
    return StepResult(name=name, title=name, outcomes=[outcome])


@flow(name="start-of-day", flow_run_name=run_namer("sod"), log_prints=False)
async def start_of_day(params: RunParams) -> RunRecord:
    """Prepare a region for the open on its trade date."""
    ctx, record = await open_run("sod", params)
    if record.skipped_reason or params.dry_run:
        plan = build_sod_plan(ctx.estate, ctx.region, ctx.trade_date)
        record = record.model_copy(update={"plan": plan.model_dump(mode="json")})
        return await finish_run(ctx, record, [])

    names = ["disk", "clock", "fix_store", "logs", "apps", "fix", "feeds", *SQL_STEPS, "alert_path"]
    results = await asyncio.gather(
        check_disk(ctx),
        check_clock(ctx),
        check_fix_store(ctx),
        check_logs_rotated(ctx),
        _apps_in_order(ctx),
        check_fix_sessions(ctx),
        check_feeds(ctx),
        *(check_database(ctx, step) for step in SQL_STEPS),
        check_alert_path(ctx),
        return_exceptions=True,
    )
    steps: list[StepResult] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            steps.append(_crashed(name, result))
        elif isinstance(result, list):
            steps.extend(result)
        elif isinstance(result, StepResult):
            steps.append(result)
    return await finish_run(ctx, record, steps)
