"""The lab's OMS databases: the estate's own SQL checks pass; missing_refdata bites."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import exchange_calendars as xcals
import pytest

from openbell.lab import oms
from openbell.lab.faults import FaultBook
from openbell.lab.supervisor import wait_faults_applied
from openbell.runbooks.schema import Database, Estate

pytestmark = pytest.mark.integration


def _sessions(estate: Estate, db: Database, ahead: int = 0) -> tuple[str, str]:
    """(trade_date, prev_trade_date): the region's current session, ``ahead`` sessions on."""
    region = estate.region(db.region)
    cal = xcals.get_calendar(region.primary_calendar)
    day = cal.date_to_session(oms.current_session(region).isoformat(), direction="next")
    for _ in range(ahead):
        day = cal.next_session(day)
    return day.date().isoformat(), cal.previous_session(day).date().isoformat()


def _run_checks(db: Database, trade_date: str, prev: str) -> dict[str, Any]:
    path = oms.sqlite_path(db.url or "")
    assert path is not None
    params = {"trade_date": trade_date, "prev_trade_date": prev}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {c.name: conn.execute(c.sql, params).fetchone()[0] for c in db.checks}


def _failing(db: Database, values: dict[str, Any]) -> dict[str, Any]:
    return {c.name: values[c.name] for c in db.checks if not c.expect.holds(values[c.name])}


@pytest.mark.parametrize("ahead", [0, 1, 5])
def test_every_check_passes_on_a_healthy_lab(lab_estate: tuple[Path, Estate], ahead: int) -> None:
    _, estate = lab_estate
    assert estate.databases
    for name, db in estate.databases.items():
        values = _run_checks(db, *_sessions(estate, db, ahead))
        assert _failing(db, values) == {}, name
        assert values["refdata_loaded"] >= 8 and values["positions_loaded"] >= 4


def test_symbols_are_the_regions_venues(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    db = next(d for d in estate.databases.values() if d.region == "emea")
    path = oms.sqlite_path(db.url or "")
    day, _ = _sessions(estate, db)
    with sqlite3.connect(path) as conn:  # type: ignore[arg-type]
        symbols = {
            r[0]
            for r in conn.execute("SELECT symbol FROM instruments WHERE trade_date = ?", (day,))
        }
        inactive = conn.execute("SELECT COUNT(*) FROM algos WHERE active = 0").fetchone()[0]
    assert {"VOD.L", "SAP.DE"} <= symbols
    assert inactive == 1  # an inactive algo without controls must not fail the controls check


def test_missing_refdata_fault_removes_and_restores_the_rows(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name, db = next(iter(estate.databases.items()))
    today, prev = _sessions(estate, db)
    healthy = _run_checks(db, today, prev)

    lab_faults.add("missing_refdata", name)
    assert wait_faults_applied()
    broken = _run_checks(db, today, prev)
    assert broken["refdata_loaded"] == 0
    assert set(_failing(db, broken)) == {"refdata_loaded", "refdata_vs_previous_day_pct"}
    assert _run_checks(db, prev, prev)["refdata_loaded"] == healthy["refdata_loaded"]

    lab_faults.remove("missing_refdata", name)
    assert wait_faults_applied()
    assert _run_checks(db, today, prev) == healthy


def test_missing_refdata_for_a_chosen_date(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name, db = next(iter(estate.databases.items()))
    later, before = _sessions(estate, db, ahead=3)
    lab_faults.add("missing_refdata", name, trade_date=later)
    assert wait_faults_applied()
    assert _run_checks(db, later, before)["refdata_loaded"] == 0
    assert _failing(db, _run_checks(db, *_sessions(estate, db))) == {}


def test_seeding_again_changes_nothing(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    oms.seed(estate)  # up to today: the session's lab may have started before midnight
    counts = _row_counts(estate)
    oms.seed(estate)
    assert _row_counts(estate) == counts


def test_sqlite_path() -> None:
    assert oms.sqlite_path("sqlite:////tmp/x/oms.db") == Path("/tmp/x/oms.db")
    assert oms.sqlite_path("sqlite:///rel.db?mode=ro") == Path("rel.db")
    assert oms.sqlite_path("postgresql://db/oms") is None
    assert oms.sqlite_path("sqlite:///:memory:") is None


def test_current_session_skips_holidays(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    amer = estate.region("amer")
    assert oms.current_session(amer, date(2026, 11, 26)) == date(2026, 11, 27)  # Thanksgiving
    assert oms.current_session(amer, date(2026, 11, 28)) == date(2026, 11, 30)  # Saturday


def _row_counts(estate: Estate) -> dict[str, tuple[int, ...]]:
    tables = ["instruments", "positions", "limits", "algos", "pretrade_controls", "batch_jobs"]
    out = {}
    for name, path in oms.lab_databases(estate).items():
        with sqlite3.connect(path) as conn:
            out[name] = tuple(
                conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables
            )
    return out


def _recent_closed_session(estate: Estate, db: Database) -> str:
    from openbell.lab import trades

    region = estate.region(db.region)
    local = oms.current_session(region)
    days = trades.recent_sessions(oms._calendar(region.primary_calendar, local), region.timezone)
    last = trades.last_closed_session(days)
    assert last is not None
    return last.isoformat()


def test_recent_sessions_trade_and_every_side_agrees(lab_estate: tuple[Path, Estate]) -> None:
    from openbell.tasks.recon import Execution, reconcile, roll_positions

    _, estate = lab_estate
    for name, db in estate.oms_in("amer").items():
        day = _recent_closed_session(estate, db)
        path = oms.sqlite_path(db.url or "")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            q = {"trade_date": day}
            fills = [Execution.from_row(dict(r)) for r in conn.execute(_q(db, "fills"), q)]
            drop = [Execution.from_row(dict(r)) for r in conn.execute(_q(db, "drop_copy"), q)]
            start = [tuple(r) for r in conn.execute(_q(db, "start_positions"), q)]
            end = [tuple(r) for r in conn.execute(_q(db, "end_positions"), q)]
            unbooked = conn.execute(_q(db, "unbooked_fills"), q).fetchall()
        assert fills and not unbooked, name
        assert reconcile({"oms": fills, "drop_copy": drop}).ok
        assert roll_positions(start, fills, end).ok  # type: ignore[arg-type]


def test_a_trade_break_is_applied_and_undone(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name, db = next(iter(estate.oms_in("emea").items()))
    day = _recent_closed_session(estate, db)
    path = oms.sqlite_path(db.url or "")

    def drop_copy_rows() -> int:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            sql = "SELECT COUNT(*) FROM drop_copy WHERE trade_date = ?"
            return int(conn.execute(sql, (day,)).fetchone()[0])

    clean = drop_copy_rows()
    lab_faults.add("duplicate_exec_id", name)  # default: the last closed session
    assert wait_faults_applied()
    assert drop_copy_rows() == clean + 1
    lab_faults.remove("duplicate_exec_id", name)
    assert wait_faults_applied()
    assert drop_copy_rows() == clean


def _q(db: Database, name: str) -> str:
    assert db.oms is not None
    return str(getattr(db.oms.queries, name))
