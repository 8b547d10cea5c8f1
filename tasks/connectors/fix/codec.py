"""The FIX wire as the probe writes and reads it: build, frame-check, show.

Pure functions over simplefix messages; no sockets and no state. What goes out is strict:
header 8, 9, 35, 49, 56, 34, 52 in that order, SendingTime in UTC with milliseconds,
BodyLength and CheckSum computed by simplefix, 553/554 only on FIX.4.4 and later, 1137
DefaultApplVerID on FIXT.1.1. What comes in is frame-checked (``frame_problem``), so that
the session can ignore a garbled message as the FIX spec says.

Example:
    >>> parser = simplefix.FixParser(allow_empty_values=True)
    >>> parser.append_buffer(build_message(session, "0", 7, [(112, "OB-1")]).encode())
    >>> frame_problem(parser.get_message()) is None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import simplefix
from pydantic import SecretStr

from openbell import secrets
from openbell.runbooks.schema import FixSession

log = logging.getLogger(__name__)

#: Password and NewPassword: masked in transcripts.
SECRET_TAGS = frozenset({554, 925})
MASK = "***"

REJECT_REASONS = {
    "0": "invalid tag number",
    "1": "required tag missing",
    "2": "tag not defined for this message type",
    "3": "undefined tag",
    "4": "tag specified without a value",
    "5": "value is incorrect (out of range) for this tag",
    "6": "incorrect data format for value",
    "9": "CompID problem",
    "10": "SendingTime accuracy problem",
    "11": "invalid MsgType",
}


def build_message(
    session: FixSession,
    msg_type: str,
    seq: int,
    body: Iterable[tuple[int, str | None]],
    *,
    poss_dup: bool = False,
) -> Any:
    """A message with the standard header in the standard order.

    Args:
        session: whose BeginString and CompIDs go in the header (we are its sender).
        msg_type: MsgType (35).
        seq: MsgSeqNum (34).
        body: the fields after the header, in order; a None value is left out.
        poss_dup: mark as a resend: 43=Y and OrigSendingTime (122).

    Returns:
        A ``simplefix.FixMessage``; ``.encode()`` adds BodyLength and CheckSum.
    """
    now = datetime.now(UTC)
    msg = simplefix.FixMessage()
    msg.append_pair(8, session.begin_string)
    msg.append_pair(35, msg_type)
    msg.append_pair(49, session.sender_comp_id)
    msg.append_pair(56, session.target_comp_id)
    msg.append_pair(34, seq)
    if poss_dup:
        msg.append_pair(43, "Y")
    msg.append_utc_timestamp(52, now, precision=3)
    if poss_dup:
        msg.append_utc_timestamp(122, now, precision=3)
    for tag, value in body:
        msg.append_pair(tag, value)  # a None value is left out
    return msg


def sends_credentials(session: FixSession) -> bool:
    """Whether the Logon carries Username/Password: 553/554 exist from FIX.4.4 on.

    FIXT.1.1 included; FIX.4.2 has neither.
    """
    return session.begin_string != "FIX.4.2"


def logon_body(session: FixSession, password: SecretStr | None) -> list[tuple[int, str | None]]:
    """The fields of our Logon after the header, as the session's FIX version has them.

    Args:
        session: HeartBtInt, reset on logon, username and version come from it.
        password: sent as 554 where the version has it; revealed only here.

    Returns:
        ``(tag, value)`` pairs for ``build_message``; a None value is left out.
    """
    body: list[tuple[int, str | None]] = [(98, "0"), (108, str(session.heartbeat_s))]
    if session.reset_on_logon:
        body.append((141, "Y"))
    if sends_credentials(session):
        body.append((553, session.username))
        body.append((554, password.get_secret_value() if password else None))
    elif session.username or password:
        log.warning("FIX.4.2 has no Username/Password fields: not sending credentials")
    if session.begin_string == "FIXT.1.1":
        body.append((1137, session.default_appl_ver_id or "9"))
    return body


def wire_text(data: bytes) -> str:
    """Wire bytes as ``8=FIX.4.4|9=..|35=A|...|10=nnn``, with passwords masked.

    Example:
        >>> wire_text(b"8=FIX.4.4\x019=12\x0135=A\x01554=pw\x0110=123\x01")
        '8=FIX.4.4|9=12|35=A|554=***|10=123'
    """
    parts = []
    for field in data.rstrip(b"\x01").split(b"\x01"):
        tag, _, value = field.partition(b"=")
        shown = value.decode("utf-8", "replace")
        if tag.strip().isdigit() and int(tag) in SECRET_TAGS:
            shown = MASK
        parts.append(f"{tag.decode('utf-8', 'replace')}={shown}")
    return secrets.redact("|".join(parts))


def frame_problem(msg: Any) -> str | None:
    """What is wrong with a parsed message's framing (8, 9, 35 first; 9; 10), or None."""
    pairs = msg.pairs
    tags = [int(t) for t, _ in pairs]
    if len(tags) < 4 or tags[:3] != [8, 9, 35] or tags[-1] != 10:
        return "fields 8, 9, 35 must come first and 10 last"
    raw = msg.encode(raw=True)
    head = len(b"8=" + pairs[0][1] + b"\x019=" + pairs[1][1] + b"\x01")
    tail = len(b"10=" + pairs[-1][1] + b"\x01")
    body_length = len(raw) - head - tail
    checksum = sum(raw[: len(raw) - tail]) % 256
    if as_int(pairs[1][1].decode("ascii", "replace")) != body_length:
        return f"BodyLength 9={pairs[1][1].decode('ascii', 'replace')}, counted {body_length}"
    if as_int(pairs[-1][1].decode("ascii", "replace")) != checksum:
        return f"CheckSum 10={pairs[-1][1].decode('ascii', 'replace')}, computed {checksum:03d}"
    return None


def describe(msg: Any) -> str:
    """A Logout or Reject as the one line an on-call engineer needs.

    Example:
        >>> describe(reject)  # 35=3 with 45=2, 373=10 and a 58
        "Reject 373=10 (SendingTime accuracy problem) 45=2 58='SendingTime accuracy problem'"
    """
    kind = {"5": "Logout", "3": "Reject"}.get(field(msg, 35) or "", f"35={field(msg, 35)}")
    parts = [kind]
    reason = field(msg, 373)
    if reason is not None:
        parts.append(f"373={reason} ({REJECT_REASONS.get(reason, 'other')})")
    for tag in (45, 371, 789):
        if field(msg, tag) is not None:
            parts.append(f"{tag}={field(msg, tag)}")
    text = field(msg, 58)
    parts.append(f"58={text!r}" if text else "(no text)")
    return " ".join(parts)


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
