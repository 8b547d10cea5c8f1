"""The plan of a run, computed without touching anything.

``build_plan`` resolves a runbook for a region and trade date into ordered steps, each
with its targets and the exact remote command, URL, FIX exchange or SQL it will use,
plus the calendar's decision. ``openbell plan`` prints it; a dry run records it.
"""

from __future__ import annotations

import shlex
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from openbell.runbooks.schema import Database, Estate, Host
from openbell.tasks.apps import health_url
from openbell.tasks.archive import archive_plan, find_argv
from openbell.tasks.close import region_close
from openbell.tasks.connectors import calendar
from openbell.tasks.database import STEP_TITLES
from openbell.tasks.hosts import disk_argv, fix_store_argv, logs_argv, rotation_cutoff
from openbell.tasks.oms import orders_url, sweep_url
from openbell.tasks.sessions import (
    probe_description,
    reset_due,
    store_archive_argv,
    store_path,
    store_read_argv,
)

SQL_STEPS = ["refdata", "positions", "limits", "controls", "batch"]


class PlannedAction(BaseModel):
    target: str
    action: str


class PlannedStep(BaseModel):
    name: str
    title: str
    after: list[str] = Field(default_factory=list, description="steps that must finish first")
    actions: list[PlannedAction] = Field(default_factory=list)
    note: str = ""
    rerun: str = Field(default="", description="what a run now would skip or redo, and why")


class Plan(BaseModel):
    """What a run will do, step by step."""

    runbook: str
    region: str
    trade_date: date
    runs: bool
    skip_reason: str | None = None
    calendar: dict[str, Any] = Field(default_factory=dict)
    steps: list[PlannedStep] = Field(default_factory=list)

    def command_count(self) -> int:
        return sum(len(s.actions) for s in self.steps)


def ssh_action(estate: Estate, host: str, argv: list[str]) -> str:
    h = estate.host(host)
    return f"ssh {h.user}@{host} ({h.address}:{h.port}) $ {shlex.join(argv)}"


def disk_actions(estate: Estate, hosts: list[tuple[str, Host]]) -> list[PlannedAction]:
    """``df`` on every disk path of every host (start of day, and after the archive)."""
    return [
        PlannedAction(target=f"{n}:{p}", action=ssh_action(estate, n, disk_argv(p)))
        for n, h in hosts
        for p in h.disk_paths
    ]


def calendar_facts(
    estate: Estate, region: str, day: date
) -> tuple[bool, str | None, dict[str, Any]]:
    """(is a session, skip reason, facts) for the region's primary calendar and venues."""
    reg = estate.region(region)
    rd = calendar.region_day(reg, day)
    info = rd.primary
    facts: dict[str, Any] = {
        "calendar": info.calendar,
        "is_session": info.is_session,
        "half_day": info.half_day,
        "open_local": info.open_local.isoformat() if info.open_local else None,
        "close_local": info.close_local.isoformat() if info.close_local else None,
        "open_utc": info.open_utc.isoformat() if info.open_utc else None,
        "close_utc": info.close_utc.isoformat() if info.close_utc else None,
        "previous_session": info.previous_session.isoformat() if info.previous_session else None,
        "venues": {v.calendar: (v.is_session, v.reason) for v in rd.venues},
    }
    if info.is_session:
        return True, None, facts
    reason = f"{day} is not an {info.calendar} session ({info.reason})"
    return False, reason, facts


def build_sod_plan(estate: Estate, region: str, day: date) -> Plan:
    """The start-of-day plan for one region and trade date.

    Example:
        >>> from openbell.runbooks.loader import load_estate
        >>> plan = build_sod_plan(load_estate("runbooks/lab.yaml"), "amer", date(2026, 11, 26))
        >>> plan.runs, plan.skip_reason
        (False, '2026-11-26 is not an XNYS session (holiday: Thanksgiving)')
    """
    estate.region(region)  # unknown region: the error lists the valid ones
    runs, reason, facts = calendar_facts(estate, region, day)
    plan = Plan(
        runbook="sod", region=region, trade_date=day, runs=runs, skip_reason=reason, calendar=facts
    )
    gate = PlannedStep(name="calendar", title="Calendar gate", note=reason or _session_note(facts))
    plan.steps.append(gate)
    if not runs:
        return plan
    hosts = sorted(estate.hosts_in(region).items())
    cutoff = rotation_cutoff(estate.region(region).timezone, day)
    plan.steps += [
        PlannedStep(
            name="disk",
            title="Disk use under threshold",
            after=["calendar"],
            actions=disk_actions(estate, hosts),
        ),
        PlannedStep(
            name="clock",
            title="Clock sync (RTS 25)",
            after=["calendar"],
            actions=[
                PlannedAction(target=n, action=ssh_action(estate, n, h.clock_command))
                for n, h in hosts
            ],
        ),
        PlannedStep(
            name="fix_store",
            title="FIX store writable",
            after=["calendar"],
            actions=[
                PlannedAction(
                    target=n, action=ssh_action(estate, n, fix_store_argv(h.fix_store_dir or ""))
                )
                for n, h in hosts
                if h.fix_store_dir
            ],
        ),
        PlannedStep(
            name="logs",
            title="Yesterday's logs rotated",
            after=["calendar"],
            actions=[
                PlannedAction(
                    target=n, action=ssh_action(estate, n, logs_argv(h.log_dir or "", cutoff))
                )
                for n, h in hosts
                if h.log_dir
            ],
        ),
    ]
    previous = "calendar"
    for i, tier in enumerate(estate.app_tiers(region)):
        actions = []
        for name in tier:
            app = estate.app(name)
            for host in app.hosts:
                url = health_url(app, estate.host(host).address)
                actions += [
                    PlannedAction(
                        target=f"{name}@{host}", action=ssh_action(estate, host, app.status)
                    ),
                    PlannedAction(
                        target=f"{name}@{host}",
                        action="if down: " + ssh_action(estate, host, app.start),
                    ),
                ]
                if url:
                    want = (
                        f", expect version {app.expected_version}" if app.expected_version else ""
                    )
                    actions.append(
                        PlannedAction(target=f"{name}@{host}", action=f"GET {url} -> 200{want}")
                    )
        plan.steps.append(
            PlannedStep(
                name=f"apps_tier{i}",
                title=f"Apps running, tier {i}",
                after=[previous],
                actions=actions,
            )
        )
        previous = f"apps_tier{i}"
    plan.steps.append(
        PlannedStep(
            name="fix",
            title="FIX sessions logged on",
            after=["calendar"],
            actions=[
                PlannedAction(target=n, action=probe_description(s))
                for n, s in sorted(estate.fix_sessions_in(region).items())
            ],
        )
    )
    plan.steps.append(
        PlannedStep(
            name="feeds",
            title="Market-data feeds fresh",
            after=["calendar"],
            actions=[
                PlannedAction(
                    target=n,
                    action=f"GET {f.status_url} -> last_update younger than "
                    f"{_max_age(estate, region, f.max_staleness_s):g} s, no gaps",
                )
                for n, f in sorted(estate.feeds_in(region).items())
            ],
        )
    )
    dbs = sorted(estate.databases_in(region).items())
    for step in SQL_STEPS:
        plan.steps.append(
            PlannedStep(
                name=step,
                title=STEP_TITLES[step],
                after=["calendar"],
                actions=[
                    PlannedAction(
                        target=f"{n}:{c.name}",
                        action=f"SQL (read-only, {db.timeout_s:g} s): "
                        f"{' '.join(c.sql.split())} -> {c.expect.describe()}",
                    )
                    for n, db in dbs
                    for c in db.checks
                    if c.step == step
                ],
            )
        )
    channel = estate.region(region).slack_channel
    plan.steps.append(
        PlannedStep(
            name="alert_path",
            title="Alert path alive",
            after=["calendar"],
            actions=[
                PlannedAction(target=channel, action=f"post a test notification to {channel}")
            ],
        )
    )
    plan.steps.append(
        PlannedStep(
            name="signoff",
            title="Sign-off",
            after=[s.name for s in plan.steps[1:]],
            note="summary to Slack, report (HTML, Markdown, JSON)",
        )
    )
    return plan


def build_eod_plan(estate: Estate, region: str, day: date) -> Plan:
    """The end-of-day plan for one region and trade date.

    Example:
        >>> from openbell.runbooks.loader import load_estate
        >>> plan = build_eod_plan(load_estate("runbooks/lab.yaml"), "amer", date(2026, 11, 27))
        >>> plan.steps[1].note
        'closes 13:00 EST (XNYS half day: Black Friday); before the close: refuse'
    """
    estate.region(region)
    runs, reason, facts = calendar_facts(estate, region, day)
    plan = Plan(
        runbook="eod", region=region, trade_date=day, runs=runs, skip_reason=reason, calendar=facts
    )
    plan.steps.append(
        PlannedStep(name="calendar", title="Calendar gate", note=reason or _session_note(facts))
    )
    if not runs:
        return plan
    reg = estate.region(region)
    policy = estate.policy("eod")
    close, venues = region_close(reg, day)
    half = [f"{c} half day: {v['half_day_reason']}" for c, v in venues.items() if v["half_day"]]
    when = close.astimezone(ZoneInfo(reg.timezone)).strftime("%H:%M %Z") if close else "?"
    wait = f" (at most {policy.max_wait_minutes:g} min)" if policy.before_close == "wait" else ""
    plan.steps.append(
        PlannedStep(
            name="close",
            title="Market closed",
            after=["calendar"],
            note=f"closes {when}"
            + (f" ({'; '.join(half)})" if half else "")
            + f"; before the close: {policy.before_close}{wait}",
        )
    )
    iso = day.isoformat()
    oms = sorted(estate.oms_in(region).items())
    day_orders = []
    for name, db in oms:
        cfg = db.oms
        if cfg is None or not cfg.admin_url:
            continue
        day_orders.append(PlannedAction(target=name, action=f"GET {orders_url(cfg, iso)}"))
        if cfg.cancel_sweep:
            body = f'{{"trade_date": "{iso}", "tif": ["DAY"]}}'
            day_orders.append(
                PlannedAction(
                    target=name,
                    action=f"if a day order is open: POST {sweep_url(cfg)} {body}, then GET again",
                )
            )
        else:
            day_orders.append(PlannedAction(target=name, action="fail if a day order is open"))
    plan.steps.append(
        PlannedStep(
            name="day_orders", title="Day orders terminal", after=["close"], actions=day_orders
        )
    )
    recon_actions, booked, positions = [], [], []
    for name, db in oms:
        cfg = db.oms
        assert cfg is not None
        q = cfg.queries
        booked += [
            _sql(name, db, q.unbooked_fills),
            _sql(name, db, q.fill_totals),
        ]
        recon_actions += [_sql(name, db, q.fills), _sql(name, db, q.drop_copy)]
        if cfg.trade_file:
            tf = cfg.trade_file
            recon_actions.append(
                PlannedAction(
                    target=name,
                    action=f"sftp get {tf.host}:{tf.path_for(day)} (sha256 verified), then "
                    "match on ExecID, OrderID, symbol, side, quantity, price",
                )
            )
        positions += [
            _sql(name, db, q.start_positions),
            _sql(name, db, q.end_positions),
        ]
    plan.steps += [
        PlannedStep(
            name="fills_booked", title="Every fill booked", after=["day_orders"], actions=booked
        ),
        PlannedStep(
            name="recon",
            title="Three-way reconciliation",
            after=["day_orders"],
            actions=recon_actions,
        ),
        PlannedStep(
            name="positions_rolled",
            title="Positions rolled",
            after=["day_orders"],
            actions=positions,
            note="start + fills = end per account and symbol",
        ),
    ]
    following = calendar.session_info(reg.primary_calendar, day).next_session or day
    fix_actions = []
    for name, session in sorted(estate.fix_sessions_in(region).items()):
        where = store_path(estate, name)
        if where is None:
            fix_actions.append(PlannedAction(target=name, action="fail: no host keeps its store"))
            continue
        gw, store = where
        fix_actions += [
            PlannedAction(target=name, action=ssh_action(estate, gw, argv))
            for argv in store_read_argv(store, day)
        ]
        fix_actions.append(
            PlannedAction(
                target=name,
                action=f"if not ended for {iso}: {session.begin_string} Logon "
                f"{session.sender_comp_id}->{session.target_comp_id} @ {session.address}:"
                f"{session.port} with the store's next 34 (no 141), Logout 58='End of day {iso}'",
            )
        )
        if reset_due(session, day, following):
            fix_actions.append(
                PlannedAction(
                    target=name,
                    action=f"{session.reset_policy} reset due: expect seqnums 1 : 1 after Logout",
                )
            )
        else:
            fix_actions += [
                PlannedAction(target=name, action="no reset tonight: " + ssh_action(estate, gw, a))
                for a in store_archive_argv(store, day)
            ]
    plan.steps.append(
        PlannedStep(
            name="fix_eod",
            title="FIX sessions logged out, reset or archived",
            after=["recon", "positions_rolled", "fills_booked"],
            actions=fix_actions,
        )
    )
    archive_actions = []
    hosts = sorted(estate.hosts_in(region).items())
    for name, host in hosts:
        ap = archive_plan(name, host, day)
        if ap is None:
            continue
        archive_actions += [
            PlannedAction(target=name, action=ssh_action(estate, name, find_argv(ap))),
            PlannedAction(
                target=name,
                action=f"if not archived: tar -czf {ap.partial} <files>, check tar -tzf and "
                f"sha256sum, write {ap.manifest_file}, mv to {ap.archive}, "
                f"write {ap.checksum_file}",
            ),
            PlannedAction(
                target=name, action="after the archive's sha256 is verified: rm -f <archived files>"
            ),
        ]
    plan.steps += [
        PlannedStep(
            name="archive",
            title="Logs, order records and FIX stores archived",
            after=["fix_eod"],
            actions=archive_actions,
        ),
        PlannedStep(
            name="disk_after_archive",
            title="Disk use after archive",
            after=["archive"],
            actions=disk_actions(estate, hosts),
        ),
        PlannedStep(
            name="signoff",
            title="Sign-off",
            after=["disk_after_archive"],
            note="breaks and problems in the report (HTML, Markdown, JSON), summary to Slack",
        ),
    ]
    return plan


def _sql(target: str, db: Database, sql: str) -> PlannedAction:
    return PlannedAction(
        target=target, action=f"SQL (read-only, {db.timeout_s:g} s): {' '.join(sql.split())}"
    )


def _max_age(estate: Estate, region: str, feed_limit: float | None) -> float:
    return feed_limit or estate.thresholds(region).feed_max_staleness_s


def _session_note(facts: dict[str, Any]) -> str:
    half = " (half day)" if facts.get("half_day") else ""
    hours = f"open {facts['open_local']}, close {facts['close_local']}"
    return f"{facts['calendar']} session: {hours}{half}"


#: The steps whose targets get idempotency keys (``tasks.idempotency``).
SIDE_EFFECT_STEPS = ("day_orders", "fix_eod", "archive")


def redo_steps(plan: Plan, from_step: str | None) -> frozenset[str]:
    """The steps a ``--from-step`` restart re-does: that step and the ones after it.

    Raises:
        UnknownNameError: ``from_step`` is not a step of the plan; lists the valid ones.

    Example:
        >>> from openbell.runbooks.loader import load_estate
        >>> plan = build_eod_plan(load_estate("runbooks/lab.yaml"), "amer", date(2026, 11, 27))
        >>> sorted(redo_steps(plan, "archive"))
        ['archive', 'disk_after_archive']
    """
    from openbell.errors import UnknownNameError

    if from_step is None:
        return frozenset()
    names = [s.name for s in plan.steps if s.name not in ("calendar", "signoff")]
    if from_step not in names:
        raise UnknownNameError(f"{plan.runbook} step", from_step, names)
    return frozenset(names[names.index(from_step) :])


def annotate_rerun(plan: Plan, ledger: Any, from_step: str | None = None) -> Plan:
    """Say, per step, what a run started now would skip and why, from the ledger's keys.

    Args:
        plan: the plan of one runbook, region and trade date.
        ledger: where the idempotency keys of earlier runs are.
        from_step: the step a restart would begin with (``--from-step``).

    Raises:
        UnknownNameError: ``from_step`` is not a step of the plan; lists the valid ones.
    """
    from openbell.tasks.ledger import CompletionKey

    redo = redo_steps(plan, from_step)
    out = plan.model_copy(deep=True)
    for step in out.steps:
        before = step.name not in (*redo, "calendar", "signoff", "close")
        if from_step and before:
            step.rerun = f"skipped: before --from-step {from_step}"
            continue
        if step.name not in SIDE_EFFECT_STEPS:
            continue
        if step.name in redo:
            step.rerun = "re-done whatever was recorded (--from-step); reads state first"
            continue
        targets = sorted({a.target for a in step.actions})
        done = {}
        for t in targets:
            key = CompletionKey(plan.runbook, plan.region, plan.trade_date, step.name, t)
            entry = ledger.completion(key)
            if entry is not None:
                done[t] = entry
        if not done:
            continue
        runs = sorted({str(e.run_id)[:8] for e in done.values()})
        when = max(e.ts for e in done.values()).strftime("%Y-%m-%d %H:%M:%SZ")
        left = [t for t in targets if t not in done]
        step.rerun = (
            f"a re-run skips {len(done)} of {len(targets)} target(s), done by run "
            f"{', '.join(runs)} (last at {when})"
            + (f"; still to do: {', '.join(left)}" if left else "")
        )
    return out


#: The plan builder of each runbook: (estate, region, trade date) -> Plan.
PLANNERS = {"sod": build_sod_plan, "eod": build_eod_plan}
