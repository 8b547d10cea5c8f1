"""No host quarantined: start of day's "do not open with this host" items.

A release whose rollback could not finish on a host (it did not answer, or its way back
failed its checksums) quarantines that host in the ledger (``tasks/release/records.py``).
Start of day fails on each such host of the region until a later run of that release
rolls it back, or a proven person clears it (``openbell quarantine clear``) after fixing
it by hand. Read from the ledger, so every process reports the same items.
"""

from __future__ import annotations

from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.tasks.context import PlanContext, RunContext, StepRun, in_thread
from openbell.tasks.release import records


def plan_quarantine(p: PlanContext) -> list[PlannedAction]:
    return [
        PlannedAction(
            target=f"{p.region} quarantine",
            action="read the ledger: each host a release quarantined and nobody cleared is a "
            "DO NOT OPEN item",
        )
    ]


async def check_quarantine(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """One failed outcome per quarantined host of the region; one ok when there is none."""
    started = utcnow()
    held = await in_thread(ctx, records.quarantined, ctx.ledger, ctx.region)
    if not held:
        return [
            Outcome(
                step=step.name,
                target=f"{ctx.region} quarantine",
                status=Status.OK,
                started_at=started,
                detail="no host is quarantined by a release",
            )
        ]
    return [
        Outcome(
            step=step.name,
            target=host,
            status=Status.FAILED,
            started_at=started,
            detail=(
                f"DO NOT OPEN with {host}: {e.payload['app']} quarantined by release "
                f"{e.payload['key']} (run {str(e.run_id)[:8]}, {e.ts:%Y-%m-%d %H:%M}Z): "
                f"{e.payload['reason']}; a re-run of that release finishes its rollback, or "
                f"`openbell quarantine clear {host} --region {ctx.region} --reason ...` "
                "once it is fixed by hand"
            ),
            evidence={"quarantined_seq": e.seq, "app": e.payload["app"]},
        )
        for host, e in sorted(held.items())
    ]
