"""Market-data feeds fresh: last update younger than the limit, no unrecovered gaps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.runbooks.schema import Feed
from openbell.tasks.context import PlanContext, RunContext, StepRun


def judge_feed(
    name: str, body: dict[str, object], max_age_s: float, now: datetime
) -> tuple[Status, str]:
    """(status, detail) for a feed's status document.

    Example:
        >>> from datetime import UTC
        >>> now = datetime(2026, 11, 26, 8, 0, 10, tzinfo=UTC)
        >>> judge_feed("f", {"last_update": "2026-11-26T08:00:00Z", "gaps": []}, 5, now)
        (<Status.FAILED: 'failed'>, 'stale: last update 10.0 s ago (limit 5 s)')
    """
    raw = body.get("last_update")
    if not isinstance(raw, str):
        return Status.FAILED, "status document has no last_update"
    age = (now - datetime.fromisoformat(raw.replace("Z", "+00:00"))).total_seconds()
    gaps = body.get("gaps") or []
    problems = []
    if age > max_age_s:
        problems.append(f"stale: last update {age:.1f} s ago (limit {max_age_s:g} s)")
    if gaps:
        problems.append(f"{len(gaps)} unrecovered gap(s): {gaps[:3]}")  # type: ignore[index,arg-type]
    if problems:
        return Status.FAILED, "; ".join(problems)
    return (
        Status.OK,
        f"last update {max(age, 0):.1f} s ago, sequence {body.get('sequence')}, no gaps",
    )


async def _probe_feed(http: Any, step: str, name: str, feed: Feed, default_max: float) -> Outcome:
    started = utcnow()
    answer = await http.get(feed.status_url, target=name, timeout=feed.timeout_s, retries=2)
    if not isinstance(answer.json, dict):
        return Outcome(
            step=step,
            target=name,
            status=Status.FAILED,
            started_at=started,
            detail=f"{feed.status_url} answered {answer.status} without a JSON status",
        )
    status, detail = judge_feed(name, answer.json, feed.max_staleness_s or default_max, utcnow())
    evidence = {k: answer.json.get(k) for k in ("last_update", "sequence", "gaps")}
    return Outcome(
        step=step,
        target=name,
        status=status,
        detail=detail,
        started_at=started,
        evidence=evidence,
    )


def plan_feeds(p: PlanContext) -> list[PlannedAction]:
    default_max = p.estate.thresholds(p.region).feed_max_staleness_s
    return [
        PlannedAction(
            target=n,
            action=f"GET {f.status_url} -> last_update younger than "
            f"{f.max_staleness_s or default_max:g} s, no gaps",
        )
        for n, f in sorted(p.estate.feeds_in(p.region).items())
    ]


async def check_feeds(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every market-data feed of the region is fresh and gap-free."""
    default_max = ctx.estate.thresholds(ctx.region).feed_max_staleness_s
    async with ctx.http() as http:

        async def probe(name: str, feed: Feed) -> Outcome:
            return await _probe_feed(http, step.name, name, feed, default_max)

        return await step.fan_out(ctx, sorted(ctx.estate.feeds_in(ctx.region).items()), probe)
