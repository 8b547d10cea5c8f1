"""Start of day: the pre-open checklist of a region, as one Prefect flow.

Steps (DOMAIN.md, start of day), each a Prefect task that fans out over its targets:

1. calendar_gate          is the trade date a session? (else the run is skipped, not failed)
2. check_disk             disk use under threshold            } host checks over SSH,
   check_clock            clock offset inside the RTS 25 tier  } concurrent with
   check_fix_store        FIX store directory writable         } everything below
   check_logs_rotated     yesterday's logs rotated             }
3. ensure_apps_running    tier by tier in dependency order; started only if down,
                          then verified (health 200, expected version); where the
                          estate says so, the apps that are down wait for approval
                          first (apps_down, then approval[apps])
4. check_fix_sessions     Logon, HeartBtInt echoed, TestRequest answered, Logout
5. check_feeds            market data fresh, no unrecovered gaps
6. check_database         reference data, positions, limits, pre-trade controls,
                          overnight batch (read-only SQL with expectations)
7. check_alert_path       a test notification reaches the on-call channel
8. signoff                report (HTML, Markdown, JSON) and Slack summary
"""

from __future__ import annotations

from openbell.flows.common import (
    RunParams,
    finish_run,
    open_run,
    openbell_flow,
    run_namer,
    run_steps,
)
from openbell.flows.plan import SQL_STEPS
from openbell.run import RunRecord, StepResult
from openbell.tasks.alerts import check_alert_path
from openbell.tasks.approvals.gate import gate, policy_for
from openbell.tasks.apps import apps_down, apps_not_up, ensure_apps_running
from openbell.tasks.context import RunContext
from openbell.tasks.database import check_database
from openbell.tasks.feeds import check_feeds
from openbell.tasks.hosts import check_clock, check_disk, check_fix_store, check_logs_rotated
from openbell.tasks.sessions import check_fix_sessions


async def _apps_in_order(ctx: RunContext) -> list[StepResult]:
    """Tier after tier; an app whose dependency is not up is skipped, not started.

    Where the estate says starting apps needs approval, the apps that are down are
    listed first and the flow waits for the approvers; only the apps they approved are
    started, and nothing is started if they reject it or do not answer in time.
    """
    refused: dict[str, str] = {}
    if policy_for(ctx, "apps") is not None:
        down = await apps_down(ctx)
        if down:
            verdict = await gate(
                ctx,
                "apps",
                targets=down,
                changes=[f"start {t}" for t in down],
                summary=f"start {len(down)} app(s) that are down in {ctx.region.upper()}",
            )
            if not verdict.satisfied:
                refused = {
                    t: f"not started: approval {verdict.status}: {verdict.reason}" for t in down
                }
    results: list[StepResult] = []
    not_up: set[str] = set()
    for tier, apps in enumerate(ctx.estate.app_tiers(ctx.region)):
        result = await ensure_apps_running(ctx, tier, apps, not_up, refused)
        not_up |= apps_not_up(result)
        results.append(result)
    return results


@openbell_flow("start-of-day", run_namer("sod"))
async def start_of_day(params: RunParams) -> RunRecord:
    """Prepare a region for the open on its trade date."""
    ctx, record = await open_run("sod", params)
    if record.skipped_reason or params.dry_run:
        return await finish_run(ctx, record, [])
    steps = await run_steps(
        ctx,
        [
            ("disk", check_disk(ctx)),
            ("clock", check_clock(ctx)),
            ("fix_store", check_fix_store(ctx)),
            ("logs", check_logs_rotated(ctx)),
            ("apps", _apps_in_order(ctx)),
            ("fix", check_fix_sessions(ctx)),
            ("feeds", check_feeds(ctx)),
            *((step, check_database(ctx, step)) for step in SQL_STEPS),
            ("alert_path", check_alert_path(ctx)),
        ],
    )
    return await finish_run(ctx, record, steps)
