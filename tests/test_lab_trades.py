"""The lab's trading days: consistent sides, deterministic, breaks where asked and only there."""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from openbell.lab import oms, trades
from openbell.lab.faults import Fault
from openbell.lab.paths import LabPaths
from openbell.runbooks.loader import load_estate
from openbell.tasks.recon import Execution, reconcile, roll_positions

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
DAY = date(2026, 11, 27)
OPENS = datetime(2026, 11, 27, 14, 30, tzinfo=UTC)
CLOSES = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
UNIVERSE = oms.SYMBOLS["XNYS"]
START = [
    ("AMER-PROP01", "AAPL", 500),
    ("AMER-PROP01", "KO", -200),
    ("AMER-MM02", "MSFT", 1000),
    ("AMER-ARB04", "IBM", 0),
]


def day(db: str = "amer-oms", when: date = DAY) -> trades.Day:
    return trades.generate_day(db, when, UNIVERSE, START, "XNYS", OPENS, CLOSES)


def as_exec(fills: list[trades.Fill]) -> list[Execution]:
    return [Execution.from_row(f.__dict__) for f in fills]


def test_a_day_is_the_same_every_time_and_differs_by_date_and_oms() -> None:
    assert day() == day()
    assert day().fills != day(when=date(2026, 11, 25)).fills
    assert day().fills != day(db="emea-oms").fills


def test_every_side_agrees_and_positions_roll() -> None:
    d = day()
    assert d.fills and d.orders
    assert reconcile(
        {"oms": as_exec(d.fills), "drop_copy": as_exec(d.drop_copy), "venue": as_exec(d.venue)}
    ).ok
    end = [(a, s, q) for (a, s), q in d.end_positions.items()]
    assert roll_positions(START, as_exec(d.fills), end).ok


def test_orders_end_the_day_as_an_oms_would() -> None:
    d = day("amer-oms", date(2026, 11, 24))
    for o in d.orders:
        filled = sum(f.qty for f in d.fills if f.order_id == o.order_id)
        assert filled == o.cum_qty <= o.qty, o
        if o.tif == "DAY":
            assert o.status not in trades.OPEN and o.leaves_qty == 0, o
        if o.status == "filled":
            assert o.cum_qty == o.qty
    assert len({f.exec_id for f in d.fills}) == len(d.fills)
    assert all(f.exec_id.startswith("XNYS-20261124-E") for f in d.fills)


@pytest.mark.parametrize(
    ("kind", "side"),
    [
        ("missing_fill", "venue"),
        ("missing_fill", "oms"),
        ("qty_mismatch", "venue"),
        ("price_mismatch", "drop_copy"),
        ("duplicate_exec_id", "drop_copy"),
        ("duplicate_exec_id", "venue"),
    ],
)
def test_a_break_lands_on_its_side_only(kind: str, side: str) -> None:
    clean = day()
    lots = {s: lot for s, _, lot in UNIVERSE}
    ticks = {s: t for s, t, _ in UNIVERSE}
    broken = trades.apply_breaks(clean, [Fault(kind, "amer-oms", {"side": side})], lots, ticks)
    sides = {"oms": broken.fills, "drop_copy": broken.drop_copy, "venue": broken.venue}
    r = reconcile({n: as_exec(rows) for n, rows in sides.items()})
    want = {"missing_fill": "missing", "duplicate_exec_id": "duplicate"}.get(kind, kind)
    assert [(b.kind, b.side) for b in r.breaks] == [(want, side)]
    assert r.breaks[0].exec_id == clean.fills[trades.DEFAULT_INDEX[kind]].exec_id


def test_order_left_open_reopens_a_day_order() -> None:
    clean = day()
    broken = trades.apply_breaks(clean, [Fault("order_left_open", "amer-oms", {})], {}, {})
    opened = [o for o in broken.orders if o.tif == "DAY" and o.status in trades.OPEN]
    assert len(opened) == 1 and opened[0].leaves_qty == opened[0].qty - opened[0].cum_qty > 0
    assert broken.fills == clean.fills


def test_the_trade_file_is_csv_of_the_venue_side() -> None:
    d = day()
    rows = list(csv.DictReader(io.StringIO(trades.trade_file_text(d))))
    assert [r["exec_id"] for r in rows] == [f.exec_id for f in d.venue]
    assert {r["side"] for r in rows} <= {"B", "S"}
    assert rows[0]["trade_date"] == "2026-11-27"


def test_sync_writes_new_days_and_rewrites_only_days_whose_breaks_changed(tmp_path: Path) -> None:
    estate = load_estate(LAB)
    paths = LabPaths(tmp_path)
    db_path = tmp_path / "oms.db"
    db = estate.databases["amer-oms"].model_copy(update={"url": f"sqlite:///{db_path}"})
    with sqlite3.connect(db_path) as conn:
        conn.executescript(oms.SCHEMA)
        conn.executemany(
            "INSERT INTO positions VALUES (?, ?, ?, ?)", [(DAY.isoformat(), *p) for p in START]
        )
    info = trades.DayInfo(DAY, OPENS, CLOSES)
    book = trades.TradingDays(estate, "amer-oms", db, UNIVERSE, paths, [info])
    state: dict[str, str] = {}
    with sqlite3.connect(db_path) as conn:
        assert book.sync(conn, [], state) == 1
        assert book.sync(conn, [], state) == 0
        fault = Fault("missing_fill", "amer-oms", {"trade_date": DAY.isoformat()})
        assert book.sync(conn, [fault], state) == 1
        n_venue = conn.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
        assert book.sync(conn, [], state) == 1  # cleared: back to clean
    trade_file = paths.host_root("amer-gw1") / "var/venue/inbound/trades-20261127.csv"
    assert len(trade_file.read_text().splitlines()) == n_venue + 1  # header + every fill
    records = paths.host_root("amer-app1") / "var/oms/records/orders-20261127.jsonl"
    logs = sorted((paths.host_root("amer-app1") / "var/log").glob("*.log-20261127"))
    assert records.exists() and [p.name for p in logs] == [
        "amer-oms.log-20261127",
        "amer-refdata.log-20261127",
        "amer-risk.log-20261127",
    ]
    # Files archived and removed are not written again.
    records.unlink()
    with sqlite3.connect(db_path) as conn:
        book.sync(conn, [Fault("order_left_open", "amer-oms", {"trade_date": "2026-11-27"})], state)
    assert not records.exists()
