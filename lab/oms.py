"""The lab's OMS databases: SQLite files seeded for every recent session.

Every estate database whose URL is ``sqlite:///...`` gets the schema below and, for each
session of its region's primary calendar from about a year back to four months ahead,
instruments (per region venue), positions, limits, pre-trade controls for every active
algo and finished overnight batch jobs, so the estate's SQL checks pass for any recent
trade date. Seeding is idempotent and deterministic (same rows every time).

Recent sessions also get a day of trading (orders, fills, drop copy, end positions, the
venue's trade file and the files end of day archives): see :mod:`lab.trades`.

Fault ``missing_refdata`` (target: database name; params ``trade_date``, default the
region's current-or-next session) deletes that date's instruments; when the fault goes,
:func:`apply_faults` puts them back. The trade breaks (``missing_fill``,
``qty_mismatch``, ``price_mismatch``, ``duplicate_exec_id``, ``order_left_open``) are
applied the same way. The supervisor calls it whenever the fault file changes;
``python -m openbell.lab.oms --estate PATH`` does it by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from openbell.lab import trades
from openbell.lab.faults import Fault, FaultBook
from openbell.lab.paths import LabPaths
from openbell.runbooks.schema import Estate, Region

if TYPE_CHECKING:
    from exchange_calendars import ExchangeCalendar

log = logging.getLogger(__name__)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS instruments(trade_date TEXT, symbol TEXT, tick_size REAL,
                                       lot_size INTEGER, PRIMARY KEY(trade_date, symbol));
CREATE TABLE IF NOT EXISTS positions(trade_date TEXT, account TEXT, symbol TEXT, qty INTEGER);
CREATE TABLE IF NOT EXISTS limits(trade_date TEXT, account TEXT, max_order_value REAL,
                                  max_order_qty INTEGER, max_position INTEGER);
CREATE TABLE IF NOT EXISTS algos(name TEXT PRIMARY KEY, active INTEGER);
CREATE TABLE IF NOT EXISTS pretrade_controls(trade_date TEXT, algo TEXT, price_collar_pct REAL,
                                             max_order_value REAL, max_order_qty INTEGER,
                                             max_msgs_per_s INTEGER, armed INTEGER);
CREATE TABLE IF NOT EXISTS batch_jobs(trade_date TEXT, name TEXT, status TEXT, finished_at TEXT);
CREATE INDEX IF NOT EXISTS positions_by_date ON positions(trade_date);
CREATE INDEX IF NOT EXISTS limits_by_date ON limits(trade_date);
CREATE INDEX IF NOT EXISTS controls_by_date ON pretrade_controls(trade_date);
CREATE INDEX IF NOT EXISTS batch_by_date ON batch_jobs(trade_date);
"""
    + trades.SCHEMA
)

#: (symbol, tick size, lot size) per venue calendar.
SYMBOLS: dict[str, list[tuple[str, float, int]]] = {
    "XTKS": [
        ("7203.T", 1.0, 100),
        ("6758.T", 1.0, 100),
        ("9984.T", 1.0, 100),
        ("8306.T", 0.5, 100),
        ("6861.T", 10.0, 100),
        ("9432.T", 0.1, 100),
        ("7974.T", 1.0, 100),
        ("8035.T", 5.0, 100),
    ],
    "XHKG": [
        ("0700.HK", 0.2, 100),
        ("0005.HK", 0.05, 400),
        ("1299.HK", 0.05, 200),
        ("0941.HK", 0.05, 500),
        ("9988.HK", 0.05, 100),
        ("0388.HK", 0.2, 100),
        ("2318.HK", 0.05, 500),
        ("3690.HK", 0.1, 100),
    ],
    "XLON": [
        ("VOD.L", 0.02, 1),
        ("HSBA.L", 0.1, 1),
        ("BP.L", 0.05, 1),
        ("AZN.L", 2.0, 1),
        ("SHEL.L", 0.5, 1),
        ("ULVR.L", 1.0, 1),
        ("GSK.L", 0.5, 1),
        ("RIO.L", 1.0, 1),
    ],
    "XETR": [
        ("SAP.DE", 0.02, 1),
        ("SIE.DE", 0.02, 1),
        ("ALV.DE", 0.05, 1),
        ("BAS.DE", 0.01, 1),
        ("DTE.DE", 0.005, 1),
        ("BMW.DE", 0.02, 1),
        ("MBG.DE", 0.01, 1),
        ("ADS.DE", 0.05, 1),
    ],
    "XNYS": [
        ("AAPL", 0.01, 100),
        ("MSFT", 0.01, 100),
        ("JPM", 0.01, 100),
        ("XOM", 0.01, 100),
        ("JNJ", 0.01, 100),
        ("V", 0.01, 100),
        ("PG", 0.01, 100),
        ("KO", 0.01, 100),
        ("BRK.B", 0.01, 100),
        ("UNH", 0.01, 100),
        ("HD", 0.01, 100),
        ("IBM", 0.01, 100),
    ],
    "XNAS": [("NVDA", 0.01, 100), ("AMZN", 0.01, 100), ("GOOGL", 0.01, 100), ("META", 0.01, 100)],
}
#: (name, active): the inactive one has no controls, which the checks must tolerate.
ALGOS = [
    ("vwap", 1),
    ("twap", 1),
    ("pov", 1),
    ("iceberg", 1),
    ("close-auction", 1),
    ("sniper-legacy", 0),
]
BATCH_JOBS = [
    "refdata-load",
    "corporate-actions",
    "positions-roll",
    "limits-load",
    "risk-var-overnight",
]
ACCOUNTS = ["PROP01", "MM02", "CLIENT03", "ARB04"]
DAYS_BACK = 400
DAYS_AHEAD = 120


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``sqlite:////abs`` is absolute), else None.

    Example:
        >>> sqlite_path("sqlite:////tmp/ob/oms.db")
        PosixPath('/tmp/ob/oms.db')
    """
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def lab_databases(estate: Estate) -> dict[str, Path]:
    """The estate's databases the lab can seed (plain SQLite URLs), by name."""
    found = {}
    for name, db in estate.databases.items():
        path = sqlite_path(db.url) if db.url else None
        if path is not None:
            found[name] = path
    return found


def seed(
    estate: Estate,
    *,
    today: date | None = None,
    paths: LabPaths | None = None,
    book: FaultBook | None = None,
) -> dict[str, Path]:
    """Create and fill every lab database (idempotent: a seeded session is left alone).

    Args:
        estate: the estate.
        today: the date the session window is centred on (default: today, UTC).
        paths: the lab's files (default: the settings' ``OPENBELL_HOME``), for the trade
            files and host files of recent days.
        book: faults whose trade breaks to apply to new days (default: none).

    Returns:
        The seeded database files, by name.
    """
    today = today or datetime.now(ZoneInfo("UTC")).date()
    paths = paths or LabPaths.of()
    done = lab_databases(estate)
    for name, path in done.items():
        region = estate.region(estate.databases[name].region)
        universe = _universe(region)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _db(path) as conn:
            conn.executescript(SCHEMA)
            conn.executemany("INSERT OR IGNORE INTO algos(name, active) VALUES (?, ?)", ALGOS)
            seeded = {r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM positions")}
            cal = _calendar(region.primary_calendar, today)
            new = [s for s in cal.sessions if s.date().isoformat() not in seeded]
            for session in new:
                opens = cal.session_open(session).to_pydatetime()
                _seed_day(conn, name, universe, session.date(), opens)
            conn.executemany(
                "INSERT OR IGNORE INTO instruments VALUES (?, ?, ?, ?)",
                _instrument_rows(universe, [s.date().isoformat() for s in new]),
            )
        log.info("seeded %s (%s): %d new sessions", name, path, len(new))
    sync_trading(estate, paths, book.active() if book else [], today=today)
    return done


def sync_trading(
    estate: Estate, paths: LabPaths, faults: list[Fault], *, today: date | None = None
) -> dict[str, int]:
    """Write recent days of trading that are new, or whose breaks changed.

    Returns:
        Days written, by database name.
    """
    state_file = paths.root / "trades-state.json"
    try:
        state: dict[str, dict[str, str]] = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    written = {}
    for name, path in lab_databases(estate).items():
        if not path.exists():
            continue
        region = estate.region(estate.databases[name].region)
        local_today = today or datetime.now(ZoneInfo(region.timezone)).date()
        days = trades.recent_sessions(
            _calendar(region.primary_calendar, local_today), region.timezone, local_today
        )
        book = trades.TradingDays(
            estate, name, estate.databases[name], _universe(region), paths, days
        )
        with _db(path) as conn:
            written[name] = book.sync(conn, faults, state.setdefault(name, {}))
        if written[name]:
            log.info("%s: wrote %d day(s) of trading", name, written[name])
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(state_file)
    return written


def apply_faults(
    estate: Estate,
    book: FaultBook,
    *,
    today: date | None = None,
    paths: LabPaths | None = None,
) -> dict[str, list[str]]:
    """Make the databases match the faults: instruments for ``missing_refdata`` deleted
    or restored, and recent days rewritten where their trade breaks changed.

    Returns:
        The trade dates now missing their instruments, by database name.
    """
    faults = book.active()
    sync_trading(estate, paths or LabPaths.of(), faults, today=today)
    result: dict[str, list[str]] = {}
    for name, path in lab_databases(estate).items():
        if not path.exists():
            continue
        region = estate.region(estate.databases[name].region)
        missing = sorted(_missing_dates(faults, name, region, today))
        with _db(path) as conn:
            days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM positions")]
            keep = [d for d in days if d not in missing]
            conn.executemany(
                "INSERT OR IGNORE INTO instruments VALUES (?, ?, ?, ?)",
                _instrument_rows(_universe(region), keep),
            )
            gone = conn.executemany(
                "DELETE FROM instruments WHERE trade_date = ?", [(d,) for d in missing]
            ).rowcount
        if missing:
            log.info(
                "%s: instruments missing for %s (%d rows deleted)", name, ", ".join(missing), gone
            )
        result[name] = missing
    return result


def current_session(region: Region, today: date | None = None) -> date:
    """The region's trade date now: today (region time) if a session, else the next one."""
    local = today or datetime.now(ZoneInfo(region.timezone)).date()
    cal = _calendar(region.primary_calendar, local)
    return cal.date_to_session(local.isoformat(), direction="next").date()


# ---- rows ---------------------------------------------------------------------------------
def _universe(region: Region) -> list[tuple[str, float, int]]:
    out: list[tuple[str, float, int]] = []
    for code in region.calendars:
        out += SYMBOLS.get(code, [(f"{code}{i:03d}", 0.01, 1) for i in range(1, 9)])
    return out


def _instrument_rows(
    universe: list[tuple[str, float, int]], days: Iterable[str]
) -> Iterator[tuple[str, str, float, int]]:
    for day in days:
        for symbol, tick, lot in universe:
            yield day, symbol, tick, lot


def _seed_day(
    conn: sqlite3.Connection,
    db: str,
    universe: list[tuple[str, float, int]],
    day: date,
    session_open: datetime,
) -> None:
    """Positions, limits, controls and batch jobs of one session (deterministic)."""
    iso = day.isoformat()
    prefix = db.split("-")[0].upper()
    rng = random.Random(f"{db}|{iso}")
    positions, limits = [], []
    for i, acct in enumerate(ACCOUNTS):
        account = f"{prefix}-{acct}"
        for symbol, _tick, lot in rng.sample(universe, k=min(6, len(universe))):
            positions.append((iso, account, symbol, lot * rng.randint(-400, 1200)))
        limits.append((iso, account, 5_000_000.0 * (i + 1), 250_000 * (i + 1), 2_000_000))
    controls = [
        (iso, name, 5.0 if name != "close-auction" else 3.0, 2_000_000.0, 100_000, 50, 1)
        for name, active in ALGOS
        if active
    ]
    batch = [
        (
            iso,
            job,
            "done",
            (session_open - timedelta(hours=6) + timedelta(minutes=9 * n)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        )
        for n, job in enumerate(BATCH_JOBS)
    ]
    conn.executemany("INSERT INTO positions VALUES (?, ?, ?, ?)", positions)
    conn.executemany("INSERT INTO limits VALUES (?, ?, ?, ?, ?)", limits)
    conn.executemany("INSERT INTO pretrade_controls VALUES (?, ?, ?, ?, ?, ?, ?)", controls)
    conn.executemany("INSERT INTO batch_jobs VALUES (?, ?, ?, ?)", batch)


def _missing_dates(faults: list[Fault], db: str, region: Region, today: date | None) -> set[str]:
    out = set()
    for f in faults:
        if f.kind == "missing_refdata" and f.target in (db, "*"):
            day = f.params.get("trade_date") or current_session(region, today).isoformat()
            out.add(str(day))
    return out


def _calendar(code: str, today: date) -> ExchangeCalendar:
    import exchange_calendars as xcals

    return xcals.get_calendar(
        code, start=today - timedelta(days=DAYS_BACK), end=today + timedelta(days=DAYS_AHEAD)
    )


@contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in one transaction (WAL, so readers are never blocked)."""
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            yield conn


def main(argv: list[str] | None = None) -> int:
    """``python -m openbell.lab.oms --estate PATH``: seed the lab databases and apply faults."""
    from openbell.runbooks.loader import load_estate

    parser = argparse.ArgumentParser(prog="openbell.lab.oms", description=main.__doc__)
    parser.add_argument("--estate", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    estate = load_estate(args.estate)
    book = LabPaths.of().fault_book()
    seed(estate, book=book)
    missing = apply_faults(estate, book)
    for name, days in missing.items():
        print(f"{name}: instruments missing for {', '.join(days) or 'no date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
