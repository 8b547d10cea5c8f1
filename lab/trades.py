"""A trading day in the lab: orders, fills, drop copy, the venue's trade file, positions.

For every recent session (``RECENT_DAYS`` back, up to today in the region) of each lab
OMS database, the day's trading is derived from a seed (database name and trade date),
so it is the same every time and on every machine:

- ``orders``: two to four per account; day orders (``DAY``) end terminal (filled,
  canceled, expired or done for day), good-till orders (``GTC``, ``GTD``) may stay open.
- ``fills``: one to three per order with a fill, with the venue's ExecID and OrderID;
  each is booked (``booked_at``) a few seconds after it happened.
- ``drop_copy``: the same executions as the drop-copy session reported them (side as
  FIX 54: ``1`` buy, ``2`` sell).
- ``eod_positions``: the day's start position (``positions``) plus the signed fills, per
  account and symbol.
- the venue's trade file: the same executions as CSV, dropped on the host the estate
  names in ``databases.<db>.oms.trade_file``.
- on the region's hosts, the files end of day archives: each app's rotated log of the
  day (``<log_dir>/<app>.log-YYYYMMDD``) and the OMS's order records
  (``<order_records_dir>/orders-YYYYMMDD.jsonl``), written once per host and day (a
  marker under ``.lab/seeded/`` remembers), so files archived and removed stay removed.

Breaks, as lab faults on a database (params ``trade_date``, default the last session
that has closed; ``side`` one of ``oms``, ``drop_copy``, ``venue``; ``index``, which
fill of the day, so that several breaks hit different fills):

===================== =========== ===========================================
kind                  side        effect on that side
===================== =========== ===========================================
missing_fill          venue       the fill is not there
qty_mismatch          venue       quantity off by ``delta`` (default one lot)
price_mismatch        drop_copy   price off by ``ticks`` ticks (default 1)
duplicate_exec_id     drop_copy   the ExecID appears twice
order_left_open       (OMS)       a day order stays open after the close
===================== =========== ===========================================

A day is rewritten from its seed only when the set of breaks on it changes, so a cancel
made through the admin API stays made while its fault is in force.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from openbell.lab.faults import Fault
from openbell.lab.paths import LabPaths
from openbell.runbooks.schema import Database, Estate

log = logging.getLogger(__name__)

RECENT_DAYS = 40
BREAKS = ("missing_fill", "qty_mismatch", "price_mismatch", "duplicate_exec_id")
DEFAULT_SIDE = {
    "missing_fill": "venue",
    "qty_mismatch": "venue",
    "price_mismatch": "drop_copy",
    "duplicate_exec_id": "drop_copy",
}
DEFAULT_INDEX = {"missing_fill": 0, "qty_mismatch": 1, "price_mismatch": 2, "duplicate_exec_id": 3}
SIDES = ("oms", "drop_copy", "venue")
OPEN = ("new", "partially_filled")
TRADE_FILE_COLUMNS = [
    "trade_date",
    "exec_id",
    "order_id",
    "account",
    "symbol",
    "side",
    "qty",
    "price",
    "transact_time",
]
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders(order_id TEXT PRIMARY KEY, trade_date TEXT, account TEXT,
    symbol TEXT, side TEXT, qty INTEGER, price REAL, tif TEXT, expire_date TEXT, status TEXT,
    cum_qty INTEGER, leaves_qty INTEGER, updated_at TEXT);
CREATE TABLE IF NOT EXISTS fills(id INTEGER PRIMARY KEY, exec_id TEXT, order_id TEXT,
    trade_date TEXT, account TEXT, symbol TEXT, side TEXT, qty INTEGER, price REAL,
    transact_time TEXT, booked_at TEXT);
CREATE TABLE IF NOT EXISTS drop_copy(id INTEGER PRIMARY KEY, exec_id TEXT, order_id TEXT,
    trade_date TEXT, account TEXT, symbol TEXT, side TEXT, qty INTEGER, price REAL,
    transact_time TEXT, session TEXT);
CREATE TABLE IF NOT EXISTS eod_positions(trade_date TEXT, account TEXT, symbol TEXT,
    qty INTEGER);
CREATE INDEX IF NOT EXISTS orders_by_date ON orders(trade_date);
CREATE INDEX IF NOT EXISTS fills_by_date ON fills(trade_date);
CREATE INDEX IF NOT EXISTS drop_copy_by_date ON drop_copy(trade_date);
CREATE INDEX IF NOT EXISTS eod_positions_by_date ON eod_positions(trade_date);
"""


@dataclass(frozen=True)
class Order:
    order_id: str
    account: str
    symbol: str
    side: str  # BUY | SELL
    qty: int
    price: float
    tif: str  # DAY | GTC | GTD
    expire_date: str | None
    status: str
    cum_qty: int
    updated_at: str

    @property
    def leaves_qty(self) -> int:
        return self.qty - self.cum_qty if self.status in OPEN else 0


@dataclass(frozen=True)
class Fill:
    exec_id: str
    order_id: str
    account: str
    symbol: str
    side: str  # BUY | SELL
    qty: int
    price: float
    transact_time: str
    booked_at: str | None

    def times(self) -> tuple[str, str | None]:
        return self.transact_time, self.booked_at

    def as_drop_copy(self, iso: str) -> tuple[Any, ...]:
        """The leading columns of a drop_copy row (side as FIX 54)."""
        return (
            self.exec_id,
            self.order_id,
            iso,
            self.account,
            self.symbol,
            fix_side(self.side),
            self.qty,
            self.price,
        )


@dataclass
class Day:
    """One trade date of one OMS, as each side sees it."""

    db: str
    day: date
    orders: list[Order]
    fills: list[Fill]
    drop_copy: list[Fill]
    venue: list[Fill]
    end_positions: dict[tuple[str, str], int] = field(default_factory=dict)


# ---- the day from its seed ------------------------------------------------------------------
def base_price(symbol: str) -> float:
    """A symbol's reference price, the same everywhere (20 to 500)."""
    return 20.0 + int(hashlib.sha256(symbol.encode()).hexdigest()[:6], 16) % 481


def generate_day(
    db: str,
    day: date,
    universe: list[tuple[str, float, int]],
    start: list[tuple[str, str, int]],
    venue_code: str,
    opens: datetime,
    closes: datetime,
) -> Day:
    """The day's orders and fills from their seed, with every side in agreement.

    Args:
        db: the database name (part of the seed and of the ids).
        day: the trade date.
        universe: (symbol, tick size, lot size) the region trades.
        start: the day's start positions (account, symbol, qty).
        venue_code: the primary calendar code, prefix of ExecIDs.
        opens: the session's open (aware).
        closes: the session's close (aware).
    """
    rng = random.Random(f"{db}|{day.isoformat()}|trading")
    prefix = db.split("-")[0].upper()
    ymd = day.strftime("%Y%m%d")
    ticks = {s: t for s, t, _ in universe}
    lots = {s: lot for s, _, lot in universe}
    span = max(60, int((closes - opens).total_seconds()))
    orders: list[Order] = []
    fills: list[Fill] = []
    for account in sorted({a for a, _, _ in start}):
        held = sorted(s for a, s, _ in start if a == account and s in ticks)
        for _ in range(rng.randint(2, 4)):
            symbol = rng.choice(held) if held and rng.random() < 0.7 else rng.choice(universe)[0]
            tick, lot = ticks[symbol], lots[symbol]
            side = rng.choice(["BUY", "SELL"])
            qty = lot * rng.randint(1, 20)
            price_ticks = round(base_price(symbol) * (1 + rng.uniform(-0.02, 0.02)) / tick)
            tif = rng.choices(["DAY", "GTC", "GTD"], weights=[70, 15, 15])[0]
            cum, status = _outcome(rng, tif, qty, lot)
            n = len(orders) + 1
            order_id = f"{prefix}-{ymd}-O{n:04d}"
            at = opens + timedelta(seconds=rng.randint(0, span - 1))
            done_at = closes if tif == "DAY" and status != "filled" else at
            orders.append(
                Order(
                    order_id=order_id,
                    account=account,
                    symbol=symbol,
                    side=side,
                    qty=qty,
                    price=_price(price_ticks, tick),
                    tif=tif,
                    expire_date=(day + timedelta(days=7)).isoformat() if tif == "GTD" else None,
                    status=status,
                    cum_qty=cum,
                    updated_at=_iso(done_at),
                )
            )
            for part in _split(rng, cum, lot):
                improve = rng.randint(0, 2) * (-1 if side == "BUY" else 1)
                when = at + timedelta(seconds=rng.randint(1, 900))
                fills.append(
                    Fill(
                        exec_id=f"{venue_code}-{ymd}-E{len(fills) + 1:05d}",
                        order_id=order_id,
                        account=account,
                        symbol=symbol,
                        side=side,
                        qty=part,
                        price=_price(price_ticks + improve, tick),
                        transact_time=_iso(when),
                        booked_at=_iso(when + timedelta(seconds=rng.randint(1, 5))),
                    )
                )
    return Day(
        db=db,
        day=day,
        orders=orders,
        fills=fills,
        drop_copy=list(fills),
        venue=list(fills),
        end_positions=roll(start, fills),
    )


def roll(
    start: Iterable[tuple[str, str, int]], fills: Iterable[Fill]
) -> dict[tuple[str, str], int]:
    """End positions: start plus bought minus sold, per (account, symbol)."""
    out: dict[tuple[str, str], int] = {}
    for account, symbol, qty in start:
        out[(account, symbol)] = out.get((account, symbol), 0) + qty
    for f in fills:
        signed = f.qty if f.side == "BUY" else -f.qty
        out[(f.account, f.symbol)] = out.get((f.account, f.symbol), 0) + signed
    return out


def _outcome(rng: random.Random, tif: str, qty: int, lot: int) -> tuple[int, str]:
    """(cum qty, status) at the end of the day."""
    partial = lot * rng.randint(1, max(1, qty // lot - 1)) if qty > lot else 0
    if tif == "DAY":
        status = rng.choices(
            ["filled", "done_for_day", "canceled", "canceled_unfilled", "expired"],
            weights=[50, 20, 10, 10, 10],
        )[0]
        if status == "filled":
            return qty, "filled"
        if status in ("canceled_unfilled", "expired"):
            return 0, status.removesuffix("_unfilled")
        return partial, status
    status = rng.choices(["filled", "partially_filled", "new"], weights=[30, 35, 35])[0]
    if status == "filled":
        return qty, "filled"
    if status == "partially_filled" and partial:
        return partial, "partially_filled"
    return 0, "new"


def _split(rng: random.Random, cum: int, lot: int) -> list[int]:
    lots = cum // lot
    if lots <= 0:
        return []
    parts = min(lots, rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, lots), parts - 1)) if parts > 1 else []
    edges = [0, *cuts, lots]
    return [(b - a) * lot for a, b in itertools.pairwise(edges)]


def _price(ticks: int, tick: float) -> float:
    return round(ticks * tick, 6)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ---- breaks -----------------------------------------------------------------------------------
def apply_breaks(
    day: Day, faults: list[Fault], lots: dict[str, int], ticks: dict[str, float]
) -> Day:
    """The day with the given breaks applied (``faults`` are those for this day)."""
    sides: dict[str, list[Fill]] = {
        "oms": list(day.fills),
        "drop_copy": list(day.drop_copy),
        "venue": list(day.venue),
    }
    orders = list(day.orders)
    for f in sorted(faults, key=lambda f: (f.kind, json.dumps(f.params, sort_keys=True))):
        if f.kind == "order_left_open":
            orders = _left_open(orders, int(f.params.get("index", 0)))
            continue
        side = str(f.params.get("side", DEFAULT_SIDE[f.kind]))
        if side not in SIDES or not day.fills:
            continue
        index = int(f.params.get("index", DEFAULT_INDEX[f.kind])) % len(day.fills)
        exec_id = day.fills[index].exec_id
        rows = sides[side]
        at = next((i for i, r in enumerate(rows) if r.exec_id == exec_id), None)
        if at is None:
            continue
        row = rows[at]
        if f.kind == "missing_fill":
            del rows[at]
        elif f.kind == "qty_mismatch":
            rows[at] = replace(row, qty=row.qty + int(f.params.get("delta", lots[row.symbol])))
        elif f.kind == "price_mismatch":
            moved = row.price + int(f.params.get("ticks", 1)) * ticks[row.symbol]
            rows[at] = replace(row, price=round(moved, 6))
        elif f.kind == "duplicate_exec_id":
            rows.insert(at + 1, row)
    return replace(
        day, orders=orders, fills=sides["oms"], drop_copy=sides["drop_copy"], venue=sides["venue"]
    )


def _left_open(orders: list[Order], index: int) -> list[Order]:
    """Re-open the index-th day order that did not fill completely."""
    candidates = [i for i, o in enumerate(orders) if o.tif == "DAY" and o.cum_qty < o.qty]
    candidates = candidates or [i for i, o in enumerate(orders) if o.tif == "DAY"]
    if not candidates:
        return orders
    at = candidates[index % len(candidates)]
    o = orders[at]
    status = "partially_filled" if o.cum_qty else "new"
    out = list(orders)
    out[at] = replace(o, status=status)
    return out


def breaks_for(faults: list[Fault], db: str, day: str) -> list[Fault]:
    """The trade breaks of ``faults`` that fall on (db, day); no trade_date = the default."""
    return [
        f
        for f in faults
        if f.kind in (*BREAKS, "order_left_open")
        and f.target in (db, "*")
        and str(f.params.get("trade_date", "")) == day
    ]


def fingerprint(faults: list[Fault]) -> str:
    """A stable summary of a day's breaks: the day is rewritten when it changes."""
    items = sorted(json.dumps(f.to_json(), sort_keys=True) for f in faults)
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16] if items else ""


# ---- writing a day ------------------------------------------------------------------------------
def write_day(conn: sqlite3.Connection, day: Day, session: str) -> None:
    """Replace the day's rows in the OMS database."""
    iso = day.day.isoformat()
    for table in ("orders", "fills", "drop_copy", "eod_positions"):
        conn.execute(f"DELETE FROM {table} WHERE trade_date = ?", (iso,))  # noqa: S608
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                o.order_id,
                iso,
                o.account,
                o.symbol,
                o.side,
                o.qty,
                o.price,
                o.tif,
                o.expire_date,
                o.status,
                o.cum_qty,
                o.leaves_qty,
                o.updated_at,
            )
            for o in day.orders
        ],
    )
    conn.executemany(
        "INSERT INTO fills(exec_id, order_id, trade_date, account, symbol, side, qty, price, "
        "transact_time, booked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (f.exec_id, f.order_id, iso, f.account, f.symbol, f.side, f.qty, f.price, *f.times())
            for f in day.fills
        ],
    )
    conn.executemany(
        "INSERT INTO drop_copy(exec_id, order_id, trade_date, account, symbol, side, qty, price, "
        "transact_time, session) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*f.as_drop_copy(iso), f.transact_time, session) for f in day.drop_copy],
    )
    conn.executemany(
        "INSERT INTO eod_positions VALUES (?, ?, ?, ?)",
        [(iso, a, s, q) for (a, s), q in sorted(day.end_positions.items())],
    )


def fix_side(side: str) -> str:
    """BUY/SELL as FIX Side (54)."""
    return "1" if side == "BUY" else "2"


def trade_file_text(day: Day) -> str:
    """The venue's trade file: a CSV header and one row per execution."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TRADE_FILE_COLUMNS)
    for f in day.venue:
        writer.writerow(
            [
                day.day.isoformat(),
                f.exec_id,
                f.order_id,
                f.account,
                f.symbol,
                "B" if f.side == "BUY" else "S",
                f.qty,
                _decimal_text(f.price),
                f.transact_time,
            ]
        )
    return out.getvalue()


def order_records_text(day: Day) -> str:
    """The OMS's order record journal of the day: one JSON line per order and per fill."""
    lines = [json.dumps({"type": "order", **o.__dict__}, sort_keys=True) for o in day.orders]
    lines += [json.dumps({"type": "fill", **f.__dict__}, sort_keys=True) for f in day.fills]
    return "\n".join(lines) + "\n"


def _decimal_text(price: float) -> str:
    text = f"{price:.6f}".rstrip("0").rstrip(".")
    return text or "0"


# ---- the lab's side: seeding recent days and following the faults ---------------------------
@dataclass(frozen=True)
class DayInfo:
    day: date
    opens: datetime
    closes: datetime


def recent_sessions(cal: Any, timezone: str, today: date | None = None) -> list[DayInfo]:
    """Sessions of a calendar from ``RECENT_DAYS`` back to today (region time)."""
    local_today = today or datetime.now(ZoneInfo(timezone)).date()
    start = local_today - timedelta(days=RECENT_DAYS)
    out = []
    for s in cal.sessions:
        d = s.date()
        if start <= d <= local_today:
            opens = cal.session_open(s).to_pydatetime()
            closes = cal.session_close(s).to_pydatetime()
            out.append(DayInfo(d, opens, closes))
    return out


def last_closed_session(days: list[DayInfo], now: datetime | None = None) -> date | None:
    """The last of ``days`` whose close has passed."""
    now = now or datetime.now(UTC)
    closed = [d.day for d in days if d.closes <= now]
    return closed[-1] if closed else None


class TradingDays:
    """The recent trading of one lab OMS database: its rows, trade files and host files."""

    def __init__(
        self,
        estate: Estate,
        name: str,
        db: Database,
        universe: list[tuple[str, float, int]],
        paths: LabPaths,
        days: list[DayInfo],
    ) -> None:
        self.estate = estate
        self.name = name
        self.db = db
        self.universe = universe
        self.paths = paths
        self.days = days
        self.region = estate.region(db.region)
        self.lots = {s: lot for s, _, lot in universe}
        self.ticks = {s: t for s, t, _ in universe}
        sessions = estate.fix_sessions_in(db.region)
        self.drop_copy_session = next(
            (n for n, s in sorted(sessions.items()) if s.kind == "drop_copy"), ""
        )

    def canonical(self, conn: sqlite3.Connection, info: DayInfo) -> Day:
        iso = info.day.isoformat()
        start = [
            (a, s, q)
            for a, s, q in conn.execute(
                "SELECT account, symbol, qty FROM positions WHERE trade_date = ?", (iso,)
            )
        ]
        return generate_day(
            self.name,
            info.day,
            self.universe,
            start,
            self.region.primary_calendar,
            info.opens,
            info.closes,
        )

    def day(self, conn: sqlite3.Connection, info: DayInfo, breaks: list[Fault]) -> Day:
        """The day with its breaks."""
        return apply_breaks(self.canonical(conn, info), breaks, self.lots, self.ticks)

    def sync(self, conn: sqlite3.Connection, faults: list[Fault], state: dict[str, str]) -> int:
        """Write new days and the days whose breaks changed; returns how many were written.

        ``state`` (date -> breaks fingerprint) is updated in place.
        """
        conn.executescript(SCHEMA)
        have = {r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM orders")}
        default_day = last_closed_session(self.days)
        faults = [_with_default_day(f, default_day) for f in faults]
        written = 0
        now = datetime.now(UTC)
        for info in self.days:
            iso = info.day.isoformat()
            mine = breaks_for(faults, self.name, iso)
            mark = fingerprint(mine)
            fresh = iso not in have
            if not fresh and state.get(iso, "") == mark:
                if self._trade_file_missing(info, now):
                    self._write_trade_file(self.day(conn, info, mine), info, now)
                self._seed_host_files(info, None, now)
                continue
            day = self.day(conn, info, mine)
            write_day(conn, day, self.drop_copy_session)
            self._write_trade_file(day, info, now)
            self._seed_host_files(info, day, now)
            state[iso] = mark
            written += 1
        return written

    # ---- files on the hosts ------------------------------------------------------------------
    def _trade_file_missing(self, info: DayInfo, now: datetime) -> bool:
        tf = self.db.oms.trade_file if self.db.oms else None
        if tf is None or info.closes > now:
            return False
        return not (self.paths.host_root(tf.host) / tf.path_for(info.day)).exists()

    def _write_trade_file(self, day: Day, info: DayInfo, now: datetime) -> None:
        tf = self.db.oms.trade_file if self.db.oms else None
        if tf is None or info.closes > now:
            return  # the venue sends its file after the close
        target = self.paths.host_root(tf.host) / tf.path_for(info.day)
        _write(target, trade_file_text(day))

    def _seed_host_files(self, info: DayInfo, day: Day | None, now: datetime) -> None:
        """The day's rotated logs and order records, once per host (a marker remembers)."""
        local_today = now.astimezone(ZoneInfo(self.region.timezone)).date()
        if info.day >= local_today:
            return  # today's logs are still being written
        ymd = info.day.strftime("%Y%m%d")
        for host_name, host in sorted(self.estate.hosts_in(self.db.region).items()):
            root = self.paths.host_root(host_name)
            marker = root / ".lab" / "seeded" / f"{self.name}-{ymd}"
            if marker.exists():
                continue
            if host.log_dir:
                apps = sorted(a for a, spec in self.estate.apps.items() if host_name in spec.hosts)
                for app in apps:
                    text = _log_text(app, info)
                    _write(root / host.log_dir / f"{app}.log-{ymd}", text, keep=True)
            if host.order_records_dir:
                records = day or self._clean_day(info)
                text = order_records_text(records)
                _write(root / host.order_records_dir / f"orders-{ymd}.jsonl", text, keep=True)
            _write(marker, f"{_iso(now)}\n")

    def _clean_day(self, info: DayInfo) -> Day:
        from openbell.lab.oms import sqlite_path

        path = sqlite_path(self.db.url or "")
        assert path is not None
        with sqlite3.connect(path) as conn:
            return self.canonical(conn, info)


def _with_default_day(f: Fault, default: date | None) -> Fault:
    if f.kind not in (*BREAKS, "order_left_open") or f.params.get("trade_date"):
        return f
    params = {**f.params, "trade_date": default.isoformat() if default else ""}
    return Fault(f.kind, f.target, params)


def _log_text(app: str, info: DayInfo) -> str:
    lines = [
        f"{_iso(info.opens - timedelta(hours=1))} INFO {app}: started",
        f"{_iso(info.opens)} INFO {app}: market open",
        f"{_iso(info.closes)} INFO {app}: market close",
        f"{_iso(info.closes + timedelta(minutes=5))} INFO {app}: end of day",
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, *, keep: bool = False) -> None:
    """Write atomically; with ``keep``, leave an existing file alone."""
    if keep and path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
