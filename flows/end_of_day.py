"""End of day: the after-close checklist of a region (DOMAIN.md, end of day).

Runs only on a session of the region's primary calendar, after every venue of the region
has closed (half days included; before the close it waits or refuses, as
``runbooks.eod.before_close`` says). Then: day orders terminal; fills booked, the
three-way reconciliation and positions rolled, at once; the FIX sessions logged out and
reset or their store kept; the day archived; disk checked again.

The steps that change things (``day_orders``, ``fix_eod``, ``archive``) read state first
and act on the difference, and each target they complete gets an idempotency key in the
ledger: a re-run for the same region and trade date does nothing to it again and says
which run did. ``--from-step STEP`` re-does STEP and the steps after it. One run per
region and trade date acts at a time (a lock in the ledger). Any of the three may wait
for a second person first (``runbooks.eod.approvals``).
"""

from __future__ import annotations

from openbell.flows.runbook import Runbook, Step
from openbell.runbooks.schema import EodPolicy
from openbell.tasks.archive import ensure_day_archived, hosts_to_archive, plan_archive
from openbell.tasks.close import check_market_closed, plan_close
from openbell.tasks.hosts import check_disk, plan_disk
from openbell.tasks.oms import (
    check_fills_booked,
    check_positions_rolled,
    day_orders_to_cancel,
    ensure_day_orders_terminal,
    plan_day_orders,
    plan_fills_booked,
    plan_positions,
    plan_recon,
    reconcile_fills,
)
from openbell.tasks.sessions import ensure_fix_end_of_day, plan_fix_eod, sessions_to_end

END_OF_DAY = Runbook(
    key="eod",
    title="end of day",
    flow_name="end-of-day",
    policy=EodPolicy,
    lock=True,
    signoff="breaks and problems in the report (HTML, Markdown, JSON), summary to Slack",
    steps=(
        Step("close", "Market closed", check_market_closed, plan=plan_close, gate=True),
        Step(
            "day_orders",
            "Day orders terminal",
            ensure_day_orders_terminal,
            plan=plan_day_orders,
            after=("close",),
            side_effects=True,
            changes=day_orders_to_cancel,
        ),
        Step(
            "fills_booked",
            "Every fill booked",
            check_fills_booked,
            plan=plan_fills_booked,
            after=("day_orders",),
        ),
        Step(
            "recon",
            "Three-way reconciliation",
            reconcile_fills,
            plan=plan_recon,
            after=("day_orders",),
        ),
        Step(
            "positions_rolled",
            "Positions rolled",
            check_positions_rolled,
            plan=plan_positions,
            after=("day_orders",),
        ),
        Step(
            "fix_eod",
            "FIX sessions logged out, reset or archived",
            ensure_fix_end_of_day,
            plan=plan_fix_eod,
            after=("recon", "positions_rolled", "fills_booked"),
            side_effects=True,
            changes=sessions_to_end,
        ),
        Step(
            "archive",
            "Logs, order records and FIX stores archived",
            ensure_day_archived,
            plan=plan_archive,
            after=("fix_eod",),
            side_effects=True,
            changes=hosts_to_archive,
        ),
        Step(
            "disk_after_archive",
            "Disk use after archive",
            check_disk,
            plan=plan_disk,
            after=("archive",),
        ),
    ),
)
