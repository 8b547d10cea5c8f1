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

from prefect import flow

from flows.common import RunParams, finish_run, open_run, run_namer, run_steps
from openbell.run import RunRecord
from tasks.archive import check_disk_after_archive, ensure_day_archived
from tasks.close import check_market_closed
from tasks.oms import (
    check_fills_booked,
    check_positions_rolled,
    ensure_day_orders_terminal,
    reconcile_fills,
)
from tasks.sessions import ensure_fix_end_of_day


@flow(name="end-of-day", flow_run_name=run_namer("eod"), log_prints=False)
async def end_of_day(params: RunParams) -> RunRecord:
    """Close a region's trading day: orders, fills, positions, FIX, archive."""
    ctx, record = await open_run("eod", params)
    if record.skipped_reason or params.dry_run:
        return await finish_run(ctx, record, [])

    steps = await run_steps(ctx, [("close", check_market_closed(ctx))])
    if not steps[0].passed:  # not closed: touch nothing
        return await finish_run(ctx, record, steps)
    steps += await run_steps(ctx, [("day_orders", ensure_day_orders_terminal(ctx))])
    steps += await run_steps(
        ctx,
        [
            ("fills_booked", check_fills_booked(ctx)),
            ("recon", reconcile_fills(ctx)),
            ("positions_rolled", check_positions_rolled(ctx)),
        ],
    )
    steps += await run_steps(ctx, [("fix_eod", ensure_fix_end_of_day(ctx))])
    steps += await run_steps(ctx, [("archive", ensure_day_archived(ctx))])
    steps += await run_steps(ctx, [("disk_after_archive", check_disk_after_archive(ctx))])
    return await finish_run(ctx, record, steps)
