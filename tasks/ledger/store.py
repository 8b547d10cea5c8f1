"""``Ledger``: the chain in SQLite (default) or PostgreSQL, appended under a write lock.

Appending reads the head, computes the new entry's hash and inserts it in one
transaction that holds the ledger's write lock, so concurrent writers (threads or
processes) queue instead of forking the chain:

- SQLite: ``BEGIN IMMEDIATE`` (the database's single writer lock), WAL journal,
  ``synchronous=FULL`` (a committed entry survives a power cut), a busy timeout.
- PostgreSQL: ``pg_advisory_xact_lock`` on a key derived from the schema, taken before
  the head is read (READ COMMITTED then sees every committed entry).

Unique indexes on ``hash`` and ``prev_hash`` back the lock up: a second entry after the
same head cannot be inserted at all. Updates and deletes are refused by triggers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from openbell.outcome import utcnow
from openbell.secrets import redact, register
from openbell.settings import get_settings
from openbell.tasks.ledger.bundle import write_bundle
from openbell.tasks.ledger.chain import (
    GENESIS,
    RawEntry,
    VerifyResult,
    canonical_json,
    check_checkpoints,
    check_signed,
    checkpoint_mac,
    entry_hash,
    format_ts,
    to_json_value,
    walk,
)
from openbell.tasks.ledger.entry import COLUMNS, Entry, NewEntry, entry_of
from openbell.tasks.ledger.errors import LedgerError, RunLockedError
from openbell.tasks.ledger.journal import RunJournal
from openbell.tasks.ledger.migrations import SCRIPT_LOCATION
from openbell.tasks.ledger.models import entries as T

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The key of the append lock: one per schema, so ledgers in other schemas never wait on it.
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('openbell.ledger:' || {}, 0))"
_PG_SCHEMA = "coalesce(current_schema(), '')"


def ledger_url() -> str:
    """The ledger's database URL: ``OPENBELL_LEDGER_URL``, else SQLite under OPENBELL_HOME.

    Example:
        >>> ledger_url()  # doctest: +SKIP
        'sqlite:////home/ops/.openbell/ledger.db'
    """
    settings = get_settings()
    url = getattr(settings, "ledger_url", None)
    if url is None:
        # Until Settings has a ``ledger_url`` field, this is the one other place that
        # reads the variable.
        url = os.environ.get("OPENBELL_LEDGER_URL") or None
    if url is not None:
        value = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
        if value:
            return value
    return f"sqlite:///{settings.home / 'ledger.db'}"


def _redacted(value: Any) -> Any:
    """Every string in a JSON value (keys too) with registered secrets masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _as_ts(value: datetime | date) -> str:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return format_ts(value)


class _SqlLookup:
    """Finds entries by hash for ``walk``'s diagnosis, on the walk's own connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def seqs_with_hash(self, value: str) -> list[int]:
        return list(self._conn.scalars(select(T.c.seq).where(T.c.hash == value)))

    def seqs_with_prev(self, value: str) -> list[int]:
        return list(self._conn.scalars(select(T.c.seq).where(T.c.prev_hash == value)))


class Ledger(RunJournal):
    """The append-only, hash-chained record of every run.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``);
            default ``ledger_url()``. A plain ``postgresql://`` uses psycopg 3.
        busy_timeout_s: how long a SQLite writer waits for the lock before failing.

    Opening runs the schema migrations (once, under the write lock).

    Example:
        >>> with Ledger("sqlite:///:memory:") as ledger:
        ...     e = ledger.append("note", None, {"text": "hello"})
        ...     ledger.verify().describe().startswith("OK: 1 entry,")
        True
    """

    def __init__(self, url: str | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        raw = url or ledger_url()
        try:
            parsed = make_url(raw)
        except ArgumentError as exc:
            raise LedgerError(f"not a database URL for the ledger: {redact(raw)!r}") from exc
        if parsed.password:
            register(str(parsed.password))
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url: URL = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise LedgerError(f"{self}: the ledger runs on SQLite or PostgreSQL")
        self._busy_timeout_s = busy_timeout_s
        database = self.url.database
        self._turn_file: Path | None = None
        if self.dialect == "sqlite" and database not in (None, "", ":memory:"):
            self._turn_file = (
                Path(str(database))
                .expanduser()
                .with_name(Path(str(database)).name + "-writer.lock")
            )
        self._turn_lock = threading.Lock()
        self._engine = self._make_engine()
        try:
            self._migrate()
        except (SQLAlchemyError, CommandError) as exc:
            # CommandError: the database is at a revision this openbell does not know.
            self._engine.dispose()
            raise LedgerError(f"{self}: cannot open the ledger: {redact(str(exc))}") from exc
        log.info("ledger %s open", self)

    def __repr__(self) -> str:
        return f"Ledger({self.url.render_as_string(hide_password=True)})"

    def __str__(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the ledger's connections."""
        self._engine.dispose()

    # ---- connections -------------------------------------------------------------------

    def _make_engine(self) -> Engine:
        if self.dialect == "postgresql":
            return create_engine(self.url, pool_pre_ping=True)
        database = self.url.database
        memory = database in (None, "", ":memory:")
        if not memory:
            Path(str(database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": self._busy_timeout_s},
            **({"poolclass": StaticPool} if memory else {}),
        )
        busy_ms = int(self._busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # We say when transactions begin (below); pysqlite's own guessing would not
            # take the write lock up front.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if not memory:
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("ledger_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction holding the ledger's write lock (committed on success)."""
        # Check out the connection first: the turn covers only the transaction itself.
        with self._engine.connect() as conn, self._writer_turn():
            if self.dialect == "sqlite":
                conn.execution_options(ledger_write=True)
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(_PG_LOCK.format(_PG_SCHEMA))
                yield conn

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, queue writers in the kernel before ``BEGIN IMMEDIATE``.

        SQLite's busy handler polls with growing sleeps, so under many writers one of
        them can lose every race for longer than the busy timeout and fail. Waiting on
        an ``flock`` of a file beside the database instead wakes a writer as soon as the
        lock is free and never times out; the busy timeout is then only for writers that
        do not take this lock (the ``sqlite3`` shell). A new descriptor per turn, so
        threads of one process exclude each other too.
        """
        if self.dialect == "postgresql":  # the advisory lock queues writers fairly
            yield
            return
        if self._turn_file is None:  # in-memory: one process, its threads
            with self._turn_lock:
                yield
            return
        fd = os.open(self._turn_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction with one consistent snapshot (WAL / REPEATABLE READ)."""
        with self._engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
        with self._write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # ---- writing -----------------------------------------------------------------------

    def append(
        self,
        kind: str,
        run_id: str | None,
        payload: Mapping[str, Any] | BaseModel,
        *,
        ref: str | None = None,
    ) -> Entry:
        """Append one entry: read the head, hash, insert, all under the write lock.

        Args:
            kind: lower-case identifier, e.g. ``approval_decided``.
            run_id: the run it belongs to, or None.
            payload: a mapping or pydantic model; redacted of secrets before hashing.
            ref: an optional lookup key (at most 128 characters).

        Returns:
            The entry as stored.

        Example:
            >>> ledger.append("refusal", None, {"who": "bob"})  # doctest: +SKIP
            Entry(seq=42, kind='refusal', ...)
        """
        return self.append_many([NewEntry(kind, run_id, payload, ref)])[0]

    def append_many(self, items: Iterable[NewEntry]) -> list[Entry]:
        """Append several entries, consecutively, in one transaction (all or none)."""
        prepared = [self._prepare(item) for item in items]
        if not prepared:
            return []
        try:
            with self._write() as conn:
                head = conn.execute(
                    select(T.c.seq, T.c.hash, T.c.ts).order_by(T.c.seq.desc()).limit(1)
                ).first()
                seq, prev, last_ts = (head[0], head[1], head[2]) if head else (0, GENESIS, "")
                # Time never goes backwards along the chain, so a time range is a seq range.
                ts = max(format_ts(utcnow()), last_ts)
                rows: list[RawEntry] = []
                for kind, run_id, ref, payload_json in prepared:
                    seq += 1
                    h = entry_hash(prev, seq, kind, run_id, ref, ts, payload_json)
                    rows.append(RawEntry(seq, kind, run_id, ref, ts, payload_json, prev, h))
                    prev = h
                conn.execute(insert(T), [r._asdict() for r in rows])
        except SQLAlchemyError as exc:
            raise LedgerError(f"{self}: cannot append to the ledger: {redact(str(exc))}") from exc
        log.debug("ledger: appended %d entries, head %d", len(rows), rows[-1].seq)
        return [Entry.from_raw(r) for r in rows]

    def _prepare(self, item: NewEntry) -> tuple[str, str | None, str | None, str]:
        kind, run_id, payload, ref = item
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise LedgerError(f"ledger entry kind {kind!r}: expected a lower-case identifier")
        if ref is not None and len(ref) > 128:
            raise LedgerError(f"ledger entry ref is {len(ref)} characters long; at most 128")
        if not isinstance(payload, Mapping | BaseModel):
            raise LedgerError(f"ledger {kind} payload: expected a mapping, not {type(payload)}")
        try:
            value = _redacted(to_json_value(payload))
            payload_json = canonical_json(value)
        except (TypeError, ValueError, UnicodeError) as exc:
            raise LedgerError(f"ledger {kind} payload cannot be stored: {exc}") from exc
        rid = None if run_id is None else redact(str(run_id))
        return kind, rid, None if ref is None else redact(ref), payload_json

    # ---- reading -----------------------------------------------------------------------

    def entries(
        self,
        run_id: str | None = None,
        kinds: Iterable[str] | None = None,
        since: datetime | date | None = None,
        until: datetime | date | None = None,
        *,
        ref: str | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Entries in chain order, filtered.

        Args:
            run_id: only this run's.
            kinds: only these kinds.
            since: appended at or after (a date means its midnight UTC; naive is UTC).
            until: appended before (exclusive).
            ref: only those with this lookup key.
            after_seq: only those after this position (for tailing).
            limit: at most this many.
        """
        q = select(*COLUMNS).order_by(T.c.seq)
        if run_id is not None:
            q = q.where(T.c.run_id == run_id)
        if kinds is not None:
            q = q.where(T.c.kind.in_(list(kinds)))
        if since is not None:
            q = q.where(T.c.ts >= _as_ts(since))
        if until is not None:
            q = q.where(T.c.ts < _as_ts(until))
        if ref is not None:
            q = q.where(T.c.ref == ref)
        if after_seq is not None:
            q = q.where(T.c.seq > after_seq)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [entry_of(r) for r in conn.execute(q)]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; ``(0, GENESIS)`` for an empty ledger."""
        with self._read() as conn:
            row = conn.execute(select(T.c.seq, T.c.hash).order_by(T.c.seq.desc()).limit(1)).first()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def count(self) -> int:
        """How many entries are stored."""
        with self._read() as conn:
            return int(conn.scalar(select(func.count()).select_from(T)) or 0)

    # ---- verifying, exporting, checkpointing ---------------------------------------------

    def verify(
        self,
        checkpoint: str | Path | Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
    ) -> VerifyResult:
        """Walk the whole chain; report OK or the first bad entry, classified and located.

        Args:
            checkpoint: also require the chain to still contain these heads: a checkpoint
                dict, a ``ledger-head.json`` file, a ``ledger-checkpoints.jsonl`` file, or
                a list of dicts. Catches truncation and wholesale rewrites, which a walk
                alone cannot see.

        Example:
            >>> cps = reports / "ledger-checkpoints.jsonl"  # doctest: +SKIP
            >>> ledger.verify(checkpoint=cps).describe()  # doctest: +SKIP
            'BROKEN at entry 4,512: altered (its content does not match its hash)'
        """
        checkpoints = _load_checkpoints(checkpoint) if checkpoint is not None else []
        key = checkpoint_key()
        copy = get_settings().checkpoint_copy
        if key is not None and copy is not None and (copy / CHECKPOINTS_FILE).exists():
            checkpoints += _load_checkpoints(copy / CHECKPOINTS_FILE)
        with self._read() as conn:
            result_rows = conn.execution_options(yield_per=5000).execute(
                select(*COLUMNS).order_by(T.c.seq)
            )
            try:
                result = walk(map(RawEntry._make, result_rows), _SqlLookup(conn))
            finally:
                result_rows.close()
            if checkpoints:

                def hash_at(seq: int) -> str | None:
                    return conn.scalar(select(T.c.hash).where(T.c.seq == seq))

                if key is not None:
                    result, checkpoints = check_signed(result, checkpoints, key)
                result = check_checkpoints(result, checkpoints, hash_at)
            if key is not None and result.ok:
                signed = max((int(c["seq"]) for c in checkpoints), default=0)
                signed = min(signed, result.head_seq)
                result = dataclasses.replace(
                    result, signed_seq=signed, unverified=result.head_seq - signed
                )
        log.info("ledger %s verify: %s", self, result.describe())
        return result

    def export(
        self,
        path: str | Path,
        from_ts: datetime | date | None = None,
        to_ts: datetime | date | None = None,
    ) -> Path:
        """Write the entries appended in ``[from_ts, to_ts)`` as a self-contained bundle.

        The bundle carries the hash just before its first entry and the algorithm, so
        ``verify_bundle`` checks it with no database.

        Returns:
            The bundle's path.
        """
        window = select(func.min(T.c.seq), func.max(T.c.seq))
        if from_ts is not None:
            window = window.where(T.c.ts >= _as_ts(from_ts))
        if to_ts is not None:
            window = window.where(T.c.ts < _as_ts(to_ts))
        with self._read() as conn:
            lo, hi = conn.execute(window).one()
            if lo is None:
                before = conn.execute(
                    select(T.c.seq, T.c.hash)
                    .where(T.c.ts < _as_ts(from_ts) if from_ts is not None else T.c.seq < 0)
                    .order_by(T.c.seq.desc())
                    .limit(1)
                ).first()
                rows: list[RawEntry] = []
            else:
                before = conn.execute(
                    select(T.c.seq, T.c.hash).where(T.c.seq < lo).order_by(T.c.seq.desc()).limit(1)
                ).first()
                q = select(*COLUMNS).where(T.c.seq.between(lo, hi)).order_by(T.c.seq)
                rows = [RawEntry._make(r) for r in conn.execute(q)]
            head_row = conn.execute(
                select(T.c.seq, T.c.hash).order_by(T.c.seq.desc()).limit(1)
            ).first()
        anchor_seq, anchor_hash = (int(before[0]), str(before[1])) if before else (0, GENESIS)
        meta = {
            "exported_at": format_ts(utcnow()),
            "range": {
                "from": None if from_ts is None else _as_ts(from_ts),
                "to": None if to_ts is None else _as_ts(to_ts),
            },
            "ledger": str(self),
            "ledger_head": {
                "seq": int(head_row[0]) if head_row else 0,
                "hash": str(head_row[1]) if head_row else GENESIS,
            },
        }
        out = write_bundle(
            Path(path), rows, anchor_seq=anchor_seq, anchor_hash=anchor_hash, meta=meta
        )
        log.info("ledger %s: exported %d entries to %s", self, len(rows), out)
        return out

    def checkpoint(self, path: str | Path | None = None) -> dict[str, Any]:
        """Record the chain head outside the ledger.

        Writes ``{"seq", "hash", "time", "ledger"}`` to ``path`` (default
        ``OPENBELL_HOME/reports/ledger-head.json``) and appends the same as one line to
        ``ledger-checkpoints.jsonl`` beside it. Post the returned dict in the run's Slack
        summary too: a copy the database owner cannot reach.

        Returns:
            The checkpoint.
        """
        seq, h = self.head()
        data: dict[str, Any] = {
            "seq": seq,
            "hash": h,
            "time": format_ts(utcnow()),
            "ledger": str(self),
        }
        key = checkpoint_key()
        if key is not None:  # signed with a key the ledger's writers do not hold
            data["mac"] = checkpoint_mac(key, data)
        target = Path(path) if path is not None else get_settings().reports_dir / "ledger-head.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        copy = get_settings().checkpoint_copy
        for folder in [target.parent] + ([copy] if copy is not None else []):
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / CHECKPOINTS_FILE).open("a", encoding="utf-8") as f:
                f.write(canonical_json(data) + "\n")
                f.flush()
                os.fsync(f.fileno())
        log.info("ledger %s: checkpoint at entry %d (%s…) in %s", self, seq, h[:12], target)
        return data

    # ---- run locks -------------------------------------------------------------------------

    @contextlib.contextmanager
    def run_lock(
        self, runbook: str, region: str, trade_date: date, *, timeout_s: float = 0.0
    ) -> Iterator[None]:
        """Hold the lock of (runbook, region, trade_date) for this ledger, or fail.

        PostgreSQL: a session advisory lock; SQLite: an ``flock`` on a file beside the
        database. Either is released when the block ends or the process dies.

        Raises:
            RunLockedError: someone else held it for ``timeout_s`` seconds.

        Example:
            >>> with ledger.run_lock("sod", "emea", date(2026, 11, 27)):  # doctest: +SKIP
            ...     ...
        """
        name = canonical_json(["run-lock", runbook, region, trade_date])
        deadline = time.monotonic() + timeout_s
        acquire, release, close = self._lock_ops(name)
        try:
            while not acquire():
                if time.monotonic() >= deadline:
                    raise RunLockedError(runbook, region, trade_date.isoformat(), timeout_s)
                time.sleep(0.1)
            try:
                yield
            finally:
                release()
        finally:
            close()

    def _lock_ops(self, name: str) -> tuple[Any, Any, Any]:
        if self.dialect == "postgresql":
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            key = f"hashtextextended('openbell.run:' || {_PG_SCHEMA} || :name, 0)"

            def pg_acquire() -> bool:
                return bool(
                    conn.scalar(text(f"SELECT pg_try_advisory_lock({key})"), {"name": name})
                )

            def pg_release() -> None:
                conn.execute(text(f"SELECT pg_advisory_unlock({key})"), {"name": name})

            return pg_acquire, pg_release, conn.close

        database = self.url.database
        base = (
            Path(str(database)).expanduser().parent
            if database not in (None, "", ":memory:")
            else get_settings().home
        )
        lock_dir = base / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        f = (lock_dir / f"run-{digest}.lock").open("a+")

        def file_acquire() -> bool:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        def file_release() -> None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

        return file_acquire, file_release, f.close


#: The file every checkpoint is appended to, beside the reports and in the copy.
CHECKPOINTS_FILE = "ledger-checkpoints.jsonl"


def checkpoint_key() -> bytes | None:
    """The key that signs checkpoints: the secret ``OPENBELL_CHECKPOINT_KEY`` names, or None.

    Raises:
        LedgerError: a key is named but cannot be resolved.
    """
    name = get_settings().checkpoint_key
    if not name:
        return None
    from openbell.secrets import SecretNotFoundError, resolve

    try:
        return resolve(name).get_secret_value().encode()
    except SecretNotFoundError as exc:
        raise LedgerError(f"OPENBELL_CHECKPOINT_KEY={name}: {exc}") from None


def _load_checkpoints(
    value: str | Path | Mapping[str, Any] | Iterable[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        items: list[Any] = [value]
    elif isinstance(value, str | Path):
        path = Path(value)
        try:
            content = path.read_text(encoding="utf-8")
            if path.suffix == ".jsonl":
                items = [json.loads(line) for line in content.splitlines() if line.strip()]
            else:
                loaded = json.loads(content)
                items = loaded if isinstance(loaded, list) else [loaded]
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{path}: cannot read the checkpoint: {exc}") from exc
    else:
        items = list(value)
    for cp in items:
        if not isinstance(cp, Mapping) or "seq" not in cp or "hash" not in cp:
            raise LedgerError(f"not a ledger checkpoint (needs seq and hash): {cp!r}")
    return items
