"""End of day: the after-close checklist of a region, as one Prefect flow.

Steps (DOMAIN.md, end of day), each a Prefect task that fans out over its targets:

1. calendar_gate               is the trade date a session? (else skipped, not failed)
2. check_market_closed         every venue of the region closed (half days: the early
                               close); before it, wait or refuse as the estate says
3. ensure_day_orders_terminal  no day order left open (cancel sweep where configured,
                               then verified); GTC/GTD orders kept
4. check_fills_booked          } every fill booked, cum qty = sum of fills
   reconcile_fills             } OMS vs drop copy vs venue trade file, breaks listed
   check_positions_rolled      } start + fills = end, per account and symbol
5. ensure_fix_end_of_day       sessions logged out; numbers reset or store kept per
                               each session's reset policy
6. ensure_day_archived         logs, order records, FIX stores archived with sha256,
                               originals removed once the archive is verified
7. check_disk_after_archive    disk use under threshold
8. signoff                     report (HTML, Markdown, JSON) and Slack summary

The ensure_* steps change things. Each reads state first and acts on the difference,
and each target it completes gets an idempotency key in the ledger (runbook, region,
trade date, step, target): a re-run for the same region and trade date does nothing
to a target already done and says which run did it. ``--from-step STEP`` re-does STEP
and the steps after it. Only one run per region and trade date acts at a time (a lock
in the ledger); a run that died is recorded as interrupted by the next one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from openbell.flows.common import (
    RunParams,
    exclusive,
    finish_run,
    open_run,
    openbell_flow,
    run_namer,
    run_steps,
    skipped_step,
)
from openbell.outcome import Status
from openbell.run import RunRecord, StepResult
from openbell.tasks.archive import check_disk_after_archive, ensure_day_archived
from openbell.tasks.close import check_market_closed
from openbell.tasks.context import RunContext, in_thread
from openbell.tasks.ledger import RunLockedError
from openbell.tasks.oms import (
    check_fills_booked,
    check_positions_rolled,
    ensure_day_orders_terminal,
    reconcile_fills,
)
from openbell.tasks.sessions import ensure_fix_end_of_day

Step = Callable[[RunContext], Awaitable[StepResult]]

#: After the close gate, in order; the steps of one group run at once.
STAGES: list[list[tuple[str, Step]]] = [
    [("day_orders", ensure_day_orders_terminal)],
    [
        ("fills_booked", check_fills_booked),
        ("recon", reconcile_fills),
        ("positions_rolled", check_positions_rolled),
    ],
    [("fix_eod", ensure_fix_end_of_day)],
    [("archive", ensure_day_archived)],
    [("disk_after_archive", check_disk_after_archive)],
]


async def _stages(ctx: RunContext, from_step: str | None) -> list[StepResult]:
    """Every stage in order; before ``from_step``, steps are skipped and say why."""
    steps: list[StepResult] = []
    for stage in STAGES:
        todo = [(n, fn) for n, fn in stage if not from_step or n in ctx.redo]
        for name in [n for n, _ in stage if from_step and n not in ctx.redo]:
            skipped = skipped_step(name, name, f"not run: restarting from {from_step}")
            await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, skipped)
            steps.append(skipped)
        steps += await run_steps(ctx, [(n, fn(ctx)) for n, fn in todo])
    return steps


@openbell_flow("end-of-day", run_namer("eod"))
async def end_of_day(params: RunParams) -> RunRecord:
    """Close a region's trading day: orders, fills, positions, FIX, archive."""
    ctx, record = await open_run("eod", params)
    if record.skipped_reason or params.dry_run:
        return await finish_run(ctx, record, [])
    try:
        async with exclusive(ctx):
            steps = await run_steps(ctx, [("close", check_market_closed(ctx))])
            if steps[0].passed:  # closed: go on; else touch nothing
                steps += await _stages(ctx, params.from_step)
            return await finish_run(ctx, record, steps)
    except RunLockedError as exc:
        refused = skipped_step("lock", "One run at a time", str(exc), Status.FAILED)
        await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, refused)
        return await finish_run(ctx, record, [refused])
