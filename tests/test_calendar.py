"""Exchange calendars on real 2026 dates: holidays, half days, weekends, DST weeks."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from openbell.runbooks.schema import Region
from openbell.tasks.connectors.calendar import (
    SessionInfo,
    get_calendar,
    previous_session,
    region_day,
    session_info,
)


def d(text: str) -> date:
    return date.fromisoformat(text)


@pytest.mark.parametrize(
    ("calendar", "day", "reason"),
    [
        ("XNYS", "2026-11-26", "holiday: Thanksgiving"),
        ("XNYS", "2026-12-25", "holiday: Christmas"),
        ("XNYS", "2026-11-28", "weekend"),
        ("XNYS", "2026-11-29", "weekend"),
        ("XLON", "2026-12-25", "holiday: Christmas"),
        ("XLON", "2026-12-28", "holiday: Weekend Boxing Day"),
        ("XLON", "2026-12-26", "weekend"),
        ("XTKS", "2026-11-23", "holiday: Labor Thanksgiving Day"),
        ("XTKS", "2026-11-03", "holiday: Culture Day"),
        ("XTKS", "2026-09-22", "holiday"),  # ad-hoc (citizens' holiday): no name in the calendar
        ("XHKG", "2026-12-25", "holiday: Christmas"),
        ("XHKG", "2026-02-17", "holiday"),  # Lunar New Year: ad hoc, unnamed
        ("XHKG", "2026-11-28", "weekend"),
    ],
)
def test_non_sessions_say_why(calendar: str, day: str, reason: str) -> None:
    info = session_info(calendar, d(day))
    assert info.is_session is False
    assert info.reason == reason
    assert info.open_local is info.close_local is info.open_utc is info.close_utc is None
    assert info.previous_session is not None and info.previous_session < d(day)
    assert info.next_session is not None and info.next_session > d(day)


@pytest.mark.parametrize(
    ("calendar", "day", "open_local", "close_local", "close_utc", "half_day", "why"),
    [
        ("XNYS", "2026-11-27", "09:30", "13:00", "18:00", True, "Black Friday"),
        ("XNYS", "2026-12-24", "09:30", "13:00", "18:00", True, "Christmas Eve"),
        ("XNYS", "2026-11-25", "09:30", "16:00", "21:00", False, None),
        ("XLON", "2026-12-24", "08:00", "12:30", "12:30", True, None),
        ("XLON", "2026-12-23", "08:00", "16:30", "16:30", False, None),
        ("XTKS", "2026-11-24", "09:00", "15:30", "06:30", False, None),
        ("XHKG", "2026-12-24", "09:30", "12:00", "04:00", True, None),
    ],
)
def test_sessions_open_and_close_in_local_time(
    calendar: str,
    day: str,
    open_local: str,
    close_local: str,
    close_utc: str,
    half_day: bool,
    why: str | None,
) -> None:
    info = session_info(calendar, d(day))
    assert info.is_session and info.reason is None
    assert info.open_local is not None and info.close_local is not None
    assert info.open_utc is not None and info.close_utc is not None
    assert info.open_local.strftime("%H:%M") == open_local
    assert info.close_local.strftime("%H:%M") == close_local
    assert info.close_utc.strftime("%H:%M") == close_utc
    assert info.close_local.tzinfo is not None and str(info.close_local.tzinfo) == info.timezone
    assert info.close_utc.tzinfo == UTC
    assert info.close_local == info.close_utc  # the same instant
    assert info.half_day is half_day
    if why is not None:
        assert info.half_day_reason == why


def test_thanksgiving_week_neighbours() -> None:
    friday = session_info("XNYS", d("2026-11-27"))
    assert friday.previous_session == d("2026-11-25")  # Thanksgiving skipped
    assert friday.next_session == d("2026-11-30")  # weekend skipped
    assert previous_session("XNYS", d("2026-11-27")) == d("2026-11-25")
    assert previous_session("XNYS", d("2026-11-30")) == d("2026-11-27")


def test_tokyo_lunch_break() -> None:
    info = session_info("XTKS", d("2026-11-24"))
    assert info.break_start_local is not None and info.break_end_local is not None
    assert info.break_start_local.time() == time(11, 30)
    assert info.break_end_local.time() == time(12, 30)
    assert session_info("XNYS", d("2026-11-24")).break_start_local is None


def _opens_utc(calendar: str, first: str, last: str) -> set[str]:
    days = [date.fromordinal(n) for n in range(d(first).toordinal(), d(last).toordinal() + 1)]
    infos = [session_info(calendar, day) for day in days]
    return {i.open_utc.strftime("%H:%M") for i in infos if i.open_utc is not None}


@pytest.mark.parametrize(
    ("calendar", "first", "last", "open_utc"),
    [
        # New York moved to summer time on 2026-03-08, London only on 2026-03-29.
        ("XNYS", "2026-03-02", "2026-03-06", {"14:30"}),
        ("XNYS", "2026-03-09", "2026-03-13", {"13:30"}),
        ("XLON", "2026-03-09", "2026-03-13", {"08:00"}),
        ("XLON", "2026-03-30", "2026-04-02", {"07:00"}),
        # Back: London on 2026-10-25, New York on 2026-11-01.
        ("XLON", "2026-10-19", "2026-10-23", {"07:00"}),
        ("XLON", "2026-10-26", "2026-10-30", {"08:00"}),
        ("XNYS", "2026-10-26", "2026-10-30", {"13:30"}),
        ("XNYS", "2026-11-02", "2026-11-06", {"14:30"}),
        # Tokyo has no DST: always 00:00 UTC.
        ("XTKS", "2026-03-09", "2026-03-13", {"00:00"}),
    ],
)
def test_dst_weeks_follow_each_exchanges_own_clock(
    calendar: str, first: str, last: str, open_utc: set[str]
) -> None:
    assert _opens_utc(calendar, first, last) == open_utc


def test_local_open_is_steady_across_dst() -> None:
    before, after = session_info("XNYS", d("2026-03-06")), session_info("XNYS", d("2026-03-09"))
    assert before.open_local is not None and after.open_local is not None
    assert before.open_local.time() == after.open_local.time() == time(9, 30)
    assert before.open_local.utcoffset() != after.open_local.utcoffset()


def test_region_day_primary_decides() -> None:
    emea = Region(
        timezone="Europe/London",
        calendars=["XLON", "XETR"],
        slack_channel="#emea",
        approver_group="emea-approvers",
        work_pool="emea",
    )
    boxing = region_day(emea, d("2026-12-28"))  # London closed, Frankfurt open
    assert boxing.is_trade_date is False
    assert boxing.primary.calendar == "XLON"
    assert [(v.calendar, v.is_session) for v in boxing.venues] == [("XLON", False), ("XETR", True)]
    assert [v.calendar for v in boxing.closed_venues] == ["XLON"]
    apac = Region(
        timezone="Asia/Tokyo",
        calendars=["XTKS", "XHKG"],
        slack_channel="#apac",
        approver_group="apac-approvers",
        work_pool="apac",
    )
    labour = region_day(apac, d("2026-11-23"))
    assert labour.primary.reason == "holiday: Labor Thanksgiving Day"
    assert labour.venues[1].is_session is True
    assert region_day(apac, d("2026-11-24")).is_trade_date is True


def test_a_datetime_is_reduced_to_its_date() -> None:
    info = session_info("XNYS", datetime(2026, 11, 27, 23, 59))
    assert isinstance(info, SessionInfo)
    assert info.day == d("2026-11-27")


def test_dates_beyond_the_librarys_default_window() -> None:
    # exchange_calendars' default calendar ends a year after today; ours follow the day asked.
    assert session_info("XNYS", d("2028-11-23")).reason == "holiday: Thanksgiving"
    assert session_info("XNYS", d("2028-01-03")).previous_session == d("2027-12-31")


def test_calendars_are_cached() -> None:
    assert get_calendar("XLON", d("2026-03-02")) is get_calendar("XLON", d("2026-12-31"))


def test_unknown_calendar_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown exchange calendar 'XXXX'"):
        session_info("XXXX", d("2026-11-27"))
