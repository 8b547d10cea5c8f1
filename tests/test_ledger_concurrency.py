"""Writer processes appending at once never fork the chain and never lose an entry.

Each writer is a separate process (multiprocessing, spawn) with its own ``Ledger``: they
all open (and so race to migrate) the same database, meet at a barrier, and append one
entry per transaction. ``benchmarks/ledger.py`` runs 16 x 1,000 and reports throughput.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

# Until tests/conftest.py lists it.

WRITERS, PER_WRITER = 8, 200


def _check(url: str) -> None:
    from tests.fixtures.ledger import run_writers

    run = run_writers(url, WRITERS, PER_WRITER)

    assert run.verify.ok, run.verify.describe()
    assert run.verify.count == WRITERS * PER_WRITER
    assert run.entries == WRITERS * PER_WRITER
    assert (run.forks, run.lost, run.duplicated) == (0, 0, 0)


def test_writer_processes_share_one_sqlite_chain(sqlite_ledger_url: str) -> None:
    _check(sqlite_ledger_url)


@pytest.mark.integration
def test_writer_processes_share_one_postgresql_chain(make_pg_url: Callable[[], str]) -> None:
    _check(make_pg_url())
