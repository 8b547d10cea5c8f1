"""The lab's FIX venue: a session-layer acceptor for every FIX session in the estate.

One TCP listener per distinct (address, port) among ``estate.fix_sessions``; a
connection belongs to the session whose CompIDs it logs on with (the firm's
SenderCompID is the session's ``sender_comp_id``, the venue answers as its
``target_comp_id``). It speaks FIX.4.2, FIX.4.4 and FIXT.1.1 and behaves like a
QuickFIX acceptor, so that what passes here passes at a real venue; ``engine`` lists
what it checks and how it answers. Sequence numbers live in memory per session, across
connections (not across restarts).

End of the FIX day: a Logout from the firm whose 58 reads ``End of day YYYY-MM-DD`` is
answered, then the venue applies the session's ``reset_policy`` for that trade date:
``daily`` resets both sides to 1; ``weekly`` resets when the ``reset_weekday`` falls
after the trade date and no later than the next session of the region's primary
calendar (a Friday's end of day resets a Sunday-reset session); ``never`` keeps the
numbers. Each end of day is one ``fix_logout`` line in the lab's effects log
(``lab.effects``), each reset one ``fix_seq_reset`` line.

The firm's FIX store: the venue also plays the firm's gateway engine, keeping the
session's store on its gateway host (``estate.store_host``; ``fix_store_dir/<session>/``)
the way a QuickFIX-style engine does (see ``session``). An end-of-day reset rotates the
day's ``messages.log`` and ``seqnums`` to ``*-YYYYMMDD`` for the end-of-day archive.

Wire log: every message in and out (passwords masked) and every connection event, per
session, in memory (``FixVenue.wire_log``) and appended to
``OPENBELL_HOME/lab/fix/<session>.log`` as tab-separated lines
``<UTC time>\\t<in|out|event>\\t<connection id>\\t<message with | for SOH>``, for
certification judging. Connections that never identify themselves are logged to
``_unidentified.log``.

Faults (``lab.faults``): ``fix_logon_rejected``, ``fix_seq_too_low`` and ``latency``;
``faults`` says what each does.

Modules:

- ``wire``: building, frame-checking and showing messages; the fixed 58 texts.
- ``session``: ``SessionState``, one session across connections (numbers, wire log, the
  firm's store), and ``WireEntry``.
- ``engine``: ``Conversation``, one connection from its Logon to its end.
- ``faults``: the faults the venue reads from the book.
- ``server``: ``FixVenue`` (listeners, sessions, reset policy) and ``start_fix_venue``.
- ``__main__``: the command line.

Run it alone with ``python -m openbell.lab.venue --estate runbooks/lab.yaml``.
"""

from openbell.lab.venue.engine import (
    DISCONNECT_AFTER,
    LINGER_S,
    LOGON_WAIT_S,
    SENDING_TIME_TOLERANCE_S,
    SERVING_CHECK_S,
    TEST_REQUEST_AFTER,
)
from openbell.lab.venue.server import FixVenue, start_fix_venue
from openbell.lab.venue.session import WireEntry
from openbell.lab.venue.wire import LOGON_REJECTED_TEXT

__all__ = [
    "DISCONNECT_AFTER",
    "LINGER_S",
    "LOGON_REJECTED_TEXT",
    "LOGON_WAIT_S",
    "SENDING_TIME_TOLERANCE_S",
    "SERVING_CHECK_S",
    "TEST_REQUEST_AFTER",
    "FixVenue",
    "WireEntry",
    "start_fix_venue",
]
