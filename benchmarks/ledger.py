"""Ledger: tamper detection on a 10,000-entry chain, and concurrent append throughput.

1. **Tamper matrix.** Builds a 10,000-entry chain (entries shaped like runs) on SQLite,
   checkpoints its head, then, as the database owner (triggers and unique indexes
   dropped), makes one change at a time and runs ``Ledger.verify`` against the
   checkpoint: a payload altered; altered *and* re-hashed; an entry deleted; a
   well-formed forged entry inserted (later entries renumbered); two entries swapped.
   1,000 positions per change (first, middle, last and random ones), each undone before
   the next. The same on PostgreSQL with fewer positions. Prints, per change, how many
   trials were detected and how many located exactly (right kind, right position).
2. **Concurrent appends.** 16 writer processes (spawn) x 1,000 entries, one entry per
   transaction, on SQLite (WAL, synchronous=FULL) and on PostgreSQL: appends per second
   from the start barrier to the last exit, then checks that the chain verifies, that no
   two entries follow the same one (forks) and that no entry is missing (lost).

Everything lives in a fresh directory under /tmp and a fresh PostgreSQL schema on
127.0.0.1:5432 (database ``test``, user ``postgres``), both removed at the end. Without
PostgreSQL the PostgreSQL figures are ``nan``. A deadline (``--budget-s``) cuts the
tamper trials short rather than overstay; the figures then say how many ran.

Usage::

    .venv/bin/python benchmarks/ledger.py            # full run (several minutes)
    .venv/bin/python benchmarks/ledger.py --quick    # 2,000 entries, 50 per change, 4 x 200

The last line is machine-readable::

    ledger: entries=10000 detected_pct=100.00 sqlite_appends_per_s=... postgres_appends_per_s=...
    forks=0 lost=0
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``tests`` and ``tasks`` importable
    sys.path.insert(0, str(REPO))
sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress as it comes

CHANGES = ("altered", "rewritten", "deleted", "inserted", "reordered")


def _pg_available() -> bool:
    import psycopg

    from tests.fixtures.postgres import PG_DATABASE, PG_HOST, PG_PORT, PG_USER

    try:
        psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DATABASE, connect_timeout=3
        ).close()
    except psycopg.Error as exc:
        print(f"PostgreSQL unavailable ({str(exc).strip().splitlines()[0]}): skipping it")
        return False
    return True


class Schemas:
    """Fresh PostgreSQL schemas for this run, all dropped by ``drop_all``."""

    def __init__(self) -> None:
        from tests.fixtures.ledger import pg_admin

        self.admin = pg_admin()
        self.made: list[str] = []

    def new(self) -> str:
        from tests.fixtures.ledger import pg_url_for

        schema = f"openbell_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        self.made.append(schema)
        return pg_url_for(schema)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for schema in self.made:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.admin.dispose()


def tamper_matrix(
    label: str, url: str, entries: int, per_change: int, deadline: float, seed: int, home: Path
) -> tuple[int, int, int]:
    """Run the matrix on one backend; print a line per change. (trials, detected, located)."""
    from openbell.tasks.ledger import Ledger
    from tests.fixtures.ledger import Attacker, build_chain, positions, tamper_trial

    total = detected = located = 0
    with Ledger(url) as ledger:
        t0 = time.perf_counter()
        build_chain(ledger, entries)
        built = time.perf_counter() - t0
        checkpoint = ledger.checkpoint(home / f"{label}-head.json")
        t0 = time.perf_counter()
        whole = ledger.verify(checkpoint=checkpoint)
        walk_ms = (time.perf_counter() - t0) * 1000
        print(
            f"{label}: built {entries:,} entries in {built:.1f} s; full verify {walk_ms:.0f} ms: "
            f"{whole.describe()}"
        )
        attacker = Attacker(url)
        try:
            attacker.disarm()
            for change in CHANGES:
                rng = random.Random(f"{label}-{change}-{seed}")
                times: list[float] = []
                trials = []
                for pos in positions(entries, per_change, rng):
                    if time.monotonic() > deadline:
                        break
                    t0 = time.perf_counter()
                    trials.append(
                        tamper_trial(ledger, attacker, change, pos, entries, rng, checkpoint)
                    )
                    times.append(time.perf_counter() - t0)
                d = sum(t.detected for t in trials)
                ok = sum(t.located for t in trials)
                total, detected, located = total + len(trials), detected + d, located + ok
                median = statistics.median(times) * 1000 if times else float("nan")
                print(
                    f"  {change:<9} {len(trials):>5,} trials  detected {_pct(d, len(trials))}  "
                    f"located {_pct(ok, len(trials))}  (trial median {median:.0f} ms)"
                )
                for t in [t for t in trials if not t.located][:3]:
                    print(f"    not located: {t}")
        finally:
            attacker.close()
        after = ledger.verify(checkpoint=checkpoint)
        print(f"  after undoing every change: {after.describe()}")
    return total, detected, located


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f} %" if whole else "   n/a"


def writers(label: str, url: str, count: int, per_writer: int) -> Any:
    from tests.fixtures.ledger import run_writers

    run = run_writers(url, count, per_writer)
    print(
        f"{label}: {count} processes x {per_writer:,} appends = {run.entries:,} entries in "
        f"{run.seconds:.1f} s = {run.appends_per_s:,.0f} appends/s; forks {run.forks}, "
        f"lost {run.lost}, duplicated {run.duplicated}; {run.verify.describe()}"
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=10_000, help="chain length (SQLite)")
    parser.add_argument("--per-change", type=int, default=1_000, help="positions per change")
    parser.add_argument("--pg-entries", type=int, default=10_000, help="chain length (PG)")
    parser.add_argument("--pg-per-change", type=int, default=100, help="positions (PG)")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--appends", type=int, default=1_000, help="appends per writer")
    parser.add_argument("--budget-s", type=float, default=1_500, help="stop tamper trials then")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries = args.pg_entries = 2_000
        args.per_change, args.pg_per_change = 50, 20
        args.writers, args.appends = 4, 200

    home = Path(tempfile.mkdtemp(prefix="openbell-bench-ledger-"))
    os.environ["OPENBELL_HOME"] = str(home)
    os.environ.pop("OPENBELL_LEDGER_URL", None)
    deadline = time.monotonic() + args.budget_s
    use_pg = not args.no_postgres and _pg_available()
    schemas = Schemas() if use_pg else None
    sqlite_rate = pg_rate = float("nan")
    forks = lost = 0
    try:
        total, detected, located = tamper_matrix(
            "sqlite",
            f"sqlite:///{home / 'tamper.db'}",
            args.entries,
            args.per_change,
            deadline,
            args.seed,
            home,
        )
        if schemas is not None:
            t, d, o = tamper_matrix(
                "postgresql",
                schemas.new(),
                args.pg_entries,
                args.pg_per_change,
                deadline,
                args.seed,
                home,
            )
            total, detected, located = total + t, detected + d, located + o

        run = writers("sqlite", f"sqlite:///{home / 'writers.db'}", args.writers, args.appends)
        sqlite_rate = run.appends_per_s
        forks, lost = forks + run.forks, lost + run.lost + (0 if run.verify.ok else 1)
        if schemas is not None:
            run = writers("postgresql", schemas.new(), args.writers, args.appends)
            pg_rate = run.appends_per_s
            forks, lost = forks + run.forks, lost + run.lost + (0 if run.verify.ok else 1)
    finally:
        if schemas is not None:
            schemas.drop_all()
        shutil.rmtree(home, ignore_errors=True)

    detected_pct = 100 * detected / total if total else float("nan")
    print(
        f"tamper trials: {total:,}; detected {_pct(detected, total).strip()}, "
        f"located exactly {_pct(located, total).strip()}"
    )
    print(
        f"ledger: entries={args.entries} detected_pct={detected_pct:.2f} "
        f"sqlite_appends_per_s={sqlite_rate:.0f} postgres_appends_per_s={pg_rate:.0f} "
        f"forks={forks} lost={lost}"
    )
    return 0 if detected == total and forks == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
