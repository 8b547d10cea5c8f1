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

The ensure_* steps change things; each reads state first, so a re-run for the same
region and trade date finds them done and reports ``ok``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from prefect import flow

from flows.common import RunParams, finish_run, open_run, run_namer
from flows.plan import build_eod_plan
from flows.start_of_day import _crashed
from openbell.run import RunRecord, StepResult
from tasks.archive import check_disk_after_archive, ensure_day_archived
from tasks.close import check_market_closed
from tasks.oms import (
    check_fills_booked,
    check_positions_rolled,
    ensure_day_orders_terminal,
    reconcile_fills,
)
from tasks.sessions import ensure_fix_end_of_day


async def _step(name: str, work: Awaitable[StepResult]) -> StepResult:
    """A step whose task raised is recorded as failed, never lost."""
    try:
        return await work
    except Exception as exc:
        return _crashed(name, exc)


@flow(name="end-of-day", flow_run_name=run_namer("eod"), log_prints=False)
async def end_of_day(params: RunParams) -> RunRecord:
    """Close a region's trading day: orders, fills, positions, FIX, archive."""
    ctx, record = await open_run("eod", params)
    if record.skipped_reason or params.dry_run:
        plan = build_eod_plan(ctx.estate, ctx.region, ctx.trade_date)
        record = record.model_copy(update={"plan": plan.model_dump(mode="json")})
        return await finish_run(ctx, record, [])

    steps = [await _step("close", check_market_closed(ctx))]
    if not steps[0].passed:  # not closed: touch nothing
        return await finish_run(ctx, record, steps)
    steps.append(await _step("day_orders", ensure_day_orders_terminal(ctx)))
    names = ["fills_booked", "recon", "positions_rolled"]
    checks = await asyncio.gather(
        check_fills_booked(ctx),
        reconcile_fills(ctx),
        check_positions_rolled(ctx),
        return_exceptions=True,
    )
    for name, result in zip(names, checks, strict=True):
        steps.append(_crashed(name, result) if isinstance(result, BaseException) else result)
    steps.append(await _step("fix_eod", ensure_fix_end_of_day(ctx)))
    steps.append(await _step("archive", ensure_day_archived(ctx)))
    steps.append(await _step("disk_after_archive", check_disk_after_archive(ctx)))
    return await finish_run(ctx, record, steps)
