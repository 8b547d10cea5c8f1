"""Start of day: the pre-open checklist of a region (DOMAIN.md, start of day).

Runs only on a session of the region's primary calendar (another day is skipped with the
calendar's reason). The host checks, the apps, the FIX sessions, the feeds, the database
checks and the alert path are independent of each other and run at once; the apps go
tier by tier in dependency order. Starting an app that is down is the one change this
runbook makes; a host a release left quarantined fails it ("do not open with this host").
Where the estate says so (``runbooks.sod.approvals: {steps: [apps]}``),
a second person approves the apps to start before any is started.
"""

from __future__ import annotations

from openbell.flows.runbook import Runbook, Step
from openbell.tasks.alerts import check_alert_path, plan_alert_path
from openbell.tasks.apps import apps_to_start, ensure_apps_running, plan_apps
from openbell.tasks.database import check_database, plan_database
from openbell.tasks.feeds import check_feeds, plan_feeds
from openbell.tasks.hosts import (
    check_clock,
    check_disk,
    check_fix_store,
    check_logs_rotated,
    plan_clock,
    plan_disk,
    plan_fix_store,
    plan_logs,
)
from openbell.tasks.quarantine import check_quarantine, plan_quarantine
from openbell.tasks.sessions import check_fix_sessions, plan_fix_sessions

START_OF_DAY = Runbook(
    key="sod",
    title="start of day",
    flow_name="start-of-day",
    lock=True,
    steps=(
        Step("disk", "Disk use under threshold", check_disk, plan=plan_disk),
        Step("clock", "Clock sync (RTS 25)", check_clock, plan=plan_clock),
        Step("fix_store", "FIX store writable", check_fix_store, plan=plan_fix_store),
        Step("logs", "Yesterday's logs rotated", check_logs_rotated, plan=plan_logs),
        Step(
            "apps",
            "Apps running",
            ensure_apps_running,
            plan=plan_apps,
            changes=apps_to_start,
        ),
        Step("fix", "FIX sessions logged on", check_fix_sessions, plan=plan_fix_sessions),
        Step("feeds", "Market-data feeds fresh", check_feeds, plan=plan_feeds),
        Step("refdata", "Reference data loaded", check_database, plan=plan_database),
        Step("positions", "Positions loaded", check_database, plan=plan_database),
        Step("limits", "Limits loaded", check_database, plan=plan_database),
        Step("controls", "Pre-trade controls armed", check_database, plan=plan_database),
        Step("batch", "Overnight batch finished", check_database, plan=plan_database),
        Step("alert_path", "Alert path alive", check_alert_path, plan=plan_alert_path),
        Step(  # "do not open with this host": a release's rollback did not finish there
            "quarantine",
            "No host quarantined by a release",
            check_quarantine,
            plan=plan_quarantine,
        ),
    ),
)
