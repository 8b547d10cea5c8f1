"""The ledger's tables (SQLAlchemy 2), and the read-only views over them.

There is one table, ``entries``: every ledger entry, append-only, hash-chained. The views
``ledger_runs``, ``ledger_steps``, ``ledger_outcomes``, ``ledger_approvals``,
``ledger_notifications``, ``ledger_evidence`` and ``ledger_reports`` project the entries
of each kind into columns for people who query the ledger with SQL; the chain is over
``entries`` alone. The schema is created by the Alembic migrations in
``runbooks/migrations`` (which do not import this module: a migration is frozen history).

Unique indexes on ``hash`` and ``prev_hash`` (rather than inline constraints, so that the
tamper tests can drop them as an attacker with owner rights would) make a fork
impossible even for a writer that forgot the lock: two entries can never follow the
same one.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: seq is the primary key; on SQLite an INTEGER PRIMARY KEY is the rowid (fast, compact).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""

    metadata = MetaData()


class EntryRow(Base):
    """One ledger entry as stored. ``payload`` is canonical JSON text.

    Attributes:
        seq: position in the chain, 1, 2, 3, ... with no gaps.
        kind: ``run_started``, ``step``, ``outcome``, ``approval_decided``, ...
        run_id: the run the entry belongs to (None for entries about no run).
        ref: a lookup key (an idempotency key's digest for ``completion`` entries).
        ts: when it was appended, canonical UTC text; never decreases along the chain.
        payload: the entry's content, redacted, as canonical JSON.
        prev_hash: the previous entry's hash (64 zeros for the first).
        hash: sha256 over prev_hash and the canonical JSON of all of the above.
    """

    __tablename__ = "entries"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(128))
    ref: Mapped[str | None] = mapped_column(String(128))
    ts: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_entries_hash", "hash", unique=True),
        Index("ix_entries_prev_hash", "prev_hash", unique=True),
        Index("ix_entries_run_id_seq", "run_id", "seq"),
        Index("ix_entries_ref", "ref"),
        Index("ix_entries_ts", "ts"),
    )


entries = cast(Table, EntryRow.__table__)

#: The projections (created by the migrations as views; never written to).
views = MetaData()

ledger_runs = Table(
    "ledger_runs",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("runbook", String),
    Column("region", String),
    Column("trade_date", String),
    Column("requester", String),
    Column("flow_run_id", String),
    Column("runbook_version", String),
    Column("dry_run", String),
    Column("parameters", Text),
    Column("started_at", String),
    Column("finished_at", String),
    Column("status", String),
)

ledger_steps = Table(
    "ledger_steps",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("step", String),
    Column("title", String),
    Column("status", String),
    Column("started_at", String),
    Column("finished_at", String),
    Column("note", Text),
)

ledger_outcomes = Table(
    "ledger_outcomes",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("step", String),
    Column("target", String),
    Column("status", String),
    Column("detail", Text),
    Column("started_at", String),
    Column("finished_at", String),
)

ledger_approvals = Table(
    "ledger_approvals",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("kind", String),
    Column("step", String),
    Column("requester", String),
    Column("approver_group", String),
    Column("required_approvers", String),
    Column("approver", String),
    Column("decision", String),
    Column("justification", Text),
    Column("via", String),
    Column("binding_hash", String),
    Column("created_at", String),
    Column("decided_at", String),
    Column("expires_at", String),
    Column("status", String),
    Column("reason", Text),
)

ledger_notifications = Table(
    "ledger_notifications",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("channel", String),
    Column("message_kind", String),
    Column("ok", String),
    Column("message_ts", String),
    Column("error", Text),
)

ledger_evidence = Table(
    "ledger_evidence",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("step", String),
    Column("name", String),
    Column("path", Text),
    Column("sha256", String),
    Column("size", String),
)

ledger_reports = Table(
    "ledger_reports",
    views,
    Column("seq", SeqType),
    Column("run_id", String),
    Column("format", String),
    Column("path", Text),
    Column("sha256", String),
    Column("size", String),
)
