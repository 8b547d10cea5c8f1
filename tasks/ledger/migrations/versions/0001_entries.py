"""The append-only entries table, its guards, and the projection views.

Revision ID: 0001_entries
Revises:
Create Date: 2026-11-20

``entries`` is refused UPDATE and DELETE by the database itself: SQLite triggers that
``RAISE(ABORT, ...)``; on PostgreSQL a trigger function raising ``insufficient_privilege``
on UPDATE, DELETE and TRUNCATE. (An owner can still drop the triggers; that is what the
hash chain and the checkpoints are for.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_entries"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "ledger is append-only"

#: view -> (which entries, an extra join, columns). A column is (name, source): a dotted
#: path into the payload (``f:`` for the joined entry), or ``=SQL`` taken as is.
_VIEWS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "ledger_runs": (
        "e.kind = 'run_started'",
        "LEFT JOIN entries f ON f.run_id = e.run_id AND f.kind = 'run_finished'",
        [
            ("runbook", "runbook"),
            ("region", "region"),
            ("trade_date", "trade_date"),
            ("requester", "requester"),
            ("flow_run_id", "flow_run_id"),
            ("runbook_version", "runbook_version"),
            ("dry_run", "dry_run"),
            ("parameters", "parameters"),
            ("started_at", "started_at"),
            ("finished_at", "f:finished_at"),
            ("status", "f:status"),
        ],
    ),
    "ledger_steps": (
        "e.kind = 'step'",
        "",
        [
            ("step", "name"),
            ("title", "title"),
            ("status", "status"),
            ("started_at", "started_at"),
            ("finished_at", "finished_at"),
            ("note", "note"),
        ],
    ),
    "ledger_outcomes": (
        "e.kind = 'outcome'",
        "",
        [
            ("step", "step"),
            ("target", "outcome.target"),
            ("status", "outcome.status"),
            ("detail", "outcome.detail"),
            ("started_at", "outcome.started_at"),
            ("finished_at", "outcome.finished_at"),
        ],
    ),
    "ledger_approvals": (
        "e.kind IN ('approval_requested', 'approval_decided')",
        "",
        [
            ("kind", "=e.kind"),
            ("step", "step"),
            ("requester", "requester"),
            ("approver", "approver"),
            ("decision", "decision"),
            ("justification", "justification"),
            ("binding_hash", "binding_hash"),
            ("created_at", "created_at"),
            ("decided_at", "decided_at"),
            ("expires_at", "expires_at"),
        ],
    ),
    "ledger_notifications": (
        "e.kind = 'notification'",
        "",
        [
            ("channel", "channel"),
            ("message_kind", "kind"),
            ("ok", "ok"),
            ("message_ts", "ts"),
            ("error", "error"),
        ],
    ),
    "ledger_evidence": (
        "e.kind = 'evidence'",
        "",
        [
            ("step", "step"),
            ("name", "name"),
            ("path", "path"),
            ("sha256", "sha256"),
            ("size", "size"),
        ],
    ),
    "ledger_reports": (
        "e.kind = 'report'",
        "",
        [("format", "format"), ("path", "path"), ("sha256", "sha256"), ("size", "size")],
    ),
}


def _column(dialect: str, source: str) -> str:
    if source.startswith("="):
        return source[1:]
    table, _, path = source.rpartition(":")
    table = table or "e"
    if dialect == "sqlite":
        return f"json_extract({table}.payload, '$.{path}')"
    return f"(CAST({table}.payload AS jsonb) #>> '{{{path.replace('.', ',')}}}')"


def _view_sql(dialect: str, name: str) -> str:
    where, join, columns = _VIEWS[name]
    exprs = ["e.seq", "e.run_id", *(f"{_column(dialect, src)} AS {col}" for col, src in columns)]
    # Every piece is a constant of this file: nothing here comes from outside.
    return f"SELECT {', '.join(exprs)} FROM entries e {join} WHERE {where}"  # noqa: S608


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    seq_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "entries",
        sa.Column("seq", seq_type, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Column("ref", sa.String(128), nullable=True),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_entries_hash", "entries", ["hash"], unique=True)
    op.create_index("ix_entries_prev_hash", "entries", ["prev_hash"], unique=True)
    op.create_index("ix_entries_run_id_seq", "entries", ["run_id", "seq"])
    op.create_index("ix_entries_ref", "entries", ["ref"])
    op.create_index("ix_entries_ts", "entries", ["ts"])

    if dialect == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER entries_no_{event.lower()} BEFORE {event} ON entries "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION USING MESSAGE = '{APPEND_ONLY}: ' || TG_OP || ' refused', "
            "ERRCODE = 'insufficient_privilege'; END $$"
        )
        op.execute(
            "CREATE TRIGGER entries_no_update_delete BEFORE UPDATE OR DELETE ON entries "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )
        op.execute(
            "CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )
    else:
        raise RuntimeError(f"the ledger supports SQLite and PostgreSQL, not {dialect}")

    for name in _VIEWS:
        op.execute(f"CREATE VIEW {name} AS {_view_sql(dialect, name)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in _VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS entries_no_truncate ON entries")
        op.execute("DROP TRIGGER IF EXISTS entries_no_update_delete ON entries")
        op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
    op.drop_table("entries")
