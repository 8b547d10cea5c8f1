"""When each runbook runs: exact times from the exchange calendars, before any Prefect call.

A runbook's schedule (``runbooks.<name>.schedule`` in the estate) is an offset from the
open or the close of the region's primary venue. For every session of that calendar this
module gives the exact instant, computed as ``open/close (UTC) + offset`` so that daylight
saving and half days fall out of the calendar rather than out of hand-kept UTC hours:

- XNYS 2026-11-27 closes 13:00 New York, so end of day (close + 20) is 13:20 EST, 18:20 UTC;
- start of day at open - 45 is 08:45 New York all year: 13:45 UTC in winter, 12:45 UTC
  from 2026-03-08, while London's 07:15 stays 07:15 UTC until 2026-03-29;
- a Tokyo start of day (08:15 JST) falls on the previous UTC date: the trade date is the
  session's, never the UTC date.

Cron cannot say "45 minutes before the XNYS open, on sessions only": these planned runs
are what ``deployments.deploy`` turns into concrete Prefect flow runs.

Example:
    >>> from openbell.runbooks.loader import load_estate
    >>> estate = load_estate("runbooks/lab.yaml")
    >>> run = planned_run(estate, "eod", "amer", date(2026, 11, 27))
    >>> run.name, run.run_local.strftime("%H:%M %Z"), run.run_utc.strftime("%H:%M")
    ('eod-amer-2026-11-27', '13:20 EST', '18:20')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from openbell.runbooks.schema import Estate, RunbookSchedule
from openbell.tasks.connectors.calendar import SessionInfo, get_calendar, region_day, session_info

#: Prefix of every idempotency key openbell gives a scheduled flow run.
KEY_PREFIX = "openbell"


@dataclass(frozen=True)
class PlannedRun:
    """One run a schedule asks for: (runbook, region, trade date) at an exact instant.

    Attributes:
        runbook: runbook key, e.g. ``sod``.
        region: region name.
        trade_date: the session the run is for.
        calendar: the primary calendar that decided it (``XNYS``).
        at: ``open`` or ``close``.
        offset_minutes: minutes after (+) or before (-) ``at``.
        anchor_local: the open or close in the venue's timezone.
        run_local: when the run starts, in the venue's timezone.
        run_utc: the same instant in UTC.
        half_day: the session closes early.
    """

    runbook: str
    region: str
    trade_date: date
    calendar: str
    at: Literal["open", "close"]
    offset_minutes: int
    anchor_local: datetime
    run_local: datetime
    run_utc: datetime
    half_day: bool = False

    @property
    def name(self) -> str:
        """The flow run name: ``sod-emea-2026-11-27``."""
        return f"{self.runbook}-{self.region}-{self.trade_date.isoformat()}"

    @property
    def idempotency_key(self) -> str:
        """The key Prefect keeps unique per flow: one run per (runbook, region, trade date)."""
        return run_key(self.runbook, self.region, self.trade_date)

    @property
    def rule(self) -> str:
        """The schedule in words: ``open - 45 min``."""
        sign = "+" if self.offset_minutes >= 0 else "-"
        return f"{self.at} {sign} {abs(self.offset_minutes)} min"

    def to_json(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "region": self.region,
            "trade_date": self.trade_date.isoformat(),
            "name": self.name,
            "calendar": self.calendar,
            "rule": self.rule,
            "half_day": self.half_day,
            "run_local": self.run_local.isoformat(),
            "run_utc": self.run_utc.isoformat(),
        }


@dataclass(frozen=True)
class CalendarDay:
    """A region's day: its primary session, the other venues, and the runs it schedules.

    Attributes:
        day: the date.
        region: region name.
        primary: the primary calendar's session info.
        closed_venues: other venues of the region that do not trade that day, with why.
        runs: the scheduled runs for this trade date, in time order.
    """

    day: date
    region: str
    primary: SessionInfo
    closed_venues: list[SessionInfo] = field(default_factory=list)
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``session``, ``half day``, ``holiday`` or ``weekend``."""
        if self.primary.is_session:
            return "half day" if self.primary.half_day else "session"
        return "weekend" if self.primary.reason == "weekend" else "holiday"

    def to_json(self) -> dict[str, Any]:
        p = self.primary
        return {
            "date": self.day.isoformat(),
            "region": self.region,
            "calendar": p.calendar,
            "kind": self.kind,
            "reason": p.reason or p.half_day_reason,
            "open_local": p.open_local.isoformat() if p.open_local else None,
            "close_local": p.close_local.isoformat() if p.close_local else None,
            "open_utc": p.open_utc.isoformat() if p.open_utc else None,
            "close_utc": p.close_utc.isoformat() if p.close_utc else None,
            "closed_venues": {v.calendar: v.reason for v in self.closed_venues},
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass(frozen=True)
class DstChange:
    """A change of UTC offset in a timezone.

    Attributes:
        timezone: IANA name.
        at_utc: the first instant of the new offset.
        before: abbreviation and offset before, e.g. ``EST (UTC-05:00)``.
        after: the same after.
        shift_minutes: how far local clocks moved (+60 in spring).
    """

    timezone: str
    at_utc: datetime
    before: str
    after: str
    shift_minutes: int

    @property
    def local_day(self) -> date:
        return self.at_utc.astimezone(ZoneInfo(self.timezone)).date()


def run_key(runbook: str, region: str, trade_date: date) -> str:
    """The idempotency key of a scheduled run: ``openbell:sod:emea:2026-11-27``."""
    return f"{KEY_PREFIX}:{runbook}:{region}:{trade_date.isoformat()}"


def scheduled_runbooks(estate: Estate) -> dict[str, RunbookSchedule]:
    """Runbook key -> schedule, for the runbooks the estate schedules."""
    return {
        name: policy.schedule
        for name, policy in sorted(estate.runbooks.items())
        if policy.schedule is not None
    }


def run_at(info: SessionInfo, schedule: RunbookSchedule) -> tuple[datetime, datetime]:
    """The run instant for a session: (in the venue's timezone, in UTC).

    The offset is a duration added to the open or close instant, not to a wall clock, so
    a run 45 minutes before an open is 45 real minutes before it even on a DST night.
    """
    anchor = info.open_utc if schedule.at == "open" else info.close_utc
    if anchor is None:
        raise ValueError(f"{info.calendar} {info.day} is not a session")
    utc = anchor + timedelta(minutes=schedule.offset_minutes)
    return utc.astimezone(ZoneInfo(info.timezone)), utc


def planned_run(estate: Estate, runbook: str, region: str, trade_date: date) -> PlannedRun:
    """The run ``runbook`` asks for on ``trade_date`` in ``region``.

    Raises:
        ValueError: the runbook has no schedule, or the date is not a session (the message
            says why: weekend or the holiday's name).
    """
    schedule = estate.policy(runbook).schedule
    if schedule is None:
        raise ValueError(f"runbook {runbook!r} has no schedule (runbooks.{runbook}.schedule)")
    calendar = estate.region(region).primary_calendar
    info = session_info(calendar, trade_date)
    if not info.is_session:
        raise ValueError(f"{trade_date} is not a {calendar} session ({info.reason})")
    return _planned(runbook, region.lower(), info, schedule)


def calendar_days(
    estate: Estate, region: str, start: date, days: int, runbooks: list[str] | None = None
) -> list[CalendarDay]:
    """Every day from ``start`` for ``days`` days, with the runs the schedules ask for.

    Args:
        estate: the estate.
        region: region name.
        start: first day.
        days: how many days (``start`` included).
        runbooks: restrict to these runbook keys (default: every scheduled runbook).
    """
    reg = estate.region(region)
    schedules = _select(estate, runbooks)
    out: list[CalendarDay] = []
    for i in range(days):
        day = start + timedelta(days=i)
        rd = region_day(reg, day)
        runs = (
            sorted(
                (_planned(rb, region.lower(), rd.primary, s) for rb, s in schedules.items()),
                key=lambda r: r.run_utc,
            )
            if rd.is_trade_date
            else []
        )
        closed = [v for v in rd.venues[1:] if not v.is_session] if rd.is_trade_date else []
        out.append(CalendarDay(day, region.lower(), rd.primary, closed, runs))
    return out


def runs_between(
    estate: Estate,
    start_utc: datetime,
    end_utc: datetime,
    *,
    regions: list[str] | None = None,
    runbooks: list[str] | None = None,
) -> list[PlannedRun]:
    """Every scheduled run whose start falls in ``[start_utc, end_utc)``, in time order.

    Trade dates are walked in each venue's own timezone, one day either side of the
    window, so a Tokyo start of day at 23:15 UTC the day before is not missed.
    """
    schedules = _select(estate, runbooks)
    found: list[PlannedRun] = []
    for region in regions or list(estate.regions):
        reg = estate.region(region)
        tz = get_calendar(reg.primary_calendar, start_utc.date()).tz
        first = start_utc.astimezone(ZoneInfo(str(tz))).date() - timedelta(days=1)
        last = end_utc.astimezone(ZoneInfo(str(tz))).date() + timedelta(days=1)
        day = first
        while day <= last:
            info = session_info(reg.primary_calendar, day)
            if info.is_session:
                for rb, schedule in schedules.items():
                    run = _planned(rb, region.lower(), info, schedule)
                    if start_utc <= run.run_utc < end_utc:
                        found.append(run)
            day += timedelta(days=1)
    return sorted(found, key=lambda r: (r.run_utc, r.region, r.runbook))


def sessions_between(calendar: str, first: date, last: date) -> list[date]:
    """The sessions of ``calendar`` from ``first`` to ``last`` (both included)."""
    days: list[date] = []
    day = first
    while day <= last:
        if session_info(calendar, day).is_session:
            days.append(day)
        day += timedelta(days=1)
    return days


def dst_changes(timezone: str, start_utc: datetime, end_utc: datetime) -> list[DstChange]:
    """Changes of UTC offset in ``timezone`` between two instants.

    Example:
        >>> [c.before + " -> " + c.after for c in dst_changes("America/New_York",
        ...     datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC))]
        ['EST (UTC-05:00) -> EDT (UTC-04:00)']
    """
    tz = ZoneInfo(timezone)
    changes: list[DstChange] = []
    # Offsets change on the hour or half hour everywhere we trade; scan in 30-minute steps.
    t = start_utc.replace(minute=0, second=0, microsecond=0)
    step = timedelta(minutes=30)
    before = t.astimezone(tz)
    while t < end_utc:
        t += step
        now = t.astimezone(tz)
        if now.utcoffset() != before.utcoffset():
            shift = (now.utcoffset() or timedelta()) - (before.utcoffset() or timedelta())
            changes.append(
                DstChange(
                    timezone=timezone,
                    at_utc=t,
                    before=_zone_label(before),
                    after=_zone_label(now),
                    shift_minutes=int(shift.total_seconds() // 60),
                )
            )
        before = now
    return changes


def utcnow() -> datetime:
    return datetime.now(UTC)


def _select(estate: Estate, runbooks: list[str] | None) -> dict[str, RunbookSchedule]:
    schedules = scheduled_runbooks(estate)
    if runbooks is None:
        return schedules
    return {rb: s for rb, s in schedules.items() if rb in runbooks}


def _planned(runbook: str, region: str, info: SessionInfo, schedule: RunbookSchedule) -> PlannedRun:
    local, utc = run_at(info, schedule)
    anchor = info.open_local if schedule.at == "open" else info.close_local
    assert anchor is not None  # run_at raised for a non-session
    return PlannedRun(
        runbook=runbook,
        region=region,
        trade_date=info.day,
        calendar=info.calendar,
        at=schedule.at,
        offset_minutes=schedule.offset_minutes,
        anchor_local=anchor,
        run_local=local,
        run_utc=utc,
        half_day=info.half_day,
    )


def _zone_label(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    return f"{moment.tzname()} (UTC{sign}{hh:02d}:{mm:02d})"
