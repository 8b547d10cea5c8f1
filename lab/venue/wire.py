"""The venue's FIX wire: building, frame-checking and showing messages, and its fixed texts.

Deliberately independent of ``openbell.tasks.connectors.fix``: the venue is the probe's
counterparty, and a codec shared by both sides would let one bug pass on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import simplefix

#: Password and NewPassword: masked in the wire log.
SECRET_TAGS = frozenset({554, 925})
LOGON_REJECTED_TEXT = "Logon rejected: invalid username or password"


def build_message(
    begin_string: str,
    sender: str,
    target: str,
    msg_type: str,
    seq: int,
    now: datetime,
    body: Iterable[tuple[int, str | None]],
    *,
    poss_dup: bool = False,
) -> Any:
    """A message with the standard header in the standard order, sent at ``now``.

    Args:
        begin_string: BeginString (8).
        sender: SenderCompID (49), the venue's CompID on answers.
        target: TargetCompID (56).
        msg_type: MsgType (35).
        seq: MsgSeqNum (34).
        now: SendingTime (52), and OrigSendingTime (122) of a resend.
        body: the fields after the header, in order; a None value is left out.
        poss_dup: mark as a resend: 43=Y and 122.

    Returns:
        A ``simplefix.FixMessage``; ``.encode()`` adds BodyLength and CheckSum.
    """
    msg = simplefix.FixMessage()
    msg.append_pair(8, begin_string)
    msg.append_pair(35, msg_type)
    msg.append_pair(49, sender)
    msg.append_pair(56, target)
    msg.append_pair(34, seq)
    if poss_dup:
        msg.append_pair(43, "Y")
    msg.append_utc_timestamp(52, now.astimezone(UTC), precision=3)
    if poss_dup:
        msg.append_utc_timestamp(122, now.astimezone(UTC), precision=3)
    for tag, value in body:
        msg.append_pair(tag, value)
    return msg


def frame_problem(msg: Any) -> str | None:
    """Framing errors of a parsed message: field order, BodyLength, CheckSum."""
    pairs = msg.pairs
    if len(pairs) < 4 or [int(t) for t, _ in pairs[:3]] != [8, 9, 35] or int(pairs[-1][0]) != 10:
        return "8, 9, 35 must be the first fields and 10 the last"
    raw = msg.encode(raw=True)
    trailer = 4 + len(pairs[-1][1])  # "10=" + value + SOH
    header = 6 + len(pairs[0][1]) + len(pairs[1][1])  # "8=" v SOH "9=" v SOH
    length, checksum = len(raw) - header - trailer, sum(raw[:-trailer]) % 256
    if pairs[1][1] != str(length).encode():
        return f"BodyLength 9={pairs[1][1].decode(errors='replace')}, counted {length}"
    if pairs[-1][1] != f"{checksum:03d}".encode():
        return f"CheckSum 10={pairs[-1][1].decode(errors='replace')}, computed {checksum:03d}"
    return None


def wire_text(data: bytes) -> str:
    """Wire bytes with | for SOH and passwords masked.

    Example:
        >>> wire_text(b"8=FIX.4.4\x0135=A\x01554=pw\x0110=123\x01")
        '8=FIX.4.4|35=A|554=***|10=123'
    """
    fields = []
    for field in data.rstrip(b"\x01").split(b"\x01"):
        tag, _, value = field.partition(b"=")
        secret = tag.isdigit() and int(tag) in SECRET_TAGS
        shown = "***" if secret else value.decode("utf-8", "replace")
        fields.append(f"{tag.decode('utf-8', 'replace')}={shown}")
    return "|".join(fields)


def too_low_text(expected: int, received: int) -> str:
    """The 58 of a "sequence too low" Logout, in QuickFIX's wording."""
    return f"MsgSeqNum too low, expecting {expected} but received {received}"


def parse_utc(value: str | None) -> datetime | None:
    """A UTCTimestamp (seconds, ms, µs or ns precision) as an aware datetime."""
    if not value:
        return None
    whole, _, fraction = value.partition(".")
    try:
        moment = datetime.strptime(whole, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    if fraction and not fraction.isdigit():
        return None
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return moment.replace(microsecond=micros)


def field(msg: Any, tag: int) -> str | None:
    """The value of ``tag`` in a parsed message as text, None if absent."""
    value = msg.get(tag)
    return None if value is None else value.decode("utf-8", "replace")


def as_int(value: str | None) -> int | None:
    """A field value as an integer, None if absent or not a number."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
