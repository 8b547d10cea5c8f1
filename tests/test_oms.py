"""OMS end-of-day steps against a fake admin API and a real SQLite OMS: run twice, breaks."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from openbell import catalog
from openbell.lab import oms, trades
from openbell.lab.faults import Fault
from openbell.outcome import Status
from openbell.run import StepResult
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors.http import HttpClient
from openbell.tasks.context import RunContext
from openbell.tasks.oms import (
    check_fills_booked,
    check_positions_rolled,
    ensure_day_orders_terminal,
    parse_trade_file,
    reconcile_fills,
)
from tests.fixtures.localhosts import LocalHosts
from tests.fixtures.steps import run_declared

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
DAY = date(2026, 11, 27)
START = [(f"AMER-{a}", s, 100) for a in ("PROP01", "MM02", "CLIENT03") for s in ("AAPL", "KO")]


class FakeOmsAdmin:
    """The admin API's contract in memory: orders by id, a sweep that cancels open DAY ones."""

    def __init__(self, orders: list[dict[str, Any]]) -> None:
        self.orders = {o["order_id"]: dict(o) for o in orders}
        self.sweeps: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/orders"):
            rows = [
                o
                for o in self.orders.values()
                if request.url.params.get("open") != "true" or o["status"] in trades.OPEN
            ]
            return httpx.Response(200, json={"orders": rows})
        if request.method == "POST" and path.endswith("/cancel-sweep"):
            body = json.loads(request.content)
            self.sweeps.append(body)
            canceled = []
            for o in self.orders.values():
                if o["tif"] in body["tif"] and o["status"] in trades.OPEN:
                    o["status"], o["leaves_qty"] = "canceled", 0
                    canceled.append(o["order_id"])
            return httpx.Response(200, json={"canceled": canceled, "effects": []})
        return httpx.Response(404, json={"error": "not found"})


def estate_for(tmp: Path, *, sweep: bool = True) -> Estate:
    estate = load_estate(LAB)
    db = estate.databases["amer-oms"]
    assert db.oms is not None
    amer = db.model_copy(
        update={
            "url": f"sqlite:///{tmp / 'oms.db'}",
            "oms": db.oms.model_copy(update={"cancel_sweep": sweep}),
        }
    )
    return estate.model_copy(update={"databases": {"amer-oms": amer}})


def make_ctx(estate: Estate, ssh: Any = None, http: Callable[[], Any] | None = None) -> RunContext:
    return RunContext(
        estate=estate,
        region="amer",
        trade_date=DAY,
        prev_trade_date=None,
        ssh=ssh,
        http=http or HttpClient,
        notifier=None,
    )


def run(work: Any, ctx: RunContext) -> StepResult:
    """Run end of day's step whose work is ``work``."""
    (name,) = [s.name for s in catalog.get("eod").steps if s.run is work]

    async def go() -> StepResult:
        try:
            return await run_declared(ctx, "eod", name)
        finally:
            await ctx.close()

    return asyncio.run(go())


def seed(tmp: Path, hosts: LocalHosts, faults: list[Fault] | None = None) -> trades.Day:
    """A real lab OMS day in SQLite, and the venue's file on the gateway host."""
    universe = oms.SYMBOLS["XNYS"]
    day = trades.generate_day(
        "amer-oms",
        DAY,
        universe,
        START,
        "XNYS",
        datetime(2026, 11, 27, 14, 30, tzinfo=UTC),
        datetime(2026, 11, 27, 18, tzinfo=UTC),
    )
    lots = {s: lot for s, _, lot in universe}
    ticks = {s: t for s, t, _ in universe}
    broken = trades.apply_breaks(day, faults or [], lots, ticks)
    with sqlite3.connect(tmp / "oms.db") as conn:
        conn.executescript(oms.SCHEMA)
        conn.executemany(
            "INSERT INTO positions VALUES (?, ?, ?, ?)", [(DAY.isoformat(), *p) for p in START]
        )
        trades.write_day(conn, broken, "amer-dc")
    target = hosts.home("amer-gw1") / "var/venue/inbound/trades-20261127.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(trades.trade_file_text(broken))
    return day


# ---- day orders ------------------------------------------------------------------------------
ORDERS = [
    {"order_id": "O1", "tif": "DAY", "status": "partially_filled", "leaves_qty": 300},
    {"order_id": "O2", "tif": "DAY", "status": "filled", "leaves_qty": 0},
    {"order_id": "O3", "tif": "GTC", "status": "new", "leaves_qty": 100},
    {"order_id": "O4", "tif": "GTD", "status": "partially_filled", "leaves_qty": 50},
]


def test_day_orders_swept_once_then_ok_and_good_till_orders_kept(tmp_path: Path) -> None:
    admin = FakeOmsAdmin(ORDERS)
    transport = httpx.MockTransport(admin)
    estate = estate_for(tmp_path)

    def http() -> HttpClient:
        return HttpClient(transport=transport)

    first = run(ensure_day_orders_terminal, make_ctx(estate, http=http))
    (o,) = first.outcomes
    assert o.status == Status.CHANGED, o.detail
    assert "canceled 1 open day order(s) by cancel sweep: O1" in o.detail
    assert {k["order_id"] for k in o.evidence["kept_open"]} == {"O3", "O4"}
    (sweep,) = admin.sweeps
    assert sweep["trade_date"] == "2026-11-27" and sweep["tif"] == ["DAY"]
    assert len(sweep["request_id"]) == 64  # the idempotency key: a retried sweep cancels once
    second = run(ensure_day_orders_terminal, make_ctx(estate, http=http))
    assert [x.status for x in second.outcomes] == [Status.OK]
    assert "2 GTC/GTD order(s) kept open" in second.outcomes[0].detail
    assert len(admin.sweeps) == 1  # nothing to sweep the second time
    assert admin.orders["O3"]["status"] == "new"


def test_without_a_sweep_an_open_day_order_fails_by_name(tmp_path: Path) -> None:
    admin = FakeOmsAdmin(ORDERS)
    estate = estate_for(tmp_path, sweep=False)
    result = run(
        ensure_day_orders_terminal,
        make_ctx(estate, http=lambda: HttpClient(transport=httpx.MockTransport(admin))),
    )
    (o,) = result.outcomes
    assert o.status == Status.FAILED
    assert o.detail == "1 day order(s) still open: O1 (cancel_sweep is off for amer-oms)"
    assert admin.sweeps == []


def test_a_sweep_that_leaves_orders_open_fails(tmp_path: Path) -> None:
    class Stubborn(FakeOmsAdmin):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                return httpx.Response(200, json={"canceled": [], "effects": []})
            return super().__call__(request)

    result = run(
        ensure_day_orders_terminal,
        make_ctx(
            estate_for(tmp_path),
            http=lambda: HttpClient(transport=httpx.MockTransport(Stubborn(ORDERS))),
        ),
    )
    assert result.outcomes[0].status == Status.FAILED
    assert "still open: O1" in result.outcomes[0].detail


def test_an_admin_api_error_fails_naming_the_url(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="maintenance")

    result = run(
        ensure_day_orders_terminal,
        make_ctx(
            estate_for(tmp_path),
            http=lambda: HttpClient(transport=httpx.MockTransport(down), backoff_base_s=0.01),
        ),
    )
    o = result.outcomes[0]
    assert o.status == Status.FAILED
    assert "GET http://127.0.0.1:42510/oms/amer-oms/orders?trade_date=2026-11-27" in o.detail
    assert "503" in o.detail


# ---- fills, reconciliation, positions --------------------------------------------------------
def test_a_clean_day_passes_every_check(tmp_path: Path) -> None:
    hosts = LocalHosts(tmp_path / "hosts")
    day = seed(tmp_path, hosts)
    estate = estate_for(tmp_path)
    recon = run(reconcile_fills, make_ctx(estate, ssh=hosts))
    (o,) = recon.outcomes
    assert o.status == Status.OK, o.detail
    assert o.detail == f"{len(day.fills)} fills matched (oms vs drop_copy vs venue), no breaks"
    assert o.evidence["trade_file"]["host"] == "amer-gw1"
    assert len(o.evidence["trade_file"]["sha256"]) == 64
    booked = run(check_fills_booked, make_ctx(estate))
    assert [x.status for x in booked.outcomes] == [Status.OK]
    rolled = run(check_positions_rolled, make_ctx(estate))
    assert [x.status for x in rolled.outcomes] == [Status.OK], rolled.outcomes[0].detail


@pytest.mark.parametrize(
    ("kind", "side", "words"),
    [
        ("missing_fill", "venue", "missing on venue"),
        ("qty_mismatch", "venue", "qty: oms"),
        ("price_mismatch", "drop_copy", "price: oms"),
        ("duplicate_exec_id", "drop_copy", "2 rows on drop_copy"),
    ],
)
def test_each_break_fails_reconciliation_and_is_listed(
    tmp_path: Path, kind: str, side: str, words: str
) -> None:
    hosts = LocalHosts(tmp_path / "hosts")
    day = seed(tmp_path, hosts, [Fault(kind, "amer-oms", {"side": side})])
    broken_exec = day.fills[trades.DEFAULT_INDEX[kind]].exec_id
    result = run(reconcile_fills, make_ctx(estate_for(tmp_path), ssh=hosts))
    summary, *breaks = result.outcomes
    assert summary.status == Status.FAILED and summary.target == "amer-oms"
    assert summary.detail.startswith("1 break(s)")
    (listed,) = summary.evidence["breaks"]
    assert listed["exec_id"] == broken_exec and listed["side"] == side
    (one,) = breaks
    assert one.target == f"amer-oms:{broken_exec}" and one.status == Status.FAILED
    assert words in one.detail


def test_an_oms_side_break_also_shows_in_positions_and_bookings(tmp_path: Path) -> None:
    hosts = LocalHosts(tmp_path / "hosts")
    seed(tmp_path, hosts, [Fault("qty_mismatch", "amer-oms", {"side": "oms", "delta": 7})])
    estate = estate_for(tmp_path)
    rolled = run(check_positions_rolled, make_ctx(estate))
    assert rolled.outcomes[0].status == Status.FAILED
    assert "1 of" in rolled.outcomes[0].detail and "bought" in rolled.outcomes[0].detail
    booked = run(check_fills_booked, make_ctx(estate))
    assert booked.outcomes[0].status == Status.FAILED
    assert "do not add up" in booked.outcomes[0].detail


def test_a_missing_trade_file_fails_naming_host_and_path(tmp_path: Path) -> None:
    hosts = LocalHosts(tmp_path / "hosts")
    seed(tmp_path, hosts)
    (hosts.home("amer-gw1") / "var/venue/inbound/trades-20261127.csv").unlink()
    result = run(reconcile_fills, make_ctx(estate_for(tmp_path), ssh=hosts))
    (o,) = result.outcomes
    assert o.status == Status.FAILED and "trades-20261127.csv" in o.detail


def test_parse_trade_file_names_the_line_of_a_bad_row() -> None:
    good = "exec_id,order_id,symbol,side,qty,price\nE1,O1,KO,B,5,1.5\n"
    assert [e.exec_id for e in parse_trade_file(good, "t.csv")] == ["E1"]
    with pytest.raises(ValueError, match=r"t.csv: line 3: side 'X'"):
        parse_trade_file(good + "E2,O1,KO,X,5,1.5\n", "t.csv")
    with pytest.raises(ValueError, match=r"t.csv: line 1: no column\(s\) price"):
        parse_trade_file("exec_id,order_id,symbol,side,qty\n", "t.csv")
