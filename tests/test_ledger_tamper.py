"""The tamper matrix: any single change to a 10,000-entry chain is detected and located.

One chain per backend is built once; every trial makes one change as the database owner
would (triggers and unique indexes dropped), verifies against the last checkpoint, and
undoes the change. Positions are the first, the middle, the last and a seeded random
sample (``benchmarks/ledger.py`` runs 1,000 per change).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from openbell.tasks.ledger import Ledger

if TYPE_CHECKING:
    from tests.fixtures.ledger import Attacker, Trial

# Until tests/conftest.py lists it.

SQLITE_ENTRIES, SQLITE_SAMPLE = 10_000, 200
PG_ENTRIES, PG_SAMPLE = 2_000, 25


@pytest.fixture(scope="module")
def sqlite_chain(
    tmp_path_factory: pytest.TempPathFactory, make_attacker: Callable[[str], Attacker]
) -> Iterator[tuple[Ledger, Attacker, dict[str, Any], int]]:
    where = tmp_path_factory.mktemp("tamper-sqlite")
    yield from _chain(f"sqlite:///{where / 'ledger.db'}", SQLITE_ENTRIES, where, make_attacker)


@pytest.fixture(scope="module")
def pg_chain(
    tmp_path_factory: pytest.TempPathFactory,
    make_pg_url: Callable[[], str],
    make_attacker: Callable[[str], Attacker],
) -> Iterator[tuple[Ledger, Attacker, dict[str, Any], int]]:
    where = tmp_path_factory.mktemp("tamper-pg")
    yield from _chain(make_pg_url(), PG_ENTRIES, where, make_attacker)


def _chain(
    url: str, n: int, where: Path, make_attacker: Callable[[str], Attacker]
) -> Iterator[tuple[Ledger, Attacker, dict[str, Any], int]]:
    from tests.fixtures.ledger import build_chain

    with Ledger(url) as ledger:
        build_chain(ledger, n)
        checkpoint = ledger.checkpoint(where / "ledger-head.json")
        attacker = make_attacker(url)
        attacker.disarm()
        yield ledger, attacker, checkpoint, n
        # Every change was undone: the chain is whole again.
        assert ledger.verify(checkpoint=checkpoint).ok


CHANGES = ["altered", "rewritten", "deleted", "inserted", "reordered"]


def _trials(
    chain: tuple[Ledger, Attacker, dict[str, Any], int], change: str, sample: int, seed: int
) -> list[Trial]:
    from tests.fixtures.ledger import positions, tamper_trial

    ledger, attacker, checkpoint, n = chain
    rng = random.Random(f"{change}-{seed}")
    return [
        tamper_trial(ledger, attacker, change, p, n, rng, checkpoint)
        for p in positions(n, sample, rng)
    ]


@pytest.mark.parametrize("change", CHANGES)
def test_every_single_change_is_detected_and_located_on_sqlite(
    sqlite_chain: tuple[Ledger, Attacker, dict[str, Any], int], change: str
) -> None:
    trials = _trials(sqlite_chain, change, SQLITE_SAMPLE, seed=1)

    wrong = [str(t) for t in trials if not t.located]

    assert len(trials) >= SQLITE_SAMPLE
    assert all(t.detected for t in trials)
    assert wrong == []


@pytest.mark.integration
@pytest.mark.parametrize("change", CHANGES)
def test_every_single_change_is_detected_and_located_on_postgresql(
    pg_chain: tuple[Ledger, Attacker, dict[str, Any], int], change: str
) -> None:
    trials = _trials(pg_chain, change, PG_SAMPLE, seed=2)

    wrong = [str(t) for t in trials if not t.located]

    assert all(t.detected for t in trials)
    assert wrong == []


def test_the_untouched_chain_verifies(
    sqlite_chain: tuple[Ledger, Attacker, dict[str, Any], int],
) -> None:
    ledger, _, checkpoint, n = sqlite_chain

    result = ledger.verify(checkpoint=checkpoint)

    assert result.ok and result.count == n
