"""Alembic migrations of the ledger's schema (``tasks.ledger`` runs them when it opens).

No ``alembic.ini`` is needed: ``Ledger`` builds the Alembic ``Config`` itself and hands
its own connection, inside the transaction that holds the ledger's write lock, to
``env.py``. A new revision is a new file in ``versions/`` (``script.py.mako`` is the
template) whose ``down_revision`` is the current head; revisions never import
``tasks.ledger.models``, and never update or delete ledger entries.
"""

from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).resolve().parent
#: Alembic's own bookkeeping table, named so as not to collide with another app's.
VERSION_TABLE = "ledger_alembic_version"
