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
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import RunRecord, StepResult
from openbell.secrets import redact, register
from openbell.settings import get_settings
from openbell.tasks.ledger import runs
from openbell.tasks.ledger.bundle import write_bundle
from openbell.tasks.ledger.chain import (
    GENESIS,
    RawEntry,
    VerifyResult,
    canonical_json,
    check_checkpoints,
    entry_hash,
    format_ts,
    parse_ts,
    to_json_value,
    walk,
)
from openbell.tasks.ledger.errors import LedgerError, RunLockedError
from openbell.tasks.ledger.migrations import SCRIPT_LOCATION
from openbell.tasks.ledger.models import entries as T

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_COLUMNS = (T.c.seq, T.c.kind, T.c.run_id, T.c.ref, T.c.ts, T.c.payload, T.c.prev_hash, T.c.hash)
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


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ledger entry, as read back.

    Attributes:
        seq: position in the chain (1, 2, 3, ...).
        kind: what it records (``run_started``, ``step``, ``outcome``, ...).
        run_id: the run it belongs to, if any.
        ref: its lookup key, if any (a completion key's digest).
        ts: when it was appended (UTC).
        payload: its content, redacted, as JSON types.
        prev_hash: the hash of the entry before it.
        hash: its own hash.
    """

    seq: int
    kind: str
    run_id: str | None
    ref: str | None
    ts: datetime
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_raw(cls, raw: RawEntry) -> Entry:
        return cls(
            seq=raw.seq,
            kind=raw.kind,
            run_id=raw.run_id,
            ref=raw.ref,
            ts=parse_ts(raw.ts),
            payload=json.loads(raw.payload),
            prev_hash=raw.prev_hash,
            hash=raw.hash,
        )


class NewEntry(NamedTuple):
    """An entry to append: ``Ledger.append_many([NewEntry("step", run_id, {...}), ...])``."""

    kind: str
    run_id: str | None
    payload: Mapping[str, Any] | BaseModel
    ref: str | None = None


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


class Ledger:
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
        q = select(*_COLUMNS).order_by(T.c.seq)
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
            return [Entry.from_raw(RawEntry._make(r)) for r in conn.execute(q)]

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
        with self._read() as conn:
            result_rows = conn.execution_options(yield_per=5000).execute(
                select(*_COLUMNS).order_by(T.c.seq)
            )
            try:
                result = walk(map(RawEntry._make, result_rows), _SqlLookup(conn))
            finally:
                result_rows.close()
            if checkpoints:

                def hash_at(seq: int) -> str | None:
                    return conn.scalar(select(T.c.hash).where(T.c.seq == seq))

                result = check_checkpoints(result, checkpoints, hash_at)
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
                q = select(*_COLUMNS).where(T.c.seq.between(lo, hi)).order_by(T.c.seq)
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
        target = Path(path) if path is not None else get_settings().reports_dir / "ledger-head.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        with (target.parent / "ledger-checkpoints.jsonl").open("a", encoding="utf-8") as f:
            f.write(canonical_json(data) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("ledger %s: checkpoint at entry %d (%s…) in %s", self, seq, h[:12], target)
        return data

    # ---- runs ----------------------------------------------------------------------------

    def start_run(
        self,
        *,
        runbook: str,
        region: str,
        trade_date: date,
        requester: str,
        parameters: Mapping[str, Any] | BaseModel | None = None,
        flow_run_id: str | uuid.UUID | None = None,
        runbook_version: str | None = None,
        run_id: str | None = None,
        dry_run: bool = False,
        started_at: datetime | None = None,
        calendar: Mapping[str, Any] | None = None,
        skipped_reason: str | None = None,
        estate_source: str | None = None,
    ) -> str:
        """Record who started what (a ``run_started`` entry) and return the run's id.

        Args:
            runbook: e.g. ``sod``.
            region: e.g. ``emea``.
            trade_date: the session the run is for.
            requester: who asked for it.
            parameters: the flow's parameters (a mapping or the parameter model).
            flow_run_id: Prefect's flow-run id.
            runbook_version: the version of the runbook (estate) that ran.
            run_id: the run's id; a new UUID if None.
            dry_run: planned only.
            started_at: default now.
            calendar: the calendar facts the gate used.
            skipped_reason: why the run does nothing (not a session, ...).
            estate_source: where the estate was loaded from.
        """
        rid = run_id or str(uuid.uuid4())
        params = (
            parameters.model_dump(mode="python")
            if isinstance(parameters, BaseModel)
            else parameters
        )
        payload = runs.run_started_payload(
            run_id=rid,
            runbook=runbook,
            region=region,
            trade_date=trade_date,
            requester=requester,
            parameters=params,
            flow_run_id=None if flow_run_id is None else str(flow_run_id),
            runbook_version=runbook_version,
            dry_run=dry_run,
            started_at=started_at or utcnow(),
            calendar=calendar,
            skipped_reason=skipped_reason,
            estate_source=estate_source,
        )
        self.append("run_started", rid, payload)
        return rid

    def start_run_from_record(
        self,
        record: RunRecord,
        *,
        parameters: Mapping[str, Any] | BaseModel | None = None,
        runbook_version: str | None = None,
    ) -> str:
        """``start_run`` with the fields of a freshly opened ``RunRecord``."""
        return self.start_run(
            runbook=record.runbook,
            region=record.region,
            trade_date=record.trade_date,
            requester=record.operator,
            parameters=parameters,
            flow_run_id=record.flow_run_id,
            runbook_version=runbook_version,
            run_id=record.run_id,
            dry_run=record.dry_run,
            started_at=record.started_at,
            calendar=record.calendar,
            skipped_reason=record.skipped_reason,
            estate_source=record.estate_source,
        )

    def record_plan(self, run_id: str, plan: Mapping[str, Any]) -> Entry:
        """Record the plan the run printed before acting."""
        return self.append("plan", run_id, {"plan": dict(plan)})

    def record_outcomes(self, run_id: str, step: str, outcomes: Sequence[Outcome]) -> list[Entry]:
        """Record outcomes of a step still in progress (close it with ``record_step``).

        Args:
            run_id: the run.
            step: the ``StepResult.name`` they belong to.
            outcomes: one per target.
        """
        return self.append_many(
            [NewEntry("outcome", run_id, runs.outcome_payload(step, o)) for o in outcomes]
        )

    def record_step(
        self, run_id: str, step: StepResult, *, outcomes_recorded: bool = False
    ) -> list[Entry]:
        """Record a finished step: its outcomes (one entry per target), then the step.

        Args:
            run_id: the run.
            step: the step's result.
            outcomes_recorded: its outcomes were already recorded with
                ``record_outcomes``; write only the step entry.

        Returns:
            The entries written, the step entry last.
        """
        items = (
            []
            if outcomes_recorded
            else [
                NewEntry("outcome", run_id, runs.outcome_payload(step.name, o))
                for o in step.outcomes
            ]
        )
        items.append(NewEntry("step", run_id, runs.step_payload(step)))
        return self.append_many(items)

    def record_notification(self, run_id: str, delivery: Mapping[str, Any] | Any) -> Entry:
        """Record a message sent about the run and its fate (a ``notify.Delivery`` or dict)."""
        payload = delivery if isinstance(delivery, Mapping) else to_json_value(delivery)
        return self.append("notification", run_id, payload)

    def record_evidence(
        self,
        run_id: str,
        path: str | Path,
        *,
        sha256: str | None = None,
        size: int | None = None,
        step: str | None = None,
        name: str | None = None,
    ) -> Entry:
        """Record a file kept as evidence, with its sha256.

        Args:
            run_id: the run.
            path: where the file is; hashed here unless ``sha256`` is given (a remote file
                whose checksum was taken where it lives).
            sha256: the file's checksum, if already known.
            size: its size in bytes, if known.
            step: the step it is evidence for.
            name: a short name (default the file name).
        """
        p = Path(path)
        if sha256 is None:
            sha256, size = runs.file_facts(p)
        return self.append(
            "evidence",
            run_id,
            {"path": str(p), "name": name or p.name, "sha256": sha256, "size": size, "step": step},
        )

    def record_report(self, run_id: str, fmt: str, path: str | Path) -> Entry:
        """Record a report written for the run (``html``, ``md``, ``json``) with its sha256."""
        sha256, size = runs.file_facts(Path(path))
        return self.append(
            "report", run_id, {"format": fmt, "path": str(path), "sha256": sha256, "size": size}
        )

    def record_refusal(
        self,
        *,
        who: str,
        action: str,
        runbook: str,
        region: str,
        reason: str,
        rule: str | None = None,
        run_id: str | None = None,
    ) -> Entry:
        """Record a refused action (entitlements, approvals): who tried what, and why not."""
        return self.append(
            "refusal",
            run_id,
            {
                "who": who,
                "action": action,
                "runbook": runbook,
                "region": region,
                "reason": reason,
                "rule": rule,
            },
        )

    def finish_run(
        self,
        run_id: str,
        status: Status | str,
        *,
        finished_at: datetime | None = None,
        summary: str = "",
    ) -> Entry:
        """Record the end of a run (checkpoint the head afterwards: ``checkpoint()``)."""
        return self.append(
            "run_finished",
            run_id,
            {
                "status": str(status),
                "finished_at": finished_at or utcnow(),
                "summary": summary,
            },
        )

    def run_entries(self, run_id: str) -> list[Entry]:
        """Every entry of one run, in order."""
        return self.entries(run_id=run_id)

    def find_runs(
        self,
        *,
        region: str | None = None,
        trade_date: date | None = None,
        runbook: str | None = None,
    ) -> list[Entry]:
        """The ``run_started`` entries of the runs for a region and trade date, in order.

        Args:
            region: only runs in this region (case-insensitive).
            trade_date: only runs for this session.
            runbook: only runs of this runbook.

        Example:
            >>> day = date(2026, 11, 24)
            >>> runs = ledger.find_runs(region="emea", trade_date=day)  # doctest: +SKIP
            >>> [e.run_id for e in runs]  # doctest: +SKIP
            ['4f1c2d3e-...', '9a0b1c2d-...']
        """
        want: dict[str, str] = {}
        if region is not None:
            want["region"] = region.lower()
        if trade_date is not None:
            want["trade_date"] = trade_date.isoformat()
        if runbook is not None:
            want["runbook"] = runbook
        q = select(*_COLUMNS).where(T.c.kind == "run_started").order_by(T.c.seq)
        for key, value in want.items():
            # The payload is canonical JSON: a cheap, portable prefilter in SQL; the exact
            # test on the parsed payload below decides.
            q = q.where(T.c.payload.icontains(canonical_json({key: value})[1:-1], autoescape=True))
        with self._read() as conn:
            found = [Entry.from_raw(RawEntry._make(r)) for r in conn.execute(q)]
        return [
            e
            for e in found
            if all(str(e.payload.get(k, "")).lower() == v.lower() for k, v in want.items())
        ]

    def load_run(self, run_id: str) -> RunRecord:
        """Rebuild a run's ``RunRecord`` from the ledger alone (for reports).

        Raises:
            LedgerError: the ledger has no such run.
        """
        return runs.run_record(run_id, self.entries(run_id=run_id))

    # ---- idempotency and run locks ---------------------------------------------------------

    def completed(self, key: runs.CompletionKey) -> bool:
        """Whether the work ``key`` names was recorded as done."""
        return self.completion(key) is not None

    def completion(self, key: runs.CompletionKey) -> Entry | None:
        """The ``completion`` entry of the work ``key`` names (the first), or None."""
        q = (
            select(*_COLUMNS)
            .where(T.c.ref == key.digest(), T.c.kind == "completion")
            .order_by(T.c.seq)
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(q).first()
        return Entry.from_raw(RawEntry._make(row)) if row else None

    def record_completion(
        self, key: runs.CompletionKey, *, run_id: str | None, detail: str = ""
    ) -> Entry:
        """Record that the work ``key`` names succeeded (so a re-run skips it)."""
        return self.append(
            "completion",
            run_id,
            {"key": key._asdict(), "detail": detail},
            ref=key.digest(),
        )

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
