"""The close-time gate of end of day: has every venue of the region closed?

End of day follows the real close, half days included (XNYS closes 13:00 New York on
2026-11-27, XLON 12:30 London on 2026-12-24): the gate takes the latest close among
the region's venues that trade on the trade date. Started before it, the run waits for
the close or refuses, as ``runbooks.eod.before_close`` says; a wait longer than
``max_wait_minutes`` is refused too, so a run started in the morning does not sit in
a worker all day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from openbell.runbooks.schema import Region
from openbell.tasks.connectors import calendar
from openbell.tasks.context import RunContext
from openbell.tasks.steps import timed_step

Decision = Literal["closed", "wait", "refuse"]


def region_close(region: Region, day: date) -> tuple[datetime | None, dict[str, Any]]:
    """The latest close (UTC) among the region's venues in session, and the facts.

    Returns:
        (close or None when no venue trades that day, facts per venue).

    Example:
        >>> from openbell.runbooks.schema import Region
        >>> amer = Region(timezone="America/New_York", calendars=["XNYS"],
        ...               slack_channel="#a", approver_group="g", work_pool="amer")
        >>> close, facts = region_close(amer, date(2026, 11, 27))
        >>> close.isoformat(), facts["XNYS"]["half_day"]
        ('2026-11-27T18:00:00+00:00', True)
    """
    facts: dict[str, Any] = {}
    closes = []
    for venue in calendar.region_day(region, day).venues:
        facts[venue.calendar] = {
            "is_session": venue.is_session,
            "close_local": venue.close_local.isoformat() if venue.close_local else None,
            "half_day": venue.half_day,
            "half_day_reason": venue.half_day_reason,
        }
        if venue.close_utc is not None:
            closes.append(venue.close_utc)
    return (max(closes) if closes else None), facts


def close_decision(
    now: datetime, close: datetime, before_close: str, max_wait_s: float
) -> tuple[Decision, float]:
    """What to do at ``now``: go (closed), wait (seconds), or refuse (seconds to go).

    Example:
        >>> from datetime import UTC
        >>> close = datetime(2026, 11, 27, 18, tzinfo=UTC)
        >>> close_decision(datetime(2026, 11, 27, 17, 30, tzinfo=UTC), close, "wait", 3600)
        ('wait', 1800.0)
        >>> close_decision(datetime(2026, 11, 27, 17, 30, tzinfo=UTC), close, "refuse", 3600)
        ('refuse', 1800.0)
    """
    remaining = (close - now).total_seconds()
    if remaining <= 0:
        return "closed", 0.0
    if before_close == "wait" and remaining <= max_wait_s:
        return "wait", remaining
    return "refuse", remaining


@task(name="check_market_closed", cache_policy=NO_CACHE)
async def check_market_closed(
    ctx: RunContext, clock: Callable[[], datetime] = utcnow
) -> StepResult:
    """Every venue of the region has closed for the trade date (or wait for it)."""
    region = ctx.estate.region(ctx.region)
    policy = ctx.estate.policy("eod")

    async def work() -> list[Outcome]:
        started = utcnow()
        close, facts = region_close(region, ctx.trade_date)
        target = "+".join(region.calendars)
        if close is None:
            return [
                Outcome(
                    step="close",
                    target=target,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"no venue of {ctx.region} trades on {ctx.trade_date}",
                    evidence={"venues": facts},
                )
            ]
        local = close.astimezone(_zone(region.timezone))
        half = [f"{c} half day" for c, f in facts.items() if f["half_day"]]
        when = f"{local:%H:%M %Z} {ctx.trade_date}" + (f" ({', '.join(half)})" if half else "")
        evidence = {"close_utc": close.isoformat(), "venues": facts}
        decision, seconds = close_decision(
            clock(), close, policy.before_close, policy.max_wait_minutes * 60
        )
        if decision == "refuse":
            return [
                Outcome(
                    step="close",
                    target=target,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"not closed yet: closes at {when}, in {seconds / 60:.0f} min; "
                    f"refusing (before_close: {policy.before_close}, "
                    f"max_wait_minutes: {policy.max_wait_minutes:g})",
                    evidence=evidence,
                )
            ]
        waited = ""
        if decision == "wait":
            await asyncio.sleep(seconds)
            waited = f"; waited {seconds / 60:.1f} min for it"
        return [
            Outcome(
                step="close",
                target=target,
                status=Status.OK,
                started_at=started,
                detail=f"closed at {when}{waited}",
                evidence=evidence,
            )
        ]

    return await timed_step(ctx, "close", "Market closed", work())


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)
