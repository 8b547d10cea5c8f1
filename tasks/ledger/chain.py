"""The hash chain itself: canonical JSON, entry hashes, and the walk that verifies them.

Pure functions, no database: ``Ledger.verify`` feeds them rows from SQL, and
``verify_bundle`` feeds them the entries of an exported JSON file.

An entry's hash covers everything stored about it except the hash itself::

    hash = sha256_hex(utf8(prev_hash + canonical_json({
        "kind": ..., "payload": ..., "prev_hash": ..., "ref": ..., "run_id": ...,
        "seq": ..., "ts": ...})))

Canonical JSON: keys sorted, no whitespace (separators ``,`` and ``:``), non-ASCII
characters as UTF-8 (not ``\\u`` escapes), no NaN or Infinity, datetimes as ISO-8601 UTC
with microseconds (``2026-11-27T08:00:00.000000Z``; naive datetimes are taken as UTC).
The payload is stored as its canonical JSON text, so the hash can be recomputed from the
stored bytes without parsing them.

How the walk names what it finds (first failure wins; positions are sequence numbers)::

    gap in seq, nothing claims to follow entry p-1      -> deleted   at p
    gap in seq, entry p sits elsewhere                  -> reordered at p
    entry p links to entry p-2 (p-1 looked valid)       -> inserted  at p-1
    entry p+1 links over entry p to entry p-1           -> inserted  at p
    entry p hashes right under another seq s            -> reordered at p
        ... s = p+1 and its predecessor is unknown      -> deleted   at p (renumbered)
    entry p does not hash right at all                  -> altered   at p
    entry p hashes right but follows an unknown hash    -> altered   at p-1 (re-hashed)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from json.encoder import encode_basestring
from pathlib import PurePath
from typing import Any, Literal, NamedTuple, Protocol
from uuid import UUID

from pydantic import BaseModel, SecretBytes, SecretStr

from openbell.secrets import MASK

GENESIS = "0" * 64
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Problem = Literal["altered", "deleted", "inserted", "reordered"]


def format_ts(value: datetime) -> str:
    """A datetime as the ledger's canonical UTC text (naive datetimes are taken as UTC).

    Example:
        >>> from datetime import timezone, timedelta
        >>> format_ts(datetime(2026, 11, 27, 9, 0, tzinfo=timezone(timedelta(hours=1))))
        '2026-11-27T08:00:00.000000Z'
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime:
    """The inverse of ``format_ts``: an aware UTC datetime."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_json_value(value: Any) -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    Datetimes become canonical UTC text, dates ISO dates, enums their value, pydantic
    models and dataclasses their fields, ``Decimal``/``UUID``/paths their text, sets
    sorted lists. Secret types become ``***``. Anything else is a ``TypeError``.
    """
    if isinstance(value, str | int | bool) or value is None:
        return value.value if isinstance(value, Enum) else value
    if isinstance(value, dict):
        return {_key(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no JSON form")
        return value
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | UUID | PurePath):
        return str(value)
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, BaseModel):
        return to_json_value(value.model_dump(mode="python"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {_key(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_json_value(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def _key(key: Any) -> str:
    if isinstance(key, Enum):
        key = key.value
    if isinstance(key, str):
        return key
    if isinstance(key, int | date | UUID):
        return str(key)
    raise TypeError(f"a JSON object key must be text, not {type(key).__name__}")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value``: stable across runs, machines and key order.

    Example:
        >>> canonical_json({"b": [1, 2.5], "a": "é", "t": datetime(2026, 11, 27, 8)})
        '{"a":"é","b":[1,2.5],"t":"2026-11-27T08:00:00.000000Z"}'
    """
    text = json.dumps(
        to_json_value(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    text.encode("utf-8")  # lone surrogates have no UTF-8 form: refuse them here
    return text


def _s(value: str | None) -> str:
    # json.dumps(value, ensure_ascii=False) without its overhead (the same C encoder).
    return "null" if value is None else encode_basestring(value)


def entry_hash(
    prev_hash: str,
    seq: int,
    kind: str,
    run_id: str | None,
    ref: str | None,
    ts: str,
    payload_json: str,
) -> str:
    """The hash of one entry, from its stored fields (``payload_json`` is canonical text).

    Equal to ``sha256(prev_hash + canonical_json(entry without hash))``; built by
    concatenation so that verifying does not parse and re-serialise every payload.
    """
    body = (
        '{"kind":' + _s(kind) + ',"payload":' + payload_json + ',"prev_hash":' + _s(prev_hash)
        + ',"ref":' + _s(ref) + ',"run_id":' + _s(run_id) + ',"seq":' + str(int(seq))
        + ',"ts":' + _s(ts) + "}"
    )  # fmt: skip
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


class RawEntry(NamedTuple):
    """One entry exactly as stored (``payload`` is its canonical JSON text)."""

    seq: int
    kind: str
    run_id: str | None
    ref: str | None
    ts: str
    payload: str
    prev_hash: str
    hash: str


def hashes_right(row: RawEntry, seq: int | None = None) -> bool:
    """Whether ``row``'s stored hash matches its content (numbered ``seq``, default its own)."""
    try:
        return (
            entry_hash(
                row.prev_hash,
                row.seq if seq is None else seq,
                row.kind,
                row.run_id,
                row.ref,
                row.ts,
                row.payload,
            )
            == row.hash
        )
    except (TypeError, ValueError, UnicodeError):
        return False


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What a walk of the chain found.

    Attributes:
        ok: the chain (and every checkpoint given) is intact.
        count: entries verified (all of them when ``ok``; those before the break otherwise).
        first_bad_seq: the position of the first problem, else None.
        problem: ``altered``, ``deleted``, ``inserted`` or ``reordered``, else None.
        detail: one sentence on what was found.
        head_seq: the last verified entry's seq (0 for an empty ledger).
        head_hash: the last verified entry's hash (the genesis hash for an empty ledger).
        signed_seq: with a checkpoint key, the last entry a signed checkpoint vouches for
            (0 when none does); None without a key.
        unverified: with a checkpoint key, the entries after ``signed_seq``: intact as a
            chain, but anyone who can write the ledger could have appended them.
    """

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: Problem | None = None
    detail: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS
    signed_seq: int | None = None
    unverified: int = 0

    def describe(self) -> str:
        """One line for a person.

        Example:
            >>> VerifyResult(True, 10_000, head_seq=10_000, head_hash="1a2b" * 16).describe()
            'OK: 10,000 entries, head 1a2b1a2b1a2b…'
            >>> VerifyResult(False, 4_511, 4_512, "altered", "its content does not match its hash"
            ...              ).describe()
            'BROKEN at entry 4,512: altered (its content does not match its hash)'
        """
        if self.ok:
            if self.count == 0:
                return "OK: 0 entries (empty ledger)"
            noun = "entry" if self.count == 1 else "entries"
            said = f"OK: {self.count:,} {noun}, head {self.head_hash[:12]}…"
            if self.signed_seq is None:
                return said
            if self.signed_seq == 0:
                return f"{said}; no signed checkpoint: all {self.unverified:,} unverified"
            after = (
                f"; {self.unverified:,} after it unverified (not yet signed)"
                if self.unverified
                else ""
            )
            return f"{said}; signed checkpoint at entry {self.signed_seq:,}{after}"
        where = f"{self.first_bad_seq:,}" if self.first_bad_seq is not None else "?"
        return f"BROKEN at entry {where}: {self.problem} ({self.detail})"

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON types (for ``--json`` output)."""
        return dataclasses.asdict(self)


class Lookup(Protocol):
    """Finds entries anywhere in the chain; used only to explain a failure."""

    def seqs_with_hash(self, value: str) -> list[int]:
        """Positions of the entries whose hash is ``value``."""
        ...

    def seqs_with_prev(self, value: str) -> list[int]:
        """Positions of the entries whose prev_hash is ``value``."""
        ...


def walk(
    rows: Iterable[RawEntry],
    lookup: Lookup,
    *,
    anchor_seq: int = 0,
    anchor_hash: str = GENESIS,
) -> VerifyResult:
    """Verify ``rows`` (in storage order) as the chain that follows ``anchor``.

    Args:
        rows: the entries, in the order they are stored (by seq, or a bundle's list order).
        lookup: finds entries by hash, to tell a deletion from a move or an insertion.
        anchor_seq: the seq just before the first row (0 for the whole ledger).
        anchor_hash: that entry's hash (``GENESIS`` for the whole ledger).

    Returns:
        OK with the count and head, or the first problem, classified and located.
    """
    expected = anchor_seq + 1
    h1, h2 = anchor_hash, None  # hashes of the last two accepted entries (h1 is the latest)
    it = _peekable(iter(rows))
    for row, nxt in it:
        if row.seq == expected and row.prev_hash == h1 and hashes_right(row):
            h2, h1 = h1, row.hash
            expected += 1
            continue
        problem, at, detail = _classify(row, nxt, expected, h1, h2, lookup, anchor_seq, anchor_hash)
        # The diagnosis may blame the entry before this one (inserted, or re-hashed).
        good_seq, good_hash = (expected - 1, h1) if at >= expected else (at - 1, h2 or anchor_hash)
        return VerifyResult(
            ok=False,
            count=good_seq - anchor_seq,
            first_bad_seq=at,
            problem=problem,
            detail=detail,
            head_seq=good_seq,
            head_hash=good_hash,
        )
    return VerifyResult(
        ok=True, count=expected - anchor_seq - 1, head_seq=expected - 1, head_hash=h1
    )


def _peekable(it: Iterator[RawEntry]) -> Iterator[tuple[RawEntry, RawEntry | None]]:
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        yield cur, nxt
        cur = nxt


def _classify(
    row: RawEntry,
    nxt: RawEntry | None,
    p: int,
    h1: str,
    h2: str | None,
    lookup: Lookup,
    anchor_seq: int,
    anchor_hash: str,
) -> tuple[Problem, int, str]:
    """Name and place the first failure at position ``p`` (see the module docstring)."""

    def known(value: str) -> list[int]:
        found = lookup.seqs_with_hash(value)
        return [anchor_seq, *found] if value == anchor_hash else found

    if row.seq > p:
        moved = [s for s in lookup.seqs_with_prev(h1) if s != row.seq]
        if moved:
            where = "further on" if moved[0] == p else f"as entry {moved[0]:,}"
            return "reordered", p, f"entry {p:,} is out of place: it is stored {where}"
        missing = f"entry {p:,} is" if row.seq == p + 1 else f"entries {p:,}-{row.seq - 1:,} are"
        return "deleted", p, f"{missing} missing: entry {row.seq:,} follows entry {p - 1:,}"
    if row.seq < p:
        if nxt is not None and nxt.seq == p:
            return "inserted", p, f"an extra entry numbered {row.seq:,} sits before entry {p:,}"
        return "reordered", p, f"position {p:,} holds an entry numbered {row.seq:,}"

    intact = hashes_right(row)
    linked = row.prev_hash == h1
    if (
        not linked
        and h2 is not None
        and row.prev_hash == h2
        and (intact or hashes_right(row, p - 1))
    ):
        return (
            "inserted",
            p - 1,
            f"entry {p - 1:,} does not belong to the chain: entry {p:,} links to entry {p - 2:,}",
        )
    if nxt is not None and nxt.prev_hash == h1 and row.prev_hash != nxt.hash:
        return (
            "inserted",
            p,
            f"entry {p:,} does not belong to the chain: the next entry links to entry {p - 1:,}",
        )
    if not intact:
        before = known(row.prev_hash)
        for s in dict.fromkeys([p + 1, p - 1, *(q + 1 for q in before)]):
            if s != p and s > anchor_seq and hashes_right(row, s):
                if not before and s == p + 1:
                    return (
                        "deleted",
                        p,
                        f"entry {p:,} is missing: the entries after it were renumbered",
                    )
                return "reordered", p, f"entry {s:,} was moved to position {p:,}"
        return "altered", p, "its content does not match its hash"
    before = known(row.prev_hash)
    if before:
        return "reordered", p, f"entry {p:,} follows entry {before[0]:,}, not entry {p - 1:,}"
    if p - 1 > anchor_seq:
        return (
            "altered",
            p - 1,
            f"entry {p - 1:,} was rewritten: entry {p:,} recorded a different hash for it",
        )
    first = "the genesis hash" if anchor_hash == GENESIS else "the anchor hash"
    return "altered", p, f"its prev_hash is not {first}"


def checkpoint_mac(key: bytes, checkpoint: Mapping[str, Any]) -> str:
    """The signature of a checkpoint: HMAC-SHA256 over its canonical JSON without ``mac``."""
    import hmac

    body = {k: v for k, v in checkpoint.items() if k != "mac"}
    return "hmac-sha256:" + hmac.new(key, canonical_json(body).encode(), "sha256").hexdigest()


def check_signed(
    result: VerifyResult, checkpoints: Iterable[Mapping[str, Any]], key: bytes
) -> tuple[VerifyResult, list[Mapping[str, Any]]]:
    """Keep the checkpoints ``key`` signed; a checkpoint with a bad signature breaks.

    Unsigned checkpoints (written before there was a key) are left out: they vouch for
    nothing a writer of the reports folder could not have written.

    Returns:
        (``result``, or a failure at a forged checkpoint; the signed checkpoints).
    """
    import hmac

    signed: list[Mapping[str, Any]] = []
    for cp in checkpoints:
        mac = cp.get("mac")
        if mac is None:
            continue
        if not hmac.compare_digest(str(mac), checkpoint_mac(key, cp)):
            bad = dataclasses.replace(
                result,
                ok=False,
                first_bad_seq=int(cp["seq"]),
                problem="altered",
                detail=(
                    f"the checkpoint of {cp.get('time', '?')} at entry {int(cp['seq']):,} "
                    "has a bad signature: it was forged or edited"
                ),
            )
            return bad, signed
        signed.append(cp)
    return result, signed


def check_checkpoints(
    result: VerifyResult,
    checkpoints: Iterable[Mapping[str, Any]],
    hash_at: Callable[[int], str | None],
) -> VerifyResult:
    """Check an intact walk against checkpoints (truncation and wholesale rewrites).

    Args:
        result: an ``ok`` walk of the whole chain (a broken one is returned as is).
        checkpoints: mappings with ``seq`` and ``hash`` (and ``time``), as ``checkpoint`` wrote.
        hash_at: ``hash_at(seq) -> str | None``, the stored hash of entry ``seq``.

    Returns:
        ``result``, or a failure at the earliest checkpoint the chain no longer matches.
    """
    if not result.ok:
        return result
    for cp in sorted(checkpoints, key=lambda c: int(c["seq"])):
        seq, want, when = int(cp["seq"]), str(cp["hash"]), cp.get("time", "?")
        if seq == 0:
            continue
        if seq > result.head_seq:
            return dataclasses.replace(
                result,
                ok=False,
                first_bad_seq=result.head_seq + 1,
                problem="deleted",
                detail=(
                    f"the chain ends at entry {result.head_seq:,} but the checkpoint of {when} "
                    f"recorded entry {seq:,}: entries were removed from the end"
                ),
            )
        if hash_at(seq) != want:
            return dataclasses.replace(
                result,
                ok=False,
                first_bad_seq=seq,
                problem="altered",
                detail=(
                    f"entry {seq:,} differs from the checkpoint of {when}: "
                    "the chain was rewritten at or before it"
                ),
            )
    return result
