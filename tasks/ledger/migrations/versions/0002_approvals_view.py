"""ledger_approvals reads the approval entries the flows write (nested payloads, verdicts).

Revision ID: 0002_approvals_view
Revises: 0001_entries
Create Date: 2026-11-30

The flows record ``approval_requested`` as ``{"request": {...}, "summary", "changes"}``,
``approval_decided`` as ``{"decision": {...}, "via"}`` and ``approval_verdict`` flat; the
first view read flat fields only. Each column now takes the first path that is there, so
rows written either way read the same.
"""

from __future__ import annotations

from alembic import op

revision = "0002_approvals_view"
down_revision = "0001_entries"
branch_labels = None
depends_on = None

#: column -> payload paths, first present wins.
_COLUMNS: list[tuple[str, list[str]]] = [
    ("step", ["request.step", "decision.step", "step"]),
    ("requester", ["request.requester", "requester"]),
    ("approver_group", ["request.approver_group", "approver_group"]),
    ("required_approvers", ["request.required_approvers", "required_approvers"]),
    ("approver", ["decision.approver", "approver"]),
    ("decision", ["decision.decision", "decision"]),
    ("justification", ["decision.justification", "justification"]),
    ("via", ["via"]),
    ("binding_hash", ["request.binding_hash", "decision.binding_hash", "binding_hash"]),
    ("created_at", ["request.created_at", "created_at"]),
    ("decided_at", ["decision.decided_at", "decided_at"]),
    ("expires_at", ["request.expires_at", "expires_at"]),
    ("status", ["status"]),
    ("reason", ["reason"]),
]


def _path(dialect: str, path: str) -> str:
    if dialect == "sqlite":
        # json_extract of an object gives JSON text: only scalars are wanted here.
        return (
            f"CASE WHEN json_type(e.payload, '$.{path}') IN ('object', 'array') THEN NULL "
            f"ELSE json_extract(e.payload, '$.{path}') END"
        )
    return (
        f"CASE WHEN jsonb_typeof(CAST(e.payload AS jsonb) #> '{{{path.replace('.', ',')}}}') "
        f"IN ('object', 'array') THEN NULL "
        f"ELSE CAST(e.payload AS jsonb) #>> '{{{path.replace('.', ',')}}}' END"
    )


def _view(dialect: str) -> str:
    def first(paths: list[str]) -> str:
        exprs = [_path(dialect, p) for p in paths]
        return exprs[0] if len(exprs) == 1 else f"COALESCE({', '.join(exprs)})"

    cols = ", ".join(f"{first(paths)} AS {name}" for name, paths in _COLUMNS)
    kinds = "('approval_requested', 'approval_decided', 'approval_verdict')"
    # Every piece is a constant of this file: nothing here comes from outside.
    return f"SELECT e.seq, e.run_id, e.kind, {cols} FROM entries e WHERE e.kind IN {kinds}"  # noqa: S608


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS ledger_approvals")
    op.execute(f"CREATE VIEW ledger_approvals AS {_view(dialect)}")


def downgrade() -> None:
    from importlib import import_module

    first = import_module("openbell.tasks.ledger.migrations.versions.0001_entries")
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS ledger_approvals")
    op.execute(f"CREATE VIEW ledger_approvals AS {first._view_sql(dialect, 'ledger_approvals')}")
