"""Alert path alive: a test notification reaches the region's on-call channel."""

from __future__ import annotations

from openbell import catalog
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.tasks.context import PlanContext, RunContext, StepRun, in_thread


def plan_alert_path(p: PlanContext) -> list[PlannedAction]:
    channel = p.estate.region(p.region).slack_channel
    return [PlannedAction(target=channel, action=f"post a test notification to {channel}")]


async def check_alert_path(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Post a test message to the on-call channel; failed if it is not delivered."""
    channel = ctx.estate.region(ctx.region).slack_channel
    started = utcnow()
    title = catalog.title(ctx.runbook)
    text = f"openbell alert-path test: {title} {ctx.region.upper()} {ctx.trade_date}"
    try:
        ref = await in_thread(ctx, ctx.notifier.post, channel, text)
    except Exception as exc:
        return [
            Outcome(
                step=step.name,
                target=channel,
                status=Status.FAILED,
                started_at=started,
                detail=f"test notification not delivered: {exc}",
            )
        ]
    return [
        Outcome(
            step=step.name,
            target=channel,
            status=Status.OK,
            started_at=started,
            detail=f"test notification delivered (ts {ref.ts})",
            evidence={"channel": ref.channel, "ts": ref.ts},
        )
    ]
