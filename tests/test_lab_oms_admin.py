"""The lab OMS admin API over real HTTP: order status, cancel sweep, effects recorded once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

from openbell.lab import oms, trades
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import Fault, FaultBook
from openbell.lab.oms_admin import OmsAdminServers
from openbell.runbooks.loader import load_estate
from tests.fixtures.services import free_port

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
DAY = date(2026, 11, 27)


def _estate(tmp: Path, port: int) -> Any:
    estate = load_estate(LAB)
    db = estate.databases["amer-oms"]
    assert db.oms is not None
    cfg = db.oms.model_copy(update={"admin_url": f"http://127.0.0.1:{port}/oms/amer-oms"})
    amer = db.model_copy(update={"url": f"sqlite:///{tmp / 'oms.db'}", "oms": cfg})
    return estate.model_copy(update={"databases": {"amer-oms": amer}})


def _seed(path: Path, *, left_open: bool) -> trades.Day:
    start = [(f"AMER-{a}", "AAPL", 100) for a in ("PROP01", "MM02", "CLIENT03", "ARB04")]
    day = trades.generate_day(
        "amer-oms",
        DAY,
        oms.SYMBOLS["XNYS"],
        start,
        "XNYS",
        datetime(2026, 11, 27, 14, 30, tzinfo=UTC),
        datetime(2026, 11, 27, 18, tzinfo=UTC),
    )
    if left_open:
        day = trades.apply_breaks(day, [Fault("order_left_open", "amer-oms", {})], {}, {})
    # One good-till order still working, whatever the seed drew.
    gtc = next(i for i, o in enumerate(day.orders) if o.tif != "DAY")
    day.orders[gtc] = replace(day.orders[gtc], status="new", cum_qty=0)
    with sqlite3.connect(path) as conn:
        conn.executescript(trades.SCHEMA)
        trades.write_day(conn, day, "amer-dc")
    return day


def serve(tmp: Path, scenario: Callable[[str, EffectsLog], Awaitable[Any]]) -> Any:
    port = free_port()
    effects = EffectsLog(tmp / "effects.jsonl")
    servers = OmsAdminServers(_estate(tmp, port), FaultBook(tmp / "faults.json"), effects)

    async def main() -> Any:
        await servers.start()
        try:
            return await scenario(f"http://127.0.0.1:{port}/oms/amer-oms", effects)
        finally:
            await servers.aclose()

    return asyncio.run(main())


def test_status_then_sweep_cancels_open_day_orders_once(tmp_path: Path) -> None:
    day = _seed(tmp_path / "oms.db", left_open=True)
    reopened = next(o for o in day.orders if o.tif == "DAY" and o.status in trades.OPEN)

    async def scenario(base: str, effects: EffectsLog) -> None:
        async with httpx.AsyncClient() as http:
            got = (await http.get(f"{base}/orders", params={"trade_date": "2026-11-27"})).json()
            assert len(got["orders"]) == len(day.orders)
            opened = await http.get(
                f"{base}/orders", params={"trade_date": "2026-11-27", "open": "true"}
            )
            assert reopened.order_id in {o["order_id"] for o in opened.json()["orders"]}
            one = await http.get(f"{base}/orders/{reopened.order_id}")
            assert one.json()["leaves_qty"] == reopened.qty - reopened.cum_qty
            first = await http.post(f"{base}/cancel-sweep", json={"trade_date": "2026-11-27"})
            assert first.status_code == 200 and first.json()["canceled"] == [reopened.order_id]
            again = await http.post(f"{base}/cancel-sweep", json={"trade_date": "2026-11-27"})
            assert again.json()["canceled"] == []
            after = await http.get(f"{base}/orders/{reopened.order_id}")
            assert (after.json()["status"], after.json()["leaves_qty"]) == ("canceled", 0)
        cancels = effects.read(kind="oms_cancel")
        assert [e.key for e in cancels] == [f"amer-oms|2026-11-27|{reopened.order_id}"]
        assert first.json()["effects"] == [cancels[0].id]

    serve(tmp_path, scenario)


def test_gtc_and_gtd_orders_are_kept_by_a_day_sweep(tmp_path: Path) -> None:
    day = _seed(tmp_path / "oms.db", left_open=False)
    kept = {o.order_id for o in day.orders if o.tif != "DAY" and o.status in trades.OPEN}
    assert kept, "the seeded day should have open good-till orders"

    async def scenario(base: str, effects: EffectsLog) -> None:
        async with httpx.AsyncClient() as http:
            swept = await http.post(f"{base}/cancel-sweep", json={"trade_date": "2026-11-27"})
            assert swept.json()["canceled"] == []
            got = await http.get(f"{base}/orders", params={"trade_date": "2026-11-27", "open": "1"})
            assert {o["order_id"] for o in got.json()["orders"]} == kept
        assert effects.read() == []

    serve(tmp_path, scenario)


def test_a_replayed_request_id_answers_the_same_and_changes_nothing(tmp_path: Path) -> None:
    _seed(tmp_path / "oms.db", left_open=True)

    async def scenario(base: str, effects: EffectsLog) -> None:
        body = {"trade_date": "2026-11-27", "request_id": "eod|amer|2026-11-27|day_orders"}
        async with httpx.AsyncClient() as http:
            first = (await http.post(f"{base}/cancel-sweep", json=body)).json()
            second = (await http.post(f"{base}/cancel-sweep", json=body)).json()
        assert len(first["canceled"]) == 1
        assert second == {**first, "replayed": True}
        assert len(effects.read(kind="oms_cancel")) == 1

    serve(tmp_path, scenario)


def test_bad_requests_name_the_problem(tmp_path: Path) -> None:
    _seed(tmp_path / "oms.db", left_open=False)

    async def scenario(base: str, effects: EffectsLog) -> None:
        async with httpx.AsyncClient() as http:
            no_date = await http.get(f"{base}/orders")
            assert no_date.status_code == 400 and "trade_date" in no_date.json()["error"]
            bad_tif = await http.post(
                f"{base}/cancel-sweep", json={"trade_date": "2026-11-27", "tif": ["IOC"]}
            )
            assert bad_tif.status_code == 400 and "tif" in bad_tif.json()["error"]
            not_json = await http.post(f"{base}/cancel-sweep", content=b"{nope")
            assert not_json.status_code == 400
            unknown = await http.get(f"{base}/orders/NOPE")
            assert unknown.status_code == 404 and unknown.json()["order_id"] == "NOPE"
            wrong = await http.get(f"{base}/cancel-sweep")
            assert wrong.status_code == 405
            other = await http.get(base.replace("amer-oms", "mars-oms") + "/orders")
            assert other.status_code == 404 and "/oms/amer-oms" in other.json()["known"]

    serve(tmp_path, scenario)
