"""What the ledger holds: an ``Entry`` as read back, a ``NewEntry`` to append."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel

from openbell.tasks.ledger.chain import RawEntry, parse_ts
from openbell.tasks.ledger.models import entries as T

# The columns of an entry, in ``RawEntry``'s order: ``select(*COLUMNS)`` reads entries.
COLUMNS = (T.c.seq, T.c.kind, T.c.run_id, T.c.ref, T.c.ts, T.c.payload, T.c.prev_hash, T.c.hash)


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


def entry_of(row: Iterable[Any]) -> Entry:
    """The ``Entry`` of a row read with ``select(*COLUMNS)``."""
    return Entry.from_raw(RawEntry._make(row))
