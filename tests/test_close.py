"""The close-time gate: real closes from the calendars, half days, wait or refuse."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from openbell.outcome import Status
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import EodPolicy, Estate
from openbell.tasks.close import close_decision, region_close
from openbell.tasks.context import RunContext
from tests.fixtures.steps import run_declared

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"


@pytest.fixture(scope="module")
def estate() -> Estate:
    return load_estate(LAB)


@pytest.mark.parametrize(
    ("region", "day", "close_utc", "half"),
    [
        ("amer", date(2026, 11, 27), "18:00", True),  # 13:00 New York, day after Thanksgiving
        ("amer", date(2026, 12, 24), "18:00", True),
        ("amer", date(2026, 11, 25), "21:00", False),
        ("emea", date(2026, 12, 24), "12:30", True),  # XLON half day, XETR closed
        ("emea", date(2026, 11, 27), "16:30", False),  # XLON 16:30 London = XETR 17:30 Berlin
        ("apac", date(2026, 11, 27), "08:00", False),  # XHKG 16:00 closes after XTKS 15:30
    ],
)
def test_the_region_closes_when_its_last_venue_does(
    estate: Estate, region: str, day: date, close_utc: str, half: bool
) -> None:
    reg = estate.region(region)
    close, facts = region_close(reg, day)
    assert close is not None and close.strftime("%H:%M") == close_utc
    assert facts[reg.primary_calendar]["half_day"] is half


def test_xlon_half_day_on_christmas_eve(estate: Estate) -> None:
    _, facts = region_close(estate.region("emea"), date(2026, 12, 24))
    assert facts["XLON"]["close_local"].startswith("2026-12-24T12:30:00")
    assert facts["XLON"]["half_day"] is True


def test_decisions() -> None:
    close = datetime(2026, 11, 27, 18, tzinfo=UTC)
    after, before = close + timedelta(seconds=1), close - timedelta(minutes=30)
    assert close_decision(after, close, "refuse", 60) == ("closed", 0.0)
    assert close_decision(close, close, "wait", 60) == ("closed", 0.0)
    assert close_decision(before, close, "refuse", 7200) == ("refuse", 1800.0)
    assert close_decision(before, close, "wait", 7200) == ("wait", 1800.0)
    assert close_decision(before, close, "wait", 600) == ("refuse", 1800.0)  # too long a wait


def gate(estate: Estate, region: str, day: date, now: datetime, **policy: object) -> object:
    runbooks = {"eod": EodPolicy(**policy)}  # type: ignore[arg-type]
    ctx = RunContext(
        estate=estate.model_copy(update={"runbooks": runbooks}),
        region=region,
        trade_date=day,
        prev_trade_date=None,
        ssh=None,
        http=None,
        notifier=None,
    )
    return asyncio.run(run_declared(ctx, "eod", "close", clock=lambda: now))


def test_after_the_half_day_close_the_gate_opens(estate: Estate) -> None:
    result = gate(estate, "amer", date(2026, 11, 27), datetime(2026, 11, 27, 18, 1, tzinfo=UTC))
    (o,) = result.outcomes  # type: ignore[attr-defined]
    assert o.status == Status.OK
    assert o.detail == "closed at 13:00 EST 2026-11-27 (XNYS half day)"


def test_before_the_close_it_refuses_by_default(estate: Estate) -> None:
    now = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)  # 12:00 New York
    (o,) = gate(estate, "amer", date(2026, 11, 27), now).outcomes  # type: ignore[attr-defined]
    assert o.status == Status.FAILED
    assert o.detail.startswith("not closed yet: closes at 13:00 EST 2026-11-27")
    assert "in 60 min; refusing (before_close: refuse" in o.detail


def test_before_the_close_it_can_wait(estate: Estate) -> None:
    close = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    now = close - timedelta(seconds=0.2)
    result = gate(estate, "amer", date(2026, 11, 27), now, before_close="wait")
    (o,) = result.outcomes  # type: ignore[attr-defined]
    assert o.status == Status.OK and "waited" in o.detail
