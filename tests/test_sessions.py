"""FIX end of day against the lab venue: reset policy, store kept, run twice."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.outcome import Status
from openbell.runbooks.schema import FixSession
from openbell.settings import get_settings
from openbell.tasks.context import RunContext
from openbell.tasks.sessions import parse_seqnums, reset_due
from tests.fixtures.fix import eod_estate, running_venue
from tests.fixtures.localhosts import LocalHosts
from tests.fixtures.steps import run_declared

FRI, MON, TUE = date(2026, 11, 27), date(2026, 11, 30), date(2026, 12, 1)


def session(policy: str, weekday: str | None = None) -> FixSession:
    return FixSession(
        region="emea",
        address="127.0.0.1",
        port=1,
        sender_comp_id="A",
        target_comp_id="B",
        reset_policy=policy,  # type: ignore[arg-type]
        reset_weekday=weekday,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("policy", "weekday", "day", "following", "due"),
    [
        ("daily", None, MON, TUE, True),
        ("never", None, FRI, MON, False),
        ("weekly", "sun", FRI, MON, True),  # the weekend holds the reset day
        ("weekly", "sun", MON, TUE, False),
        ("weekly", "mon", FRI, MON, True),  # the next session is the reset day itself
        ("weekly", "fri", FRI, MON, False),  # reset on Friday happened the night before
        ("weekly", "fri", date(2026, 11, 26), FRI, True),
        ("weekly", "tue", date(2026, 11, 25), FRI, False),  # Thanksgiving skipped: Wed->Fri
    ],
)
def test_reset_due(policy: str, weekday: str | None, day: date, following: date, due: bool) -> None:
    assert reset_due(session(policy, weekday), day, following) is due


def test_parse_seqnums() -> None:
    assert parse_seqnums("0000000012 : 0000000009\n") == (12, 9)
    assert parse_seqnums("garbage") is None
    assert parse_seqnums("a : b") is None


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENBELL_HOME", str(tmp_path))
    get_settings.cache_clear()
    return tmp_path


def run_eod_twice(home: Path, day: date) -> tuple[Any, Any, LocalHosts]:
    estate = eod_estate(home)
    hosts = LocalHosts(home / "lab" / "hosts")

    def ctx() -> RunContext:
        return RunContext(
            estate=estate,
            region="emea",
            trade_date=day,
            prev_trade_date=None,
            ssh=hosts,
            http=None,
            notifier=None,
        )

    async def main() -> tuple[Any, Any]:
        async with running_venue(estate, FaultBook(home / "lab" / "faults.json")):
            first_ctx, second_ctx = ctx(), ctx()
            first = await run_declared(first_ctx, "eod", "fix_eod")
            second = await run_declared(second_ctx, "eod", "fix_eod")
            await first_ctx.close()
            await second_ctx.close()
            return first, second

    first, second = asyncio.run(main())
    return first, second, hosts


def test_end_of_day_twice_changes_then_not(home: Path) -> None:
    first, second, hosts = run_eod_twice(home, FRI)
    assert {o.target: o.status for o in first.outcomes} == dict.fromkeys(
        ("daily", "never", "sunday", "wednesday"), Status.CHANGED
    )
    by = {o.target: o for o in first.outcomes}
    assert "sequence numbers reset to 1" in by["daily"].detail
    assert "sequence numbers reset to 1" in by["sunday"].detail
    assert "store archived as *-20261127" in by["wednesday"].detail
    assert by["never"].evidence["store_after"]["seqnums"] == [3, 3]
    assert {o.status for o in second.outcomes} == {Status.OK}
    assert all(o.detail.startswith("already ended for the day") for o in second.outcomes)

    effects = EffectsLog(home / "lab" / "effects.jsonl")
    logouts = sorted(e.target for e in effects.read(kind="fix_logout"))
    assert logouts == ["daily", "never", "sunday", "wednesday"]  # once each, not twice
    assert sorted(e.target for e in effects.read(kind="fix_seq_reset")) == ["daily", "sunday"]
    # The sessions without a reset keep the day's store for the archive, once.
    assert len(hosts.commands("mv")) == len(hosts.commands("cp")) == 2
    kept = home / "lab" / "hosts" / "gw1" / "var" / "fix" / "store" / "never"
    assert {p.name for p in kept.iterdir()} >= {"messages.log-20261127", "seqnums-20261127"}


def test_a_session_without_a_store_host_fails_with_the_reason(home: Path) -> None:
    estate = eod_estate(home)
    no_gw = estate.model_copy(update={"hosts": {}})
    ctx = RunContext(
        estate=no_gw,
        region="emea",
        trade_date=FRI,
        prev_trade_date=None,
        ssh=LocalHosts(home),
        http=None,
        notifier=None,
    )
    result = asyncio.run(run_declared(ctx, "eod", "fix_eod"))
    assert {o.status for o in result.outcomes} == {Status.FAILED}
    assert "no gateway host with a fix_store_dir" in result.outcomes[0].detail
