"""The run ledger: append-only, hash-chained, the record of truth for compliance.

Every run writes who started it, its plan, every step and per-target outcome, every
approval request and decision, every notification, evidence file and report, as an
*entry*. Entries form one chain: each carries the hash of the entry before it, and its
own hash covers its content and that link::

     genesis          entry 1                 entry 2                 entry N (head)
    ┌───────┐   ┌────────────────────┐   ┌────────────────────┐   ┌────────────────┐
    │ 000…0 │◄──┤ prev_hash = 000…0  │◄──┤ prev_hash = h1     │◄──┤ prev_hash = …  │
    └───────┘   │ seq 1, kind, ts,   │   │ seq 2, kind, ts,   │   │ seq N, ...     │
                │ run_id, ref,       │   │ run_id, ref,       │   │                │
                │ payload (JSON)     │   │ payload (JSON)     │   │                │
                │ hash h1            │   │ hash h2            │   │ hash hN ───────┼──► checkpoint
                └────────────────────┘   └────────────────────┘   └────────────────┘   (file, Slack)

    hash = sha256(prev_hash + canonical_json({kind, payload, prev_hash, ref, run_id, seq, ts}))

Changing any stored byte breaks that entry's hash; deleting, inserting or moving an entry
breaks a link; rewriting an entry *and* its hash breaks the next entry's link; removing
entries from the end, or rewriting the whole tail, no longer matches the last checkpoint.
``Ledger.verify`` walks the chain and names the first problem and its position; the
database itself refuses UPDATE and DELETE (triggers), so tampering needs owner rights
and leaves this trace. Payloads are redacted of registered secrets before they are
hashed: a secret is never stored.

What the chain cannot tell: an entry *appended* at the end by someone with write access
is as valid as any other (there is no signing key); the checkpoints bound what can be
rewritten, not who may append.

Usage::

    from openbell.tasks.ledger import Ledger

    with Ledger() as ledger:                      # OPENBELL_LEDGER_URL or OPENBELL_HOME/ledger.db
        run_id = ledger.start_run_from_record(record, parameters=params)
        ledger.record_step(run_id, step_result)
        ledger.finish_run(run_id, record.status)
        ledger.checkpoint()                       # reports/ledger-head.json (+ .jsonl)
        print(ledger.verify().describe())         # OK: 1,234 entries, head 9f2c4e1ab0d3…
"""

from __future__ import annotations

from openbell.tasks.ledger.bundle import verify_bundle
from openbell.tasks.ledger.chain import (
    GENESIS,
    Problem,
    VerifyResult,
    canonical_json,
    entry_hash,
    format_ts,
)
from openbell.tasks.ledger.entry import Entry, NewEntry
from openbell.tasks.ledger.errors import LedgerError, RunLockedError
from openbell.tasks.ledger.runs import CompletionKey
from openbell.tasks.ledger.store import Ledger, ledger_url

__all__ = [
    "GENESIS",
    "CompletionKey",
    "Entry",
    "Ledger",
    "LedgerError",
    "NewEntry",
    "Problem",
    "RunLockedError",
    "VerifyResult",
    "canonical_json",
    "entry_hash",
    "format_ts",
    "ledger_url",
    "verify_bundle",
]
