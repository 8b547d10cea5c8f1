"""The release window from the venues' real sessions (exchange_calendars), pure."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate, FreezeWindow, ReleasePolicy, ReleaseWindow
from openbell.tasks.release.window import release_window

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"


@pytest.fixture(scope="module")
def estate() -> Estate:
    return load_estate(LAB)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def judge(
    estate: Estate, region: str, at: str, policy: ReleasePolicy | None = None, minutes: float = 30
):  # type: ignore[no-untyped-def]
    return release_window(
        estate, region, utc(at), policy or ReleasePolicy(), expected_minutes=minutes
    )


def test_closed_during_xlon_continuous_trading_and_says_when_it_opens(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-02T11:00")  # a Wednesday
    assert not v.open
    assert v.reason.startswith("XLON is in its session until Wed 16:30 Europe/London")
    assert v.opens_at == utc("2026-12-02T17:00")  # XLON and XETR close 16:30Z, +30 min
    assert v.closes_at == utc("2026-12-03T06:30")  # XLON opens 08:00, less 90 min
    assert v.ponr == utc("2026-12-03T06:05")  # less a 15 min rollback and 10 min margin
    assert {s.calendar: s.state for s in v.venues} == {"XLON": "trading", "XETR": "trading"}


def test_after_the_close_it_waits_for_after_close_min(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-02T16:45")
    assert not v.open and "30 min after the last close" in v.reason
    assert v.opens_at == utc("2026-12-02T17:00")


def test_open_at_night_fits_until_the_point_of_no_return(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-02T21:00", minutes=60)
    assert v.open and v.fits
    late = judge(estate, "emea", "2026-12-03T05:30", minutes=60)  # 06:30 > 06:05
    assert late.open and not late.fits and "point of no return" in late.reason
    ok = judge(estate, "emea", "2026-12-03T05:30", minutes=35)  # 06:05 exactly
    assert ok.fits


def test_in_start_of_days_lead_it_is_closed_until_the_next_close(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-03T07:00")
    assert not v.open and v.reason.startswith("start of day's lead")
    assert v.opens_at == utc("2026-12-03T17:00")


def test_a_venue_holiday_is_open_during_what_would_be_trading_hours(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-25T11:00")  # Christmas: XLON and XETR closed
    assert v.open and v.fits
    # XLON keeps Boxing Day on Monday 28th, XETR opens that day at 09:00 CET (08:00Z): the
    # first venue to open ends the window
    assert v.closes_at == utc("2026-12-28T06:30")
    assert all(s.state == "closed" for s in v.venues)


def test_a_half_day_moves_the_window_earlier(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-24T12:00")  # XLON half day, closes 12:30
    assert not v.open and "half day" in v.reason
    assert v.opens_at == utc("2026-12-24T13:00")
    amer = judge(estate, "amer", "2026-11-27T18:00")  # XNYS closes 13:00 New York
    assert not amer.open and amer.opens_at == utc("2026-11-27T18:30")


def test_a_weekend_is_open_until_mondays_lead(estate: Estate) -> None:
    v = judge(estate, "emea", "2026-12-05T12:00")
    assert (
        v.open and v.opens_at == utc("2026-12-04T17:00") and v.closes_at == utc("2026-12-07T06:30")
    )


def test_a_freeze_closes_the_window_and_names_the_reason(estate: Estate) -> None:
    policy = ReleasePolicy(
        freeze=[
            FreezeWindow(start=date(2026, 12, 2), end=date(2026, 12, 2), reason="index rebalance")
        ]
    )
    v = judge(estate, "emea", "2026-12-02T21:00", policy)
    assert not v.open and v.freeze and "index rebalance" in v.reason
    assert v.opens_at == utc("2026-12-03T17:00")
    other = ReleasePolicy(
        freeze=[
            FreezeWindow(
                start=date(2026, 12, 2), end=date(2026, 12, 2), reason="x", regions=["amer"]
            )
        ]
    )
    assert judge(estate, "emea", "2026-12-02T21:00", other).open


def test_month_end_freeze(estate: Estate) -> None:
    policy = ReleasePolicy(month_end_freeze=True)
    v = judge(estate, "emea", "2026-11-30T21:00", policy)  # after November's last session
    assert not v.open and "month end" in v.reason
    assert v.opens_at == utc("2026-12-01T17:00")
    assert judge(estate, "emea", "2026-12-01T21:00", policy).open


def test_the_policy_moves_the_window(estate: Estate) -> None:
    policy = ReleasePolicy(window=ReleaseWindow(after_close_min=60, sod_lead_min=120, margin_min=0))
    v = judge(estate, "emea", "2026-12-02T11:00", policy)
    assert v.opens_at == utc("2026-12-02T17:30") and v.closes_at == utc("2026-12-03T06:00")


def test_a_naive_time_is_refused(estate: Estate) -> None:
    with pytest.raises(ValueError, match="naive"):
        release_window(
            estate, "emea", datetime(2026, 12, 2, 11), ReleasePolicy(), expected_minutes=1
        )


def test_lines_show_region_time_and_utc(estate: Estate) -> None:
    lines = judge(estate, "apac", "2026-12-02T03:00").lines("Asia/Tokyo")
    assert lines[0].startswith("window CLOSED: XTKS is in its session")
    assert "Wed 2026-12-02 17:30 JST (08:30Z)" in lines[1]  # XHKG closes 16:00 HKT = 08:00Z
