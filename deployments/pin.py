"""The estate a region's runs must use: pinned by ``openbell deploy``, kept in the ledger.

A run obeys two files: the estate (hosts, apps, approval rules) and its entitlements (who
may do what). Whoever can hand a run other files can lift every control, so ``openbell
deploy`` records, per region, the sha256 and the full text of both in a ``estate_pinned``
ledger entry (hash-chained like everything else). A run that acts (not a plan, not a dry
run) on files whose digests differ from its region's pin is refused and the refusal
recorded, unless the person is entitled to ``run-unpinned`` **by the pinned rules**: rules
in a file the operator brought along never vouch for themselves. The same holds for the
next ``openbell deploy``: it needs ``deploy`` by the rules in force (the pinned ones).

A region nobody has deployed has no pin: its runs are not restricted by this module (the
other controls still apply), and the run records that it ran unpinned.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openbell.errors import EstateError

if TYPE_CHECKING:
    from openbell.runbooks.entitlements import Entitlements
    from openbell.runbooks.schema import Estate
    from openbell.tasks.ledger import Ledger

KIND = "estate_pinned"


def pin_ref(region: str) -> str:
    """The ledger ref a region's pins go by."""
    return f"pin:{region.lower()}"


def digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Pin:
    """What a deploy pinned for one region."""

    region: str
    estate_path: str
    estate_sha256: str
    estate_text: str
    entitlements_path: str | None
    entitlements_sha256: str | None
    entitlements_text: str | None
    by: str
    seq: int
    at: str

    @classmethod
    def from_entry(cls, seq: int, ts: Any, payload: dict[str, Any]) -> Pin:
        est, ent = payload["estate"], payload.get("entitlements") or {}
        return cls(
            region=payload["region"],
            estate_path=est["path"],
            estate_sha256=est["sha256"],
            estate_text=est["text"],
            entitlements_path=ent.get("path"),
            entitlements_sha256=ent.get("sha256"),
            entitlements_text=ent.get("text"),
            by=payload.get("by", "?"),
            seq=seq,
            at=str(ts),
        )

    def differences(self, estate: Estate) -> list[str]:
        """How ``estate`` (its file and its entitlements file) differs from this pin."""
        found = []
        have = _facts(estate.source)
        if have[1] != self.estate_sha256:
            found.append(
                f"estate {estate.source} is sha256:{_short(have[1])}, the pinned estate "
                f"({self.estate_path}) sha256:{_short(self.estate_sha256)}"
            )
        ent = _facts(estate.entitlements)
        if ent[1] != self.entitlements_sha256:
            found.append(
                f"entitlements {estate.entitlements} are sha256:{_short(ent[1])}, the pinned "
                f"ones ({self.entitlements_path}) sha256:{_short(self.entitlements_sha256)}"
            )
        return found

    def describe(self) -> str:
        return f"pinned by {self.by} at {self.at} (ledger seq {self.seq})"


def _short(value: str | None) -> str:
    return value[:12] if value else "(none)"


def _facts(path: str | Path | None) -> tuple[str | None, str | None, str | None]:
    """(path, sha256, text) of a file, or Nones when there is none or it cannot be read."""
    if path is None:
        return None, None, None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return str(path), None, None
    return str(path), hashlib.sha256(data).hexdigest(), data.decode("utf-8", "replace")


def latest_pin(ledger: Ledger, region: str) -> Pin | None:
    """The region's pin in force (the last one recorded), or None if it was never deployed."""
    found = ledger.entries(kinds=[KIND], ref=pin_ref(region))
    if not found:
        return None
    last = found[-1]
    return Pin.from_entry(last.seq, last.ts, last.payload)


def record_pins(
    ledger: Ledger, estate: Estate, *, by: str, proof: dict[str, Any] | None
) -> list[Pin]:
    """Pin ``estate`` for every region it has; one ledger entry per region."""
    from openbell.tasks.ledger.entry import NewEntry

    path, sha, text = _facts(estate.source)
    if sha is None or path is None or text is None:
        raise EstateError("cannot read the estate to pin it", file=estate.source)
    ent = _facts(estate.entitlements)
    items = []
    for region in sorted(estate.regions):
        payload = {
            "region": region,
            "estate": {"path": path, "sha256": sha, "text": text},
            "entitlements": {"path": ent[0], "sha256": ent[1], "text": ent[2]},
            "by": by,
            "proof": proof,
        }
        items.append(NewEntry(KIND, None, payload, pin_ref(region)))
    entries = ledger.append_many(items)
    return [Pin.from_entry(e.seq, e.ts, e.payload) for e in entries]


def pinned_entitlements(pin: Pin) -> Entitlements:
    """The rules in force: the pinned entitlements, read with the pinned estate.

    Both come from the ledger's copy of their text, not from the files (which may have
    changed since), and their digests are checked against the pin first.

    Raises:
        EstateError: the pin's text does not match its digest, names no entitlements, or
            no longer loads (then no one is entitled by it).
    """
    from openbell.runbooks.entitlements import load_entitlements
    from openbell.runbooks.loader import load_estate

    if pin.entitlements_text is None or pin.entitlements_sha256 is None:
        raise EstateError(f"the pin of {pin.region} ({pin.describe()}) holds no entitlements")
    for text, sha, what in (
        (pin.estate_text, pin.estate_sha256, "estate"),
        (pin.entitlements_text, pin.entitlements_sha256, "entitlements"),
    ):
        if hashlib.sha256(text.encode()).hexdigest() != sha:
            raise EstateError(
                f"the pinned {what} of {pin.region} ({pin.describe()}) does not match its "
                "sha256: run openbell audit verify"
            )
    with tempfile.TemporaryDirectory(prefix="openbell-pin-") as tmp:
        est = Path(tmp) / "estate.yaml"
        ent = Path(tmp) / "entitlements.yaml"
        est.write_text(pin.estate_text)
        ent.write_text(pin.entitlements_text)
        estate = load_estate(est, entitlements=ent)
        return load_entitlements(ent, estate, shown=f"{pin.entitlements_path} (pinned)")
