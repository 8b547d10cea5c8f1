"""Alert path alive: a test notification reaches the region's on-call channel."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from openbell.tasks.context import RunContext, in_thread
from openbell.tasks.steps import timed_step


@task(name="check_alert_path", cache_policy=NO_CACHE)
async def check_alert_path(ctx: RunContext) -> StepResult:
    """Post a test message to the on-call channel; failed if it is not delivered."""
    channel = ctx.estate.region(ctx.region).slack_channel

    async def work() -> list[Outcome]:
        started = utcnow()
        text = f"openbell alert-path test: start of day {ctx.region.upper()} {ctx.trade_date}"
        try:
            ref = await in_thread(ctx, ctx.notifier.post, channel, text)
        except Exception as exc:
            return [
                Outcome(
                    step="alert_path",
                    target=channel,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"test notification not delivered: {exc}",
                )
            ]
        return [
            Outcome(
                step="alert_path",
                target=channel,
                status=Status.OK,
                started_at=started,
                detail=f"test notification delivered (ts {ref.ts})",
                evidence={"channel": ref.channel, "ts": ref.ts},
            )
        ]

    return await timed_step(ctx, "alert_path", "Alert path alive", work())
