"""The plan of a run, computed from the runbook's declaration without touching anything.

``build_plan`` resolves a runbook for a region and trade date into its declared steps in
order, each with its targets and the exact remote command, URL, FIX exchange or SQL it
will use (from the plan function declared beside the step's task), plus the calendar's
decision and the sign-off. ``openbell plan`` prints it; every run records it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from openbell.errors import UnknownNameError
from openbell.plan import Plan, PlannedAction, PlannedStep, StepPlan
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors import calendar
from openbell.tasks.context import PlanContext

if TYPE_CHECKING:
    from openbell.flows.runbook import Runbook

__all__ = ["Plan", "PlannedAction", "PlannedStep", "annotate_rerun", "build_plan", "redo_steps"]


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


def build_plan(
    runbook: Runbook,
    estate: Estate,
    region: str,
    day: date,
    *,
    params: Any = None,
    at: datetime | None = None,
) -> Plan:
    """The plan of ``runbook`` for one region and trade date.

    Raises:
        UnknownNameError: an unknown region (the error lists the valid ones).

    Example:
        >>> from openbell import catalog
        >>> from openbell.runbooks.loader import load_estate
        >>> plan = build_plan(catalog.get("sod"), load_estate("runbooks/lab.yaml"), "amer",
        ...                   date(2026, 11, 26))
        >>> plan.runs, plan.skip_reason
        (False, '2026-11-26 is not an XNYS session (holiday: Thanksgiving)')
    """
    estate.region(region)
    runs, reason, facts = calendar_facts(estate, region, day)
    if not runbook.session_gate:
        runs, reason = True, None
    plan = Plan(
        runbook=runbook.key,
        region=region,
        trade_date=day,
        runs=runs,
        skip_reason=reason,
        calendar=facts,
    )
    first: list[str] = []
    if runbook.session_gate:
        note = reason or _session_note(facts)
        plan.steps.append(PlannedStep(name="calendar", title="Calendar gate", note=note))
        first = ["calendar"]
    if not runs:
        return plan
    policy = estate.policy(runbook.key)
    for step in runbook.steps:
        part = step.plan(PlanContext(estate, region, day, facts, policy, step.name, params, at))
        planned = part if isinstance(part, StepPlan) else StepPlan(actions=part)
        plan.steps.append(
            PlannedStep(
                name=step.name,
                title=step.title,
                after=list(step.after) or first,
                actions=planned.actions,
                note=planned.note,
            )
        )
    if runbook.recovery is not None:
        rec = runbook.recovery
        part = rec.plan(PlanContext(estate, region, day, facts, policy, rec.name, params, at))
        planned = part if isinstance(part, StepPlan) else StepPlan(actions=part)
        recoverable = [s.name for s in runbook.steps if s.recover]
        plan.steps.append(
            PlannedStep(
                name=rec.name,
                title=rec.title,
                after=recoverable,
                actions=planned.actions,
                note=f"only if {', '.join(recoverable)} fails: " + planned.note,
            )
        )
    plan.steps.append(
        PlannedStep(name="signoff", title="Sign-off", after=runbook.leaves(), note=runbook.signoff)
    )
    return plan


def _session_note(facts: dict[str, Any]) -> str:
    half = " (half day)" if facts.get("half_day") else ""
    hours = f"open {facts['open_local']}, close {facts['close_local']}"
    return f"{facts['calendar']} session: {hours}{half}"


def redo_steps(runbook: Runbook, from_step: str | None) -> frozenset[str]:
    """The steps a ``--from-step`` restart re-does: that step and the ones after it.

    Raises:
        UnknownNameError: ``from_step`` is not a step of the runbook; lists the valid ones.

    Example:
        >>> from openbell import catalog
        >>> sorted(redo_steps(catalog.get("eod"), "archive"))
        ['archive', 'disk_after_archive']
    """
    if from_step is None:
        return frozenset()
    names = runbook.step_names
    if from_step not in names:
        raise UnknownNameError(f"{runbook.key} step", from_step, names)
    return frozenset(names[names.index(from_step) :])


def annotate_rerun(
    plan: Plan, ledger: Any, from_step: str | None = None, key_version: str | None = None
) -> Plan:
    """Say, per step, what a run started now would skip and why, from the ledger's keys.

    Args:
        plan: the plan of one runbook, region and trade date.
        ledger: where the idempotency keys of earlier runs are.
        from_step: the step a restart would begin with (``--from-step``).

    Raises:
        UnknownNameError: ``from_step`` is not a step of the plan; lists the valid ones.
    """
    from openbell import catalog
    from openbell.tasks.ledger import CompletionKey

    runbook = catalog.get(plan.runbook)
    redo = redo_steps(runbook, from_step)
    gates = {s.name for s in runbook.steps if s.gate}
    side_effects = set(runbook.side_effect_steps())
    out = plan.model_copy(deep=True)
    for step in out.steps:
        before = step.name not in (*redo, *gates, "calendar", "signoff")
        if from_step and before:
            step.rerun = f"skipped: before --from-step {from_step}"
            continue
        if step.name not in side_effects:
            continue
        if step.name in redo:
            step.rerun = "re-done whatever was recorded (--from-step); reads state first"
            continue
        targets = sorted({a.target for a in step.actions})
        done = {}
        for t in targets:
            key = CompletionKey(
                plan.runbook, plan.region, plan.trade_date, step.name, t, key_version or None
            )
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
