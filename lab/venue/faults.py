"""The faults the venue honours (``lab.faults``), and what each makes it say.

Read from the book at each logon:

- ``fix_logon_rejected`` (session): Logout 58="Logon rejected: invalid username or
  password", disconnect.
- ``fix_seq_too_low`` (session, ``expected``, default 100): the too-low Logout (with 789
  from FIX.4.4 on), disconnect; the venue then expects ``expected``.

Read at each answer:

- ``latency`` (``*``, ``ms``): every answer waits ``ms`` first.

Example:
    >>> book.add("fix_seq_too_low", "emea-oe", expected=42)
    >>> logon_fault(book, "emea-oe", seq=1).text
    'MsgSeqNum too low, expecting 42 but received 1'
"""

from __future__ import annotations

from dataclasses import dataclass

from openbell.lab.faults import FaultBook
from openbell.lab.venue.wire import LOGON_REJECTED_TEXT, too_low_text


@dataclass(frozen=True)
class LogonFault:
    """A fault that answers a Logon in the session's place.

    Attributes:
        event: the wire-log event line naming the fault.
        text: the 58 of the Logout the venue answers with.
        expected: ``fix_seq_too_low``: the MsgSeqNum the venue expects from now on.
    """

    event: str
    text: str
    expected: int | None = None


def logon_fault(book: FaultBook, session: str, seq: int) -> LogonFault | None:
    """The fault set on ``session`` that answers a Logon with MsgSeqNum ``seq``, if any."""
    if book.get("fix_logon_rejected", session):
        return LogonFault("fault fix_logon_rejected", LOGON_REJECTED_TEXT)
    fault = book.get("fix_seq_too_low", session)
    if fault is None:
        return None
    expected = int(fault.params.get("expected", 100))
    return LogonFault(
        f"fault fix_seq_too_low expected={expected}", too_low_text(expected, seq), expected
    )


def answer_delay_s(book: FaultBook) -> float:
    """How long an answer waits first (the ``latency`` fault), 0 without it."""
    return book.latency_s()
