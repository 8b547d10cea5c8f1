"""How the scheduling commands look on a terminal: calendar, doctor, deploy, catch-up."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from rich.console import Group, RenderableType
from rich.text import Text

from openbell.deployments.catchup import CatchUp
from openbell.deployments.deploy import DeployReport
from openbell.deployments.doctor import Check
from openbell.deployments.schedules import CalendarDay
from openbell.runbooks.schema import Estate

_LEVEL_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def calendar_table(estate: Estate, region: str, days: list[CalendarDay]) -> RenderableType:
    """Sessions, half days and holidays of a region, with each runbook's exact run times.

    One line a day (weekends are counted, not listed), so a line never wraps and can be
    grepped: times are in the venue's timezone and in UTC, with the UTC weekday named when
    it is not the trade date's (Tokyo's 08:15 is 23:15 UTC the day before).
    """
    reg = estate.region(region)
    venues = reg.primary_calendar + (
        f" (+ {', '.join(reg.calendars[1:])})" if len(reg.calendars) > 1 else ""
    )
    rules = {r.runbook: r.rule for d in days for r in d.runs}
    described = ", ".join(f"{rb} at {rule}" for rb, rule in rules.items())
    lines: list[RenderableType] = [
        Text(
            f"{region}: {venues}, {days[0].primary.timezone}; {described or 'no schedules'}",
            style="bold",
        )
    ]
    weekends = 0
    for d in days:
        if d.kind == "weekend":
            weekends += 1
            continue
        p = d.primary
        line = Text(f"{d.day.isoformat()} {d.day:%a}  ")
        style = {"holiday": "yellow", "half day": "cyan"}.get(d.kind, "")
        if d.kind == "holiday":
            line.append(p.reason or "holiday", style=style)
        else:
            line.append(f"{d.kind:<9}", style=style)
        if p.open_local and p.close_local:
            line.append(f"  {p.open_local:%H:%M}-{p.close_local:%H:%M}")
        for run in d.runs:
            utc_day = "" if run.run_utc.date() == d.day else f"{run.run_utc:%a} "
            line.append(
                f"  {run.runbook} {run.run_local:%H:%M %Z} = {utc_day}{run.run_utc:%H:%M} UTC"
            )
        notes: list[str] = []
        if p.half_day_reason:
            notes.append(p.half_day_reason)
        notes += [f"{v.calendar} closed ({v.reason})" for v in d.closed_venues]
        if notes:
            line.append("  " + "; ".join(notes), style="dim" if d.kind == "session" else style)
        lines.append(line)
    if weekends:
        lines.append(Text(f"({weekends} weekend days not listed)", style="dim"))
    return Group(*lines)


def doctor_table(checks: list[Check]) -> RenderableType:
    """One line per check (never wrapped), then the count of failures and warnings."""
    lines: list[RenderableType] = []
    for c in checks:
        line = Text(f"{c.level:<5}", style=_LEVEL_STYLE[c.level])
        line.append(f"{c.area:<11}{c.subject}: {c.detail}")
        lines.append(line)
    levels = Counter(c.level for c in checks)
    worst = "fail" if levels["fail"] else "warn" if levels["warn"] else "ok"
    lines.append(
        Text(
            f"{levels['fail']} failed, {levels['warn']} warnings, {levels['ok']} ok",
            style=_LEVEL_STYLE[worst],
        )
    )
    return Group(*lines)


def deploy_summary(report: DeployReport) -> RenderableType:
    """Each change on a line, then one line counting what did not change."""
    lines: list[RenderableType] = []
    for c in report.changes:
        if c.action in ("unchanged",):
            continue
        style = "yellow" if c.action in ("stale", "skipped") else "green"
        lines.append(Text(c.line(), style=style))
    same = Counter(c.kind for c in report.changes if c.action == "unchanged")
    kinds = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in sorted(same.items()))
    horizon = _utc(report.horizon_end)
    changed = len(report.changed)
    lines.append(
        Text(
            f"{changed} change{'s' if changed != 1 else ''}; unchanged: {kinds or 'nothing'}; "
            f"runs created to {horizon} on {report.api_url}"
        )
    )
    return Group(*lines)


def catchup_line(result: CatchUp) -> Text:
    style = "green" if result.action in ("created", "completed", "running") else "yellow"
    if result.action == "ended":
        style = "red"
    return Text(result.message, style=style)


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
