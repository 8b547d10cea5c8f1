"""FIX: the session health probe before the open and the Logout that ends the FIX day.

The probe logs on, proves the session answers and logs out, as an on-call engineer
would by hand before the open (DOMAIN.md, "FIX session layer essentials")::

    TCP connect ─► Logon 35=A ─► Logon back, 108 echoed
      ─► TestRequest 35=1 with a unique 112 ─► Heartbeat 35=0 with the same 112
         within min(2 s, HeartBtInt)
      ─► Logout 35=5 ─► Logout back (bounded wait) ─► close

Every step has a deadline, and the whole probe never takes longer than ``timeout_s``
(default: the session's ``timeout_s``) plus ``DEADLINE_MARGIN_S``.

Modules, one concern each:

- ``codec``: building, frame-checking and showing messages (simplefix lives here); strict
  in what it sends.
- ``session``: ``Initiator``, one connection's session layer (our sequence numbers, the
  counterparty's, admin messages, the deadline), and what a "too low" answer expects;
  tolerant in what it accepts.
- ``store``: the sequence state kept between probes in
  ``OPENBELL_HOME/state/fix/<session>.json``.
- ``probe``: ``probe_session``, ``probe_sessions``, ``end_of_day_logout`` and their
  results.

Sequence numbers: with ``reset_on_logon`` (the default) the Logon carries 141=Y and
34=1. Otherwise the probe continues from the number stored after its previous attempt on
that session. After an ambiguous end the stored number errs on the high side, because
"too high" heals itself (the acceptor sends a ResendRequest, the probe gap-fills) and
"too low" does not.

"MsgSeqNum too low, expecting N" -- the 58 text in the wording of the common engines, or
789=N on the Logout -- raises ``FixSequenceTooLowError(expected=N)``. N is recorded in the
state file (and used as the next MsgSeqNum when the session does not reset on logon), and
for ``too_low_backoff_s`` (a minute) the probe refuses to log on to that session again, so
that a schedule or a retry policy cannot turn it into a logon loop.

Errors (``openbell.errors``), each naming the session, what was tried and what came
back::

    FixError                     refused, connection lost, 108 not echoed, wrong 112,
     │                           session Reject, counterparty Logout, "not retrying"
     ├── FixLogonRejectedError   Logout or Reject in answer to our Logon (its 58 text)
     ├── FixSequenceTooLowError  .expected is the MsgSeqNum the counterparty wants
     └── FixTimeoutError         no TCP answer, no Logon answer, no Heartbeat in time

Example:
    >>> from openbell.tasks.connectors import fix
    >>> result = asyncio.run(fix.probe_session("emea-oe", estate.fix_sessions["emea-oe"]))
    >>> result.heartbeat_echoed, result.logout_clean
    (30, True)
"""

from openbell.tasks.connectors.fix.codec import MASK, SECRET_TAGS, frame_problem, wire_text
from openbell.tasks.connectors.fix.probe import (
    TOO_LOW_BACKOFF_S,
    LogoutResult,
    ProbeResult,
    end_of_day_logout,
    probe_session,
    probe_sessions,
)
from openbell.tasks.connectors.fix.session import (
    DEADLINE_MARGIN_S,
    HEARTBEAT_WAIT_MAX_S,
    LOGOUT_GRACE_S,
    LOGOUT_WAIT_MAX_S,
    TRANSCRIPT_MAX,
    Direction,
    expected_seq_from_text,
)

__all__ = [
    "DEADLINE_MARGIN_S",
    "HEARTBEAT_WAIT_MAX_S",
    "LOGOUT_GRACE_S",
    "LOGOUT_WAIT_MAX_S",
    "MASK",
    "SECRET_TAGS",
    "TOO_LOW_BACKOFF_S",
    "TRANSCRIPT_MAX",
    "Direction",
    "LogoutResult",
    "ProbeResult",
    "end_of_day_logout",
    "expected_seq_from_text",
    "frame_problem",
    "probe_session",
    "probe_sessions",
    "wire_text",
]
