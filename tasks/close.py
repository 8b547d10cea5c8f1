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

from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import StepPlan
from openbell.runbooks.schema import EodPolicy, Region
from openbell.tasks.connectors import calendar
from openbell.tasks.context import PlanContext, RunContext, StepRun

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


def plan_close(p: PlanContext) -> StepPlan:
    """When the region closes (half days) and what a run started before it does."""
    reg = p.estate.region(p.region)
    policy = _policy(p.policy)
    close, venues = region_close(reg, p.trade_date)
    half = [f"{c} half day: {v['half_day_reason']}" for c, v in venues.items() if v["half_day"]]
    when = close.astimezone(_zone(reg.timezone)).strftime("%H:%M %Z") if close else "?"
    wait = f" (at most {policy.max_wait_minutes:g} min)" if policy.before_close == "wait" else ""
    return StepPlan(
        note=f"closes {when}"
        + (f" ({'; '.join(half)})" if half else "")
        + f"; before the close: {policy.before_close}{wait}"
    )


def _policy(policy: object) -> EodPolicy:
    # The close gate reads end of day's policy fields: a runbook that declares this step
    # declares EodPolicy (or a subclass) as its policy model.
    if not isinstance(policy, EodPolicy):
        raise TypeError(
            f"the close gate reads before_close and max_wait_minutes: the runbook's policy "
            f"model must be EodPolicy or a subclass, not {type(policy).__name__}"
        )
    return policy


async def check_market_closed(
    ctx: RunContext, step: StepRun, clock: Callable[[], datetime] = utcnow
) -> list[Outcome]:
    """Every venue of the region has closed for the trade date (or wait for it)."""
    region = ctx.estate.region(ctx.region)
    policy = _policy(ctx.estate.policy(ctx.runbook))
    started = utcnow()
    close, facts = region_close(region, ctx.trade_date)
    target = "+".join(region.calendars)
    if close is None:
        return [
            Outcome(
                step=step.name,
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
                step=step.name,
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
            step=step.name,
            target=target,
            status=Status.OK,
            started_at=started,
            detail=f"closed at {when}{waited}",
            evidence=evidence,
        )
    ]


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)
