"""Run times from real 2026 exchange calendars: sessions, holidays, half days, DST weeks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from openbell.deployments.schedules import (
    calendar_days,
    dst_changes,
    planned_run,
    run_key,
    runs_between,
    scheduled_runbooks,
)
from openbell.runbooks.schema import Estate


def d(text: str) -> date:
    return date.fromisoformat(text)


def region(tz: str, *calendars: str) -> dict[str, object]:
    return {
        "timezone": tz,
        "calendars": list(calendars),
        "slack_channel": "#oncall",
        "approver_group": "approvers",
        "work_pool": "pool",
    }


@pytest.fixture(scope="module")
def estate() -> Estate:
    """Four regions, one per primary calendar; sod at open - 45, eod at close + 20."""
    return Estate.model_validate(
        {
            "known_hosts": "/dev/null",
            "regions": {
                "amer": region("America/New_York", "XNYS"),
                "emea": region("Europe/London", "XLON", "XETR"),
                "apac": region("Asia/Tokyo", "XTKS", "XHKG"),
                "hk": region("Asia/Hong_Kong", "XHKG"),
            },
            "runbooks": {
                "sod": {"schedule": {"at": "open", "offset_minutes": -45}},
                "eod": {"schedule": {"at": "close", "offset_minutes": 20}},
            },
        }
    )


@pytest.mark.parametrize(
    ("region_name", "runbook", "day", "local", "utc"),
    [
        # XNYS: half days move end of day with the early close.
        ("amer", "eod", "2026-11-27", "2026-11-27 13:20 EST", "2026-11-27 18:20"),
        ("amer", "eod", "2026-12-24", "2026-12-24 13:20 EST", "2026-12-24 18:20"),
        ("amer", "eod", "2026-11-25", "2026-11-25 16:20 EST", "2026-11-25 21:20"),
        ("amer", "sod", "2026-11-27", "2026-11-27 08:45 EST", "2026-11-27 13:45"),
        # New York's DST: spring forward on 2026-03-08, back on 2026-11-01.
        ("amer", "sod", "2026-03-06", "2026-03-06 08:45 EST", "2026-03-06 13:45"),
        ("amer", "sod", "2026-03-09", "2026-03-09 08:45 EDT", "2026-03-09 12:45"),
        ("amer", "sod", "2026-10-30", "2026-10-30 08:45 EDT", "2026-10-30 12:45"),
        ("amer", "sod", "2026-11-02", "2026-11-02 08:45 EST", "2026-11-02 13:45"),
        # XLON: closes 12:30 on Christmas Eve; London's DST on 2026-03-29 and 2026-10-25.
        ("emea", "eod", "2026-12-24", "2026-12-24 12:50 GMT", "2026-12-24 12:50"),
        ("emea", "eod", "2026-12-23", "2026-12-23 16:50 GMT", "2026-12-23 16:50"),
        ("emea", "sod", "2026-03-27", "2026-03-27 07:15 GMT", "2026-03-27 07:15"),
        ("emea", "sod", "2026-03-30", "2026-03-30 07:15 BST", "2026-03-30 06:15"),
        ("emea", "sod", "2026-10-23", "2026-10-23 07:15 BST", "2026-10-23 06:15"),
        ("emea", "sod", "2026-10-26", "2026-10-26 07:15 GMT", "2026-10-26 07:15"),
        # XTKS: start of day is on the previous UTC date; the trade date stays Tokyo's.
        ("apac", "sod", "2026-11-24", "2026-11-24 08:15 JST", "2026-11-23 23:15"),
        ("apac", "eod", "2026-11-24", "2026-11-24 15:50 JST", "2026-11-24 06:50"),
        # XHKG: 09:30 open, 12:00 close on Christmas Eve.
        ("hk", "sod", "2026-12-23", "2026-12-23 08:45 HKT", "2026-12-23 00:45"),
        ("hk", "eod", "2026-12-23", "2026-12-23 16:20 HKT", "2026-12-23 08:20"),
        ("hk", "eod", "2026-12-24", "2026-12-24 12:20 HKT", "2026-12-24 04:20"),
    ],
)
def test_run_times_follow_the_venue(
    estate: Estate, region_name: str, runbook: str, day: str, local: str, utc: str
) -> None:
    run = planned_run(estate, runbook, region_name, d(day))
    assert run.run_local.strftime("%Y-%m-%d %H:%M %Z") == local
    assert run.run_utc.strftime("%Y-%m-%d %H:%M") == utc
    assert run.run_utc.tzinfo == UTC and run.run_local == run.run_utc
    assert run.name == f"{runbook}-{region_name}-{day}"
    assert run.idempotency_key == f"openbell:{runbook}:{region_name}:{day}"
    assert run.trade_date == d(day)


@pytest.mark.parametrize(
    ("region_name", "day", "why"),
    [
        ("amer", "2026-11-26", "holiday: Thanksgiving"),
        ("amer", "2026-11-28", "weekend"),
        ("emea", "2026-12-28", "holiday: Weekend Boxing Day"),
        ("apac", "2026-11-23", "holiday: Labor Thanksgiving Day"),
        ("hk", "2026-02-17", "holiday"),
    ],
)
def test_no_run_on_a_holiday_or_weekend(
    estate: Estate, region_name: str, day: str, why: str
) -> None:
    with pytest.raises(ValueError, match=f"is not a .* session \\({why}\\)"):
        planned_run(estate, "sod", region_name, d(day))
    (only,) = calendar_days(estate, region_name, d(day), 1)
    assert only.runs == []
    assert only.kind == ("weekend" if why == "weekend" else "holiday")
    start = datetime.combine(d(day), datetime.min.time(), UTC) - timedelta(hours=12)
    names = [r.name for r in runs_between(estate, start, start + timedelta(hours=36))]
    assert f"sod-{region_name}-{day}" not in names
    assert f"eod-{region_name}-{day}" not in names


def test_half_days_are_marked(estate: Estate) -> None:
    days = {c.day: c for c in calendar_days(estate, "amer", d("2026-11-25"), 5)}
    assert [days[d(x)].kind for x in ("2026-11-25", "2026-11-26", "2026-11-27")] == [
        "session",
        "holiday",
        "half day",
    ]
    assert days[d("2026-11-27")].primary.half_day_reason == "Black Friday"
    assert all(r.half_day for r in days[d("2026-11-27")].runs)


@pytest.mark.parametrize(
    ("day", "amer_sod_utc", "emea_sod_utc", "hours_apart"),
    [
        ("2026-03-06", "13:45", "07:15", 6.5),  # both on winter time
        ("2026-03-09", "12:45", "07:15", 5.5),  # New York on summer time, London not yet
        ("2026-03-10", "12:45", "07:15", 5.5),
        ("2026-03-13", "12:45", "07:15", 5.5),
        ("2026-03-27", "12:45", "07:15", 5.5),
        ("2026-03-30", "12:45", "06:15", 6.5),  # both on summer time
        ("2026-10-23", "12:45", "06:15", 6.5),
        ("2026-10-26", "12:45", "07:15", 5.5),  # London back on winter time, New York not yet
        ("2026-10-30", "12:45", "07:15", 5.5),
        ("2026-11-02", "13:45", "07:15", 6.5),  # both on winter time
    ],
)
def test_the_weeks_new_york_and_london_disagree(
    estate: Estate, day: str, amer_sod_utc: str, emea_sod_utc: str, hours_apart: float
) -> None:
    amer = planned_run(estate, "sod", "amer", d(day))
    emea = planned_run(estate, "sod", "emea", d(day))
    # In the venues' own clocks nothing moves: 08:45 New York, 07:15 London.
    assert (amer.run_local.strftime("%H:%M"), emea.run_local.strftime("%H:%M")) == (
        "08:45",
        "07:15",
    )
    assert amer.run_utc.strftime("%H:%M") == amer_sod_utc
    assert emea.run_utc.strftime("%H:%M") == emea_sod_utc
    assert (amer.run_utc - emea.run_utc) == timedelta(hours=hours_apart)


def test_a_utc_day_holds_the_next_tokyo_start_of_day(estate: Estate) -> None:
    start = datetime(2026, 11, 24, tzinfo=UTC)
    runs = runs_between(estate, start, start + timedelta(days=1), regions=["apac", "amer"])
    assert [(r.name, r.run_utc.strftime("%H:%M")) for r in runs] == [
        ("eod-apac-2026-11-24", "06:50"),
        ("sod-amer-2026-11-24", "13:45"),
        ("eod-amer-2026-11-24", "21:20"),
        ("sod-apac-2026-11-25", "23:15"),
    ]
    assert all(start <= r.run_utc < start + timedelta(days=1) for r in runs)


def test_an_offset_is_real_minutes_across_a_dst_night() -> None:
    far = Estate.model_validate(
        {
            "known_hosts": "/dev/null",
            "regions": {"amer": region("America/New_York", "XNYS")},
            "runbooks": {"sod": {"schedule": {"at": "open", "offset_minutes": -600}}},
        }
    )
    run = planned_run(far, "sod", "amer", d("2026-03-09"))
    # 09:30 EDT is 13:30 UTC; 600 minutes earlier is 03:30 UTC, 23:30 EDT the evening before.
    assert run.run_utc == datetime(2026, 3, 9, 3, 30, tzinfo=UTC)
    assert run.run_local.strftime("%Y-%m-%d %H:%M %Z") == "2026-03-08 23:30 EDT"


@pytest.mark.parametrize(
    ("tz", "when_utc", "before", "after"),
    [
        ("America/New_York", "2026-03-08 07:00", "EST (UTC-05:00)", "EDT (UTC-04:00)"),
        ("America/New_York", "2026-11-01 06:00", "EDT (UTC-04:00)", "EST (UTC-05:00)"),
        ("Europe/London", "2026-03-29 01:00", "GMT (UTC+00:00)", "BST (UTC+01:00)"),
        ("Europe/London", "2026-10-25 01:00", "BST (UTC+01:00)", "GMT (UTC+00:00)"),
    ],
)
def test_dst_changes_of_2026(tz: str, when_utc: str, before: str, after: str) -> None:
    at = datetime.strptime(when_utc, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    (change,) = dst_changes(tz, at - timedelta(days=3), at + timedelta(days=3))
    assert (change.at_utc, change.before, change.after) == (at, before, after)
    assert change.shift_minutes == (60 if "+01" in after or "-04" in after else -60)


def test_tokyo_and_hong_kong_have_no_dst() -> None:
    year = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert dst_changes("Asia/Tokyo", *year) == []
    assert dst_changes("Asia/Hong_Kong", *year) == []
    assert len(dst_changes("America/New_York", *year)) == 2


def test_only_scheduled_runbooks_make_runs(estate: Estate) -> None:
    assert sorted(scheduled_runbooks(estate)) == ["eod", "sod"]
    bare = estate.model_copy(update={"runbooks": {}})
    assert (
        runs_between(bare, datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
        == []
    )
    with pytest.raises(ValueError, match="has no schedule"):
        planned_run(bare, "sod", "amer", d("2026-11-24"))
    assert run_key("sod", "emea", d("2026-11-27")) == "openbell:sod:emea:2026-11-27"
