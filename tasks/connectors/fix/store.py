"""The probe's memory between attempts: ``OPENBELL_HOME/state/fix/<session>.json``.

Two facts per session: the next MsgSeqNum to send (used when the session does not reset
on logon), and when the counterparty last said "sequence too low" (which starts the
probe's backoff). After an ambiguous end the stored number errs on the high side,
because "too high" heals itself (the acceptor sends a ResendRequest, the probe
gap-fills) and "too low" does not.

An unreadable file is logged and treated as absent; a file that cannot be written is
logged and the probe's result stands.

Example:
    >>> save_state("emea-oe", after_too_low(load_state("emea-oe"), expected=42))
    >>> refuse_if_recently_too_low("emea-oe", load_state("emea-oe"), backoff_s=60.0)
    Traceback (most recent call last):
    FixError: emea-oe: not retrying: last logon at ... was rejected as sequence too low ...
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from openbell.errors import FixError
from openbell.settings import get_settings

if TYPE_CHECKING:
    from openbell.tasks.connectors.fix.session import Initiator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeqState:
    """What the probe remembers about one session.

    Attributes:
        next_sender_seq: our next MsgSeqNum, when the session does not reset on logon.
        too_low_at: when the counterparty last answered "sequence too low".
        too_low_expected: the MsgSeqNum it said it expected then.
    """

    next_sender_seq: int = 1
    too_low_at: datetime | None = None
    too_low_expected: int | None = None


def state_path(name: str) -> Path:
    """Where the state of session ``name`` is kept (odd characters made safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return get_settings().home / "state" / "fix" / f"{safe}.json"


def load_state(name: str) -> SeqState:
    """The stored state of session ``name``; the initial state if none or unreadable."""
    path = state_path(name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        too_low = raw.get("too_low") or {}
        return SeqState(
            next_sender_seq=int(raw.get("next_sender_seq", 1)),
            too_low_at=datetime.fromisoformat(too_low["at"]) if too_low else None,
            too_low_expected=int(too_low["expected"]) if too_low else None,
        )
    except FileNotFoundError:
        return SeqState()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("FIX probe %s: ignoring unreadable state %s: %s", name, path, exc)
        return SeqState()


def save_state(name: str, state: SeqState) -> None:
    """Store the state of session ``name`` (atomically; a failure is only logged)."""
    path = state_path(name)
    too_low = None
    if state.too_low_at is not None:
        too_low = {"at": _iso(state.too_low_at), "expected": state.too_low_expected}
    data = {
        "session": name,
        "next_sender_seq": state.next_sender_seq,
        "too_low": too_low,
        "updated_at": _iso(datetime.now(UTC)),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("FIX probe %s: cannot save state %s: %s", name, path, exc)


def after_attempt(state: SeqState, conn: Initiator) -> SeqState:
    """After an attempt that got past "too low": keep our next MsgSeqNum (high side).

    A successful logon clears an earlier "too low"; an attempt that never sent leaves
    the state as it was.
    """
    if not conn.sent_any:
        return state
    if conn.logged_on:
        return SeqState(next_sender_seq=conn.next_out)
    return replace(state, next_sender_seq=conn.next_out)


def after_too_low(state: SeqState, expected: int) -> SeqState:
    """After "sequence too low, expecting ``expected``": continue there, start the backoff."""
    return SeqState(
        next_sender_seq=expected, too_low_at=datetime.now(UTC), too_low_expected=expected
    )


def refuse_if_recently_too_low(name: str, state: SeqState, backoff_s: float) -> None:
    """Raise ``FixError`` if the last "too low" answer is less than ``backoff_s`` old.

    So that a schedule or a retry policy cannot turn a sequence problem into a logon
    loop; 0 disables the guard.
    """
    if backoff_s <= 0 or state.too_low_at is None:
        return
    allowed = state.too_low_at + timedelta(seconds=backoff_s)
    if datetime.now(UTC) < allowed:
        raise FixError(
            name,
            "not retrying",
            f"last logon at {_iso(state.too_low_at)} was rejected as sequence too low "
            f"(expecting {state.too_low_expected}); next attempt allowed after {_iso(allowed)}",
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
