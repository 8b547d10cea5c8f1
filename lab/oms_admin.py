"""The lab OMS's admin HTTP API: order status and the end-of-day cancel sweep.

Every lab OMS database whose ``oms.admin_url`` is ``http://address:port/<base>`` is
served there (one small HTTP/1.1 server per address:port)::

    GET  <base>/orders?trade_date=2026-11-27[&tif=DAY][&open=true]
    200  {"oms": "amer-oms", "trade_date": "2026-11-27", "orders": [
            {"order_id": "AMER-20261127-O0007", "status": "partially_filled", "tif": "DAY",
             "qty": 900, "cum_qty": 300, "leaves_qty": 600, ...}]}

    GET  <base>/orders/<order_id>
    200  {"order_id": ..., "status": ...}             404 for an unknown order

    POST <base>/cancel-sweep   {"trade_date": "2026-11-27", "tif": ["DAY"],
                                "request_id": "optional idempotency key"}
    200  {"trade_date": ..., "canceled": ["AMER-20261127-O0007"], "effects": ["eff-..."]}

A sweep cancels every open order of the date with one of the TIFs (default ``DAY``):
status ``canceled``, leaves 0. Each cancel is one ``oms_cancel`` line in the effects log
(``lab.effects``). An order already terminal is not touched, so a second sweep cancels
nothing; a sweep with a ``request_id`` seen before answers as the first time, with
``"replayed": true``, and changes nothing. A bad request is a 400 JSON naming the
problem; ``latency`` (``ms``) delays every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from openbell.lab import jsonhttp
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabError, require_loopback
from openbell.runbooks.schema import Estate

log = logging.getLogger(__name__)

SERVER = "lab-oms-admin/1"
OPEN = ("new", "partially_filled")
ORDER_COLUMNS = (
    "order_id",
    "trade_date",
    "account",
    "symbol",
    "side",
    "qty",
    "price",
    "tif",
    "expire_date",
    "status",
    "cum_qty",
    "leaves_qty",
    "updated_at",
)


class OmsAdmin:
    """The admin API of one OMS database."""

    def __init__(self, name: str, db_path: Path, effects: EffectsLog) -> None:
        self.name = name
        self.db_path = db_path
        self.effects = effects
        self._replies: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def orders(self, trade_date: str, tif: str | None, open_only: bool) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE trade_date = ?"  # noqa: S608
        args: list[Any] = [trade_date]
        if tif:
            sql += " AND tif = ?"
            args.append(tif)
        if open_only:
            sql += " AND status IN ('new', 'partially_filled')"
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as conn:
            rows = conn.execute(sql + " ORDER BY order_id", args).fetchall()
        return [dict(zip(ORDER_COLUMNS, r, strict=True)) for r in rows]

    def order(self, order_id: str) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE order_id = ?"  # noqa: S608
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as conn:
            row = conn.execute(sql, (order_id,)).fetchone()
        return dict(zip(ORDER_COLUMNS, row, strict=True)) if row else None

    def sweep(self, trade_date: str, tifs: list[str]) -> dict[str, Any]:
        """Cancel the open orders of the date with those TIFs, in one transaction."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        marks = ", ".join("?" for _ in tifs)
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as conn, conn:
            rows = conn.execute(
                f"SELECT order_id, leaves_qty, tif FROM orders WHERE trade_date = ? "  # noqa: S608
                f"AND tif IN ({marks}) AND status IN ('new', 'partially_filled') "
                "ORDER BY order_id",
                [trade_date, *tifs],
            ).fetchall()
            conn.executemany(
                "UPDATE orders SET status = 'canceled', leaves_qty = 0, updated_at = ? "
                "WHERE order_id = ? AND status IN ('new', 'partially_filled')",
                [(now, r[0]) for r in rows],
            )
        effects = [
            self.effects.record(
                "oms_cancel",
                self.name,
                key=f"{self.name}|{trade_date}|{order_id}",
                order_id=order_id,
                trade_date=trade_date,
                tif=tif,
                leaves_qty=leaves,
            ).id
            for order_id, leaves, tif in rows
        ]
        if rows:
            log.info("%s: sweep for %s canceled %d order(s)", self.name, trade_date, len(rows))
        return {
            "oms": self.name,
            "trade_date": trade_date,
            "canceled": [r[0] for r in rows],
            "effects": effects,
        }

    async def answer(
        self, method: str, rest: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON) for one request below this OMS's base path."""
        if rest == "/orders" and method == "GET":
            day = _date(query.get("trade_date", [""])[0])
            if day is None:
                return 400, {"error": "trade_date=YYYY-MM-DD is required"}
            tif = query["tif"][0] if query.get("tif") else None
            open_only = (query.get("open") or ["false"])[0].lower() in ("1", "true", "yes")
            rows = await asyncio.to_thread(self.orders, day, tif, open_only)
            return 200, {"oms": self.name, "trade_date": day, "orders": rows}
        if rest.startswith("/orders/") and method == "GET":
            found = await asyncio.to_thread(self.order, rest.removeprefix("/orders/"))
            if found is None:
                return 404, {"error": "unknown order", "order_id": rest.removeprefix("/orders/")}
            return 200, found
        if rest == "/cancel-sweep" and method == "POST":
            return await self._sweep(body)
        if rest in ("/orders", "/cancel-sweep") or rest.startswith("/orders/"):
            return 405, {"error": f"method {method} not allowed on {rest}"}
        return 404, {"error": "not found", "path": rest}

    async def _sweep(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        if not isinstance(doc, dict):
            return 400, {"error": "the body must be a JSON object"}
        day = _date(str(doc.get("trade_date", "")))
        if day is None:
            return 400, {"error": "trade_date (YYYY-MM-DD) is required"}
        tifs = doc.get("tif", ["DAY"])
        if not (isinstance(tifs, list) and tifs and all(t in ("DAY", "GTC", "GTD") for t in tifs)):
            return 400, {"error": "tif must be a non-empty list of DAY, GTC, GTD"}
        request_id = doc.get("request_id")
        async with self._lock:  # one sweep at a time per OMS
            if request_id and request_id in self._replies:
                return 200, {**self._replies[request_id], "replayed": True}
            result = await asyncio.to_thread(self.sweep, day, tifs)
            if request_id:
                self._replies[str(request_id)] = result
        return 200, result


class OmsAdminServers:
    """Every OMS admin API of an estate, grouped by the address:port serving it."""

    def __init__(self, estate: Estate, book: FaultBook, effects: EffectsLog) -> None:
        from openbell.lab.oms import sqlite_path

        self.book = book
        self.routes: dict[tuple[str, int], dict[str, OmsAdmin]] = {}
        for name, db in sorted(estate.databases.items()):
            if db.oms is None or not db.oms.admin_url:
                continue
            url = urlsplit(db.oms.admin_url)
            path = sqlite_path(db.url or "")
            if url.scheme != "http" or not url.hostname or not url.port or path is None:
                raise LabError(
                    f"databases.{name}.oms.admin_url: {db.oms.admin_url!r} must be "
                    "http://address:port/... on a sqlite:/// lab database"
                )
            require_loopback(url.hostname, f"databases.{name}.oms.admin_url")
            base = url.path.rstrip("/") or f"/oms/{name}"
            self.routes.setdefault((url.hostname, url.port), {})[base] = OmsAdmin(
                name, path, effects
            )
        self._servers: list[asyncio.Server] = []

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return sorted(self.routes)

    async def start(self) -> None:
        """Bind every server.

        Raises:
            LabError: an address:port cannot be bound.
        """
        self._servers = await jsonhttp.listen(self.routes, self._handle, "OMS admin", "bases")

    async def aclose(self) -> None:
        await jsonhttp.close(self._servers)

    async def _handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        bases: dict[str, OmsAdmin],
    ) -> None:
        try:
            method, target, body = await asyncio.wait_for(
                jsonhttp.read_request(reader), jsonhttp.READ_TIMEOUT_S
            )
            url = urlsplit(target)
            path = url.path.rstrip("/")
            code, doc = 404, {"error": "not found", "path": path, "known": sorted(bases)}
            for base, admin in bases.items():
                if path == base or path.startswith(base + "/"):
                    rest = path[len(base) :]
                    code, doc = await admin.answer(method, rest, parse_qs(url.query), body)
                    break
            delay = self.book.latency_s()
            if delay:
                await asyncio.sleep(delay)
            jsonhttp.write_response(writer, code, doc, server=SERVER)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("OMS admin request failed: %s", exc)
        except sqlite3.Error as exc:
            log.warning("OMS admin: database error: %s", exc)
            with contextlib.suppress(ConnectionError):
                jsonhttp.write_response(
                    writer, 503, {"error": f"database error: {exc}"}, server=SERVER
                )
                await writer.drain()
        finally:
            await jsonhttp.finish(writer)


def _date(text: str) -> str | None:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None
