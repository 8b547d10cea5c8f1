"""Export bundles: a slice of the chain as one JSON file that verifies with no database.

A bundle holds the entries of a time range in order, the *anchor* (seq and hash of the
entry just before the first exported one, or the genesis hash), the head of the slice,
and a description of the algorithm, so that anyone can re-check it with nothing but
``sha256`` and a JSON parser::

    {
      "format": "openbell-ledger-bundle/1",
      "algorithm": {...},
      "anchor": {"seq": 4511, "hash": "..."},
      "head": {"seq": 4600, "hash": "..."},
      "count": 89,
      "entries": [{"seq": 4512, "kind": ..., "payload": {...}, "prev_hash": ..., "hash": ...}]
    }

The anchor and head tie the slice to the rest of the chain: compare them with a
checkpoint (``ledger-checkpoints.jsonl``, the run's Slack summary) or with the live
ledger to know the slice is the one that was recorded.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openbell.tasks.ledger.chain import (
    GENESIS,
    RawEntry,
    VerifyResult,
    canonical_json,
    walk,
)
from openbell.tasks.ledger.errors import LedgerError

FORMAT = "openbell-ledger-bundle/1"

ALGORITHM: dict[str, Any] = {
    "hash": "sha256, lower-case hex",
    "entry_hash": (
        "sha256(utf8(prev_hash + canonical_json({kind, payload, prev_hash, ref, run_id, seq, ts})))"
    ),
    "canonical_json": (
        "keys sorted, no whitespace (separators ',' and ':'), non-ASCII as UTF-8 (no \\u "
        "escapes), no NaN or Infinity, datetimes as ISO-8601 UTC 'YYYY-MM-DDTHH:MM:SS.ffffffZ'"
    ),
    "genesis_prev_hash": GENESIS,
    "chain": (
        "entries[0].prev_hash == anchor.hash and entries[0].seq == anchor.seq + 1; for each "
        "next entry, prev_hash == the previous entry's hash and seq == the previous seq + 1; "
        "the last entry is head"
    ),
    "secrets": "payloads were redacted of registered secret values before hashing",
}


def write_bundle(
    path: Path,
    rows: Sequence[RawEntry],
    *,
    anchor_seq: int,
    anchor_hash: str,
    meta: Mapping[str, Any],
) -> Path:
    """Write ``rows`` (consecutive, in seq order) as a bundle at ``path``, atomically."""
    last_seq, last_hash = (rows[-1].seq, rows[-1].hash) if rows else (anchor_seq, anchor_hash)
    doc = {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        **meta,
        "anchor": {"seq": anchor_seq, "hash": anchor_hash},
        "head": {"seq": last_seq, "hash": last_hash},
        "count": len(rows),
        "entries": [
            {
                "seq": r.seq,
                "kind": r.kind,
                "run_id": r.run_id,
                "ref": r.ref,
                "ts": r.ts,
                "payload": json.loads(r.payload),
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in rows
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, sort_keys=True, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class _ListLookup:
    def __init__(self, rows: Sequence[RawEntry]) -> None:
        self._by_hash: dict[str, list[int]] = defaultdict(list)
        self._by_prev: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            self._by_hash[r.hash].append(r.seq)
            self._by_prev[r.prev_hash].append(r.seq)

    def seqs_with_hash(self, value: str) -> list[int]:
        return list(self._by_hash.get(value, ()))

    def seqs_with_prev(self, value: str) -> list[int]:
        return list(self._by_prev.get(value, ()))


_INVALID = "\x00"  # hashes to nothing a real entry has: an unparseable payload never verifies


def _raw(item: Any, index: int) -> RawEntry:
    if not isinstance(item, dict):
        raise LedgerError(f"bundle entry #{index} is not an object")
    try:
        payload = canonical_json(item.get("payload"))
    except (TypeError, ValueError, UnicodeError):
        payload = _INVALID
    seq = item.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise LedgerError(f"bundle entry #{index}: seq {seq!r} is not an integer")
    return RawEntry(
        seq=seq,
        kind=str(item.get("kind")),
        run_id=item.get("run_id"),
        ref=item.get("ref"),
        ts=str(item.get("ts")),
        payload=payload,
        prev_hash=str(item.get("prev_hash")),
        hash=str(item.get("hash")),
    )


def verify_bundle(path: str | Path) -> VerifyResult:
    """Verify an exported bundle offline: no database, only the file.

    Checks every entry's hash, the links from the anchor to the last entry, and that the
    last entry and the count are the ones the bundle's header declares.

    Args:
        path: a file written by ``Ledger.export``.

    Returns:
        The walk's result; a truncated or padded bundle fails at the first missing or
        extra position.

    Raises:
        LedgerError: the file is not a ledger bundle at all.

    Example:
        >>> verify_bundle("audit-2026-11-24.json").describe()  # doctest: +SKIP
        'OK: 1,204 entries, head 9f2c4e1ab0d3…'
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LedgerError(f"{path}: cannot read the bundle: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LedgerError(f"{path}: not a ledger bundle (format is not {FORMAT!r})")
    try:
        anchor_seq = int(doc["anchor"]["seq"])
        anchor_hash = str(doc["anchor"]["hash"])
        head_seq = int(doc["head"]["seq"])
        head_hash = str(doc["head"]["hash"])
        items = doc["entries"]
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"{path}: the bundle's anchor, head or entries are missing") from exc
    if not isinstance(items, list):
        raise LedgerError(f"{path}: the bundle's entries are not a list")
    rows = [_raw(item, i) for i, item in enumerate(items)]
    result = walk(rows, _ListLookup(rows), anchor_seq=anchor_seq, anchor_hash=anchor_hash)
    if not result.ok:
        return result
    declared = doc.get("count")
    if result.head_seq < head_seq:
        return VerifyResult(
            ok=False,
            count=result.count,
            first_bad_seq=result.head_seq + 1,
            problem="deleted",
            detail=f"the bundle ends at entry {result.head_seq:,} but its head is {head_seq:,}",
            head_seq=result.head_seq,
            head_hash=result.head_hash,
        )
    if result.head_seq > head_seq:
        return VerifyResult(
            ok=False,
            count=result.count,
            first_bad_seq=head_seq + 1,
            problem="inserted",
            detail=f"the bundle goes on past its head {head_seq:,}",
            head_seq=result.head_seq,
            head_hash=result.head_hash,
        )
    if result.head_hash != head_hash or declared != result.count:
        return VerifyResult(
            ok=False,
            count=result.count,
            first_bad_seq=head_seq,
            problem="altered",
            detail="the last entry or the count differs from the bundle's header",
            head_seq=result.head_seq,
            head_hash=result.head_hash,
        )
    return result
