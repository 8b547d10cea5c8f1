"""Exchange calendars: is a day a session, when does it open and close, and why not.

A run's trade date is a session of its region's primary calendar (``Region.calendars[0]``);
a non-session is skipped with a recorded reason ("weekend", "holiday: Thanksgiving"),
never failed. Open and close come from exchange_calendars in the exchange's own timezone,
so half days (XNYS 13:00 New York on the day after Thanksgiving) and the DST weeks, when
New York and London are four rather than five hours apart, need no special cases here.

Calendar objects take about 0.1 s each to build (measured with exchange_calendars 4.13 on
pandas 3.1: 0.07-0.11 s per calendar, whether it spans three years or the default twenty
one, so a narrow window saves little time). The window still matters for correctness: the
library's default calendar ends one year after today, so a calendar is built per
(code, year) spanning the year before to the year after and cached for the process.

Example:
    >>> info = session_info("XNYS", date(2026, 11, 26))
    >>> info.is_session, info.reason
    (False, 'holiday: Thanksgiving')
    >>> session_info("XNYS", date(2026, 11, 27)).close_local.strftime("%H:%M %Z")
    '13:00 EST'
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

if TYPE_CHECKING:
    from exchange_calendars import ExchangeCalendar

    from openbell.runbooks.schema import Region

log = logging.getLogger(__name__)

_cache: dict[tuple[str, int], ExchangeCalendar] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class SessionInfo:
    """One calendar's view of one day.

    Attributes:
        calendar: exchange_calendars code, e.g. ``XNYS``.
        day: the date asked about.
        timezone: the exchange's IANA timezone.
        is_session: whether the exchange trades that day.
        reason: why not, when it is not a session: ``weekend``, ``holiday: <name>``,
            ``holiday`` (an ad-hoc closure without a name) or ``not a session``.
        open_local: session open in the exchange's timezone (None when not a session).
        close_local: session close in the exchange's timezone; the early close on a half day.
        open_utc: ``open_local`` in UTC.
        close_utc: ``close_local`` in UTC.
        break_start_local: start of the lunch break (XTKS, XHKG), else None.
        break_end_local: end of the lunch break, else None.
        half_day: the session closes early.
        half_day_reason: the early close's name where the calendar gives one
            (``Black Friday``, ``Christmas Eve``).
        previous_session: the last session before ``day``.
        next_session: the first session after ``day``.
    """

    calendar: str
    day: date
    timezone: str
    is_session: bool
    reason: str | None = None
    open_local: datetime | None = None
    close_local: datetime | None = None
    open_utc: datetime | None = None
    close_utc: datetime | None = None
    break_start_local: datetime | None = None
    break_end_local: datetime | None = None
    half_day: bool = False
    half_day_reason: str | None = None
    previous_session: date | None = None
    next_session: date | None = None


@dataclass(frozen=True)
class RegionDay:
    """A region's calendars on one day: the primary decides whether the region runs.

    Attributes:
        day: the date asked about.
        timezone: the region's timezone.
        primary: the primary calendar's info (``Region.calendars[0]``).
        venues: every calendar of the region, primary first.
    """

    day: date
    timezone: str
    primary: SessionInfo
    venues: list[SessionInfo] = field(default_factory=list)

    @property
    def is_trade_date(self) -> bool:
        """Whether ``day`` is a session of the primary calendar."""
        return self.primary.is_session

    @property
    def closed_venues(self) -> list[SessionInfo]:
        """Venues that do not trade on ``day`` (the primary included, if it does not)."""
        return [v for v in self.venues if not v.is_session]


def get_calendar(code: str, day: date) -> ExchangeCalendar:
    """The calendar ``code`` covering the year before to the year after ``day`` (cached).

    Raises:
        ValueError: ``code`` is not an exchange_calendars code.

    Example:
        >>> get_calendar("XLON", date(2026, 3, 30)).tz.key
        'Europe/London'
    """
    key = (code, day.year)
    with _cache_lock:
        cal = _cache.get(key)
        if cal is None:
            started = time.perf_counter()
            try:
                cal = xcals.get_calendar(
                    code, start=f"{day.year - 1}-01-01", end=f"{day.year + 1}-12-31"
                )
            except xcals.errors.InvalidCalendarName as exc:
                raise ValueError(
                    f"unknown exchange calendar {code!r} (expected a code such as XNYS, XLON, XTKS)"
                ) from exc
            _cache[key] = cal
            log.debug(
                "built calendar %s for %d-%d in %.3f s",
                code,
                day.year - 1,
                day.year + 1,
                time.perf_counter() - started,
            )
    return cal


def session_info(calendar: str, day: date) -> SessionInfo:
    """Whether ``day`` is a session of ``calendar``, its hours, and its neighbours.

    Args:
        calendar: an exchange_calendars code (``XNYS``, ``XLON``, ``XTKS``, ``XHKG``...).
        day: a date (a datetime is reduced to its date).

    Returns:
        The day's ``SessionInfo``.

    Example:
        >>> info = session_info("XNYS", date(2026, 3, 10))
        >>> info.open_local.strftime("%H:%M"), info.open_utc.strftime("%H:%M")
        ('09:30', '13:30')
        >>> session_info("XTKS", date(2026, 11, 23)).reason
        'holiday: Labor Thanksgiving Day'
    """
    day = date(day.year, day.month, day.day)
    cal = get_calendar(calendar, day)
    tz = ZoneInfo(str(cal.tz))
    ts = pd.Timestamp(day)
    previous = _session_date(cal.date_to_session(ts - pd.Timedelta(days=1), direction="previous"))
    following = _session_date(cal.date_to_session(ts + pd.Timedelta(days=1), direction="next"))
    common: dict[str, Any] = {
        "calendar": calendar,
        "day": day,
        "timezone": tz.key,
        "previous_session": previous,
        "next_session": following,
    }
    if not cal.is_session(ts):
        return SessionInfo(is_session=False, reason=_closed_reason(cal, day), **common)
    opened = _aware(cal.session_open(ts))
    closed = _aware(cal.session_close(ts))
    half = bool(ts in cal.early_closes)
    return SessionInfo(
        is_session=True,
        open_local=opened.astimezone(tz),
        close_local=closed.astimezone(tz),
        open_utc=opened,
        close_utc=closed,
        break_start_local=_optional_local(cal.session_break_start(ts), tz),
        break_end_local=_optional_local(cal.session_break_end(ts), tz),
        half_day=half,
        half_day_reason=_early_close_name(cal, day) if half else None,
        **common,
    )


def region_day(region: Region, day: date) -> RegionDay:
    """Every calendar of ``region`` on ``day``; the primary (first) decides the trade date.

    Example:
        >>> from openbell.runbooks.schema import Region
        >>> emea = Region(timezone="Europe/London", calendars=["XLON", "XETR"],
        ...               slack_channel="#emea", approver_group="g", work_pool="emea")
        >>> rd = region_day(emea, date(2026, 12, 28))
        >>> rd.is_trade_date, rd.primary.reason, rd.venues[1].is_session
        (False, 'holiday: Weekend Boxing Day', True)
    """
    venues = [session_info(code, day) for code in region.calendars]
    return RegionDay(
        day=date(day.year, day.month, day.day),
        timezone=region.timezone,
        primary=venues[0],
        venues=venues,
    )


def previous_session(calendar: str, day: date) -> date:
    """The last session of ``calendar`` strictly before ``day``.

    Example:
        >>> previous_session("XNYS", date(2026, 11, 27))  # Thanksgiving is skipped
        datetime.date(2026, 11, 25)
    """
    info = session_info(calendar, day)
    assert info.previous_session is not None  # the cached window starts a year earlier
    return info.previous_session


def _closed_reason(cal: ExchangeCalendar, day: date) -> str:
    weekmask = str(getattr(cal, "weekmask", "1111100"))
    if weekmask[day.weekday()] == "0":
        return "weekend"
    rules = cal.regular_holidays
    if rules is not None:
        names = rules.holidays(pd.Timestamp(day), pd.Timestamp(day), return_name=True)
        if len(names):
            return f"holiday: {names.iloc[0]}"
    adhoc = pd.DatetimeIndex(list(cal.adhoc_holidays))
    if pd.Timestamp(day) in adhoc:
        return "holiday"
    return "not a session"


def _early_close_name(cal: ExchangeCalendar, day: date) -> str | None:
    ts = pd.Timestamp(day)
    for _close_time, rules in cal.special_closes:
        if hasattr(rules, "holidays"):
            names = rules.holidays(ts, ts, return_name=True)
            if len(names):
                return str(names.iloc[0])
    return None


def _session_date(ts: pd.Timestamp) -> date:
    return date(ts.year, ts.month, ts.day)


def _aware(ts: pd.Timestamp) -> datetime:
    """A pandas UTC timestamp as a stdlib datetime in UTC."""
    return datetime.fromtimestamp(ts.timestamp(), tz=UTC)


def _optional_local(ts: pd.Timestamp | Any, tz: ZoneInfo) -> datetime | None:
    if ts is None or pd.isna(ts):
        return None
    return _aware(ts).astimezone(tz)
