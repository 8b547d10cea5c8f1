"""Alembic environment for the ledger: runs on the connection ``Ledger`` passes in.

``Ledger`` opens a transaction, takes the ledger's write lock (``BEGIN IMMEDIATE`` on
SQLite, a transaction-level advisory lock on PostgreSQL), and passes that connection as
``config.attributes["connection"]``; so processes that open the same ledger at once
migrate it exactly once. Offline mode (``--sql``) renders the DDL for a URL instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData

from openbell.tasks.ledger.migrations import VERSION_TABLE

config = context.config


def _target_metadata() -> MetaData:
    # Only autogenerate needs the models; imported late so that migrating never depends
    # on the current models (a revision is frozen history).
    from openbell.tasks.ledger.models import Base

    return Base.metadata


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the ledger migrations run through tasks.ledger.Ledger, which passes its "
            "connection; open the ledger instead of calling alembic directly"
        )
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
