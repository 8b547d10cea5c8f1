"""The venue's session engine: one TCP connection, from its Logon to its end.

``Conversation`` behaves like a QuickFIX acceptor, so that what passes here passes at a
real venue:

- The first message must be a Logon with the session's BeginString and CompIDs, 98=0,
  an integer 108 >= 0 (0: no heartbeats), and on FIXT.1.1 a 1137 DefaultApplVerID;
  from FIX.4.4 on, 553 must be the session's ``username`` (if set) and 554 the value of
  its ``password_secret`` environment variable (if set here). Otherwise a Logout (or a
  Reject, then a Logout) says why and the venue disconnects. A connection for a session
  that is already logged on is dropped.
- Every message must be well framed (8, 9, 35 first, BodyLength, CheckSum); a garbled
  one is ignored without consuming a sequence number, as the FIX spec says.
- SendingTime (52) more than 120 s from the venue's clock: Reject 373=10, Logout,
  disconnect.
- 141=Y on the Logon resets both sides to 1. Too low without PossDup: Logout
  "MsgSeqNum too low, expecting N but received M" (with 789=N on FIX.4.4 and later),
  disconnect. Too high: a ResendRequest (7=expected, 16=0) goes out, once per gap, and
  the message waits in a queue, as in QuickFIX, until the gap is filled; a gap fill that
  skips past a queued message drops it. ResendRequest, Logout and SequenceReset-Reset
  are handled whatever their MsgSeqNum.
- TestRequest: Heartbeat echoing 112. ResendRequest: SequenceReset-GapFill (the venue
  has sent only admin messages so far). Logout: Logout, then disconnect. Application
  messages: BusinessMessageReject 380=3 (orders come later).
- Timers (HeartBtInt H from the Logon): a Heartbeat after H without sending, a
  TestRequest after 1.2 H without receiving, a disconnect after 2.4 H.
- A Logout whose 58 reads ``End of day YYYY-MM-DD`` ends the session's FIX day: it is
  recorded in the lab's effects log and the reset policy applied (see the package
  docstring).

Every message in and out and every connection event goes to the session's wire log
(``SessionState.record``); until the Logon names the session, to the strangers' log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import simplefix

from openbell.lab.venue.faults import answer_delay_s, logon_fault
from openbell.lab.venue.session import Direction, SessionState, WireEntry
from openbell.lab.venue.wire import (
    LOGON_REJECTED_TEXT,
    as_int,
    build_message,
    field,
    frame_problem,
    parse_utc,
    too_low_text,
    wire_text,
)
from openbell.runbooks.schema import FixSession

if TYPE_CHECKING:
    from openbell.lab.venue.server import Listener

log = logging.getLogger(__name__)

SENDING_TIME_TOLERANCE_S = 120.0
#: A new connection must send its Logon within this.
LOGON_WAIT_S = 10.0
#: Silence (in HeartBtInts) before a TestRequest, and before disconnecting.
TEST_REQUEST_AFTER = 1.2
DISCONNECT_AFTER = 2.4
#: How often an idle connection checks that its listener still serves.
SERVING_CHECK_S = 1.0
#: After our final Logout, how long to read what is still coming before closing.
LINGER_S = 0.5
END_OF_DAY = re.compile(r"^End of day (\d{4}-\d{2}-\d{2})")


class _Closed(Exception):
    """The connection is over (EOF, unparseable data, or we decided so)."""


class Conversation:
    """One TCP connection: identify the session, log on, keep the session until it ends.

    Args:
        listener: the endpoint it arrived on; its sessions are the candidates.
        conn_id: the connection id in wire logs.
        reader: the connection's input.
        writer: the connection's output.
    """

    def __init__(
        self,
        listener: Listener,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.listener = listener
        self.venue = listener.venue
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.parser = simplefix.FixParser()
        self.state: SessionState | None = None
        self.pending: list[WireEntry] = []
        self.heartbeat_s = 30.0
        self.last_in = self.last_out = 0.0
        self.test_request_out: str | None = None
        self.test_requests = 0
        self.resend_until: int | None = None
        self.queued: dict[int, Any] = {}
        self.ending = False
        self.said_goodbye = False
        self.task = asyncio.current_task()

    # ---- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until it ends, then hang up (always)."""
        peer = self.writer.get_extra_info("peername")
        self._event(f"connected from {peer}")
        try:
            first = await self._read(LOGON_WAIT_S)
            if first is None:
                self._event(f"no Logon within {LOGON_WAIT_S:g} s")
            elif await self._logon(first):
                await self._session_loop()
        except _Closed as exc:
            self._event(f"closed: {exc}")
        except ConnectionError as exc:
            self._event(f"connection lost: {exc!r}")
        finally:
            if self.state is not None and self.state.connection == self.id:
                self.state.connection = None
            if self.state is not None:
                self.state.save_seqnums()
            await self._hang_up()

    async def _hang_up(self) -> None:
        """Close; after our Logout, first read what is still coming (and log it).

        Closing a socket with unread input sends a RST, which can destroy the Logout
        we just sent before the counterparty reads it.
        """
        try:
            if self.said_goodbye and not self.reader.at_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                until = _now() + LINGER_S
                with contextlib.suppress(_Closed, ConnectionError):
                    while _now() < until and await self._read(until - _now()) is not None:
                        pass
        finally:
            self.writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            self._flush_pending()

    def abort(self) -> asyncio.Task[None] | None:
        """Drop the connection now (venue shutdown); the task to wait for, if any."""
        self._event("venue shutting down")
        self.writer.close()
        if self.task is not None:
            self.task.cancel()
        return self.task

    # ---- logon ----------------------------------------------------------------------------
    async def _logon(self, msg: Any) -> bool:
        """Validate the first message as a Logon and answer it; False if refused."""
        state = self._identify(msg)
        if state is None:
            await self._answer_stranger(msg)
            return False
        self.state = state
        self._flush_pending()
        if state.connection is not None:
            self._event(f"session already logged on (connection {state.connection}): dropped")
            return False
        refusal = self._logon_refusal(msg)
        if refusal is not None:
            await self._refuse(msg, *refusal)
            return False
        if field(msg, 141) == "Y":
            state.next_in = state.next_out = 1
            state.reset_store("141=Y on Logon")
            self._event("141=Y: sequence numbers reset to 1")
        seq = as_int(field(msg, 34)) or 0
        fault = self._logon_fault(seq)
        if fault is not None:
            await self._logout(fault[0], fault[1])
            return False
        if seq < state.next_in:
            await self._too_low(seq)
            return False
        await self._accept_logon(msg, seq)
        return True

    def _identify(self, msg: Any) -> SessionState | None:
        theirs = (field(msg, 49), field(msg, 56))
        for state in self.listener.sessions:
            if theirs == (state.config.sender_comp_id, state.config.target_comp_id):
                return state
        return None

    def _logon_refusal(self, msg: Any) -> tuple[str, tuple[int, int] | None] | None:
        """Why this Logon is refused: (58 text, (373 reason, 371 tag) for a Reject first)."""
        cfg = self._cfg()
        if field(msg, 35) != "A":
            return f"First message not a logon (35={field(msg, 35)})", None
        if field(msg, 8) != cfg.begin_string:
            return f"Wrong BeginString: expected {cfg.begin_string}, got {field(msg, 8)}", None
        if as_int(field(msg, 34)) is None:
            return "MsgSeqNum (34) missing or not a number", None
        heartbeat = as_int(field(msg, 108))
        checks: list[tuple[bool, str, tuple[int, int]]] = [
            (field(msg, 98) is not None, "EncryptMethod (98) missing", (1, 98)),
            (field(msg, 98) in (None, "0"), "EncryptMethod (98) must be 0", (5, 98)),
            (field(msg, 108) is not None, "HeartBtInt (108) missing", (1, 108)),
            (
                field(msg, 108) is None or (heartbeat is not None and heartbeat >= 0),
                "HeartBtInt (108) must be an integer >= 0",
                (5, 108),
            ),
            (
                cfg.begin_string != "FIXT.1.1" or field(msg, 1137) is not None,
                "DefaultApplVerID (1137) required on FIXT.1.1",
                (1, 1137),
            ),
        ]
        for ok, text, reject in checks:
            if not ok:
                return text, reject
        time_problem = self._sending_time_problem(msg)
        if time_problem is not None:
            return time_problem
        if not self._credentials_ok(msg):
            return LOGON_REJECTED_TEXT, None
        return None

    def _credentials_ok(self, msg: Any) -> bool:
        """553 must match the configured username; 554 the secret, when it is set here."""
        cfg = self._cfg()
        if cfg.begin_string == "FIX.4.2":
            return True
        if cfg.username and field(msg, 553) != cfg.username:
            return False
        password = os.environ.get(cfg.password_secret) if cfg.password_secret else None
        return password is None or field(msg, 554) == password

    def _logon_fault(self, seq: int) -> tuple[str, list[tuple[int, str]]] | None:
        """A fault from the book that answers this Logon: (58 text, extra fields)."""
        state = self._state()
        fault = logon_fault(self.venue.book, state.name, seq)
        if fault is None:
            return None
        self._event(fault.event)
        if fault.expected is None:
            return fault.text, []
        state.next_in = fault.expected
        return fault.text, self._next_expected_field(fault.expected)

    async def _accept_logon(self, msg: Any, seq: int) -> None:
        state = self._state()
        self.heartbeat_s = float(as_int(field(msg, 108)) or 0)
        state.connection = self.id
        gap = seq > state.next_in
        if not gap:
            state.next_in = seq + 1
        body: list[tuple[int, str | None]] = [(98, "0"), (108, field(msg, 108))]
        if field(msg, 141) == "Y":
            body.append((141, "Y"))
        if self._cfg().begin_string == "FIXT.1.1":
            body.append((1137, field(msg, 1137)))
        await self._send("A", body)
        self._event(f"logged on, HeartBtInt {self.heartbeat_s:g} s")
        if gap:
            await self._request_resend(seq)

    async def _answer_stranger(self, msg: Any) -> None:
        """Logout to a connection whose CompIDs match no session here, then drop it."""
        text = f"Unknown session: 49={field(msg, 49)} 56={field(msg, 56)}"
        begin = field(msg, 8) or "FIX.4.4"
        out = build_message(
            begin,
            field(msg, 56) or "?",
            field(msg, 49) or "?",
            "5",
            1,
            self.venue.clock(),
            [(58, text)],
        ).encode()
        self._record("out", out)
        self.writer.write(out)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        self.said_goodbye = True
        self._event(text)

    # ---- the session ----------------------------------------------------------------------
    async def _session_loop(self) -> None:
        while True:
            msg = await self._read(self._until_next_timer())
            if msg is not None and not await self._handle(msg):
                return
            # A busy peer must not starve the timers (our heartbeats).
            due = msg is None or self._until_next_timer() <= 0
            if due and not await self._on_timers():
                return

    def _until_next_timer(self) -> float:
        now = _now()
        h = self.heartbeat_s
        due = [now + SERVING_CHECK_S]
        if h > 0:
            due += [self.last_out + h, self.last_in + DISCONNECT_AFTER * h]
            if self.test_request_out is None:
                due.append(self.last_in + TEST_REQUEST_AFTER * h)
        return max(min(due) - now, 0.0)

    async def _on_timers(self) -> bool:
        """Heartbeat, TestRequest or disconnect as the clocks say; False to disconnect."""
        if not self.listener.serving():
            self._event("listener closed: disconnecting")
            return False
        now, h = _now(), self.heartbeat_s
        if h <= 0:
            return True  # 108=0: no heartbeats on this session
        if now - self.last_in >= DISCONNECT_AFTER * h:
            self._event(f"no message for {DISCONNECT_AFTER:g}x HeartBtInt: disconnecting")
            return False
        if self.test_request_out is None and now - self.last_in >= TEST_REQUEST_AFTER * h:
            self.test_requests += 1
            self.test_request_out = f"LABVENUE-{self.id}-{self.test_requests}"
            await self._send("1", [(112, self.test_request_out)], answer=False)
        if now - self.last_out >= h:
            await self._send("0", answer=False)
        return True

    async def _handle(self, msg: Any) -> bool:
        """One message on a logged-on session; False to disconnect.

        As in QuickFIX: ResendRequest, Logout and SequenceReset-Reset are handled whatever
        their MsgSeqNum; other messages too low end the session (unless PossDup), too high
        are queued behind a ResendRequest until the gap is filled or resent.
        """
        header_problem = self._header_problem(msg)
        if header_problem is not None:
            await self._logout(header_problem)
            return False
        time_problem = self._sending_time_problem(msg)
        if time_problem is not None:
            await self._refuse(msg, *time_problem)
            return False
        kind = field(msg, 35)
        seq = as_int(field(msg, 34)) or 0
        state = self._state()
        if kind in ("2", "5") or (kind == "4" and field(msg, 123) != "Y"):
            return await self._unsequenced(kind, msg, seq)
        if seq < state.next_in:
            if field(msg, 43) == "Y":
                self._event(f"duplicate 34={seq} (PossDup) ignored")
                return True
            await self._too_low(seq)
            return False
        if seq > state.next_in:
            self.queued[seq] = msg
            await self._request_resend(seq)
            return True
        return await self._in_sequence(kind, msg, seq) and await self._drain_queue()

    async def _unsequenced(self, kind: str | None, msg: Any, seq: int) -> bool:
        state = self._state()
        if kind == "4":
            return await self._sequence_reset(msg, seq) and await self._drain_queue()
        if seq == state.next_in:
            state.next_in += 1
        return await self._dispatch(kind, msg) and await self._drain_queue()

    async def _in_sequence(self, kind: str | None, msg: Any, seq: int) -> bool:
        """Handle a message whose MsgSeqNum is the expected one."""
        state = self._state()
        state.next_in = seq + 1
        if kind == "4":
            await self._sequence_reset(msg, seq)
        else:
            await self._dispatch_checked(kind, msg)
        if self.resend_until is not None and state.next_in > self.resend_until:
            self.resend_until = None
        return not self.ending

    async def _drain_queue(self) -> bool:
        """Handle queued messages now in sequence; drop those a gap fill skipped past."""
        state = self._state()
        while not self.ending and (msg := self.queued.pop(state.next_in, None)) is not None:
            await self._in_sequence(field(msg, 35), msg, state.next_in)
        for seq in sorted(s for s in self.queued if s < state.next_in):
            del self.queued[seq]
            self._event(f"queued 34={seq} dropped: the gap was filled past it")
        return not self.ending

    async def _dispatch_checked(self, kind: str | None, msg: Any) -> None:
        if not await self._dispatch(kind, msg):
            self.ending = True

    async def _dispatch(self, kind: str | None, msg: Any) -> bool:
        if kind == "0":
            pass  # any message answers our TestRequest (see _read)
        elif kind == "1":
            await self._send("0", [(112, field(msg, 112))])
        elif kind == "2":
            await self._gap_fill(msg)
        elif kind == "3":
            self._event(f"session Reject received: 58={field(msg, 58)!r}")
        elif kind == "5":
            await self._send("5")
            self._event("logged out at the counterparty's request")
            day = END_OF_DAY.match(field(msg, 58) or "")
            if day:
                self._end_of_day(date.fromisoformat(day.group(1)))
            return False
        elif kind == "A":
            self._event("Logon while already logged on: ignored")
        else:
            await self._send(
                "j",
                [
                    (45, field(msg, 34)),
                    (372, kind),
                    (380, "3"),
                    (
                        58,
                        f"Unsupported message type {kind} (the lab venue speaks the session layer)",
                    ),
                ],
            )
        return True

    def _end_of_day(self, day: date) -> None:
        """The firm ended its FIX day: record it, reset the numbers if the policy says so."""
        state = self._state()
        policy = state.config.reset_policy
        key = f"{state.name}|{day.isoformat()}"
        self.venue.effects.record(
            "fix_logout",
            state.name,
            key=key,
            trade_date=day.isoformat(),
            next_in=state.next_in,
            next_out=state.next_out,
        )
        state.store_event(f"End of day {day.isoformat()}: logged out")
        if not self.venue.resets_after(state.name, day):
            self._event(f"end of day {day}: no sequence reset ({policy})")
            return
        state.rotate_store(day)
        state.next_in = state.next_out = 1
        state.reset_store(f"end of day {day.isoformat()}, {policy} reset")
        state.store_event(f"End of day {day.isoformat()}: sequence numbers reset to 1 ({policy})")
        self.venue.effects.record(
            "fix_seq_reset", state.name, key=key, trade_date=day.isoformat(), policy=policy
        )
        self._event(f"end of day {day}: sequence numbers reset to 1 ({policy})")

    async def _sequence_reset(self, msg: Any, seq: int) -> bool:
        """SequenceReset (gap fill in sequence, or reset anywhere): move next_in on."""
        state = self._state()
        new_seq = as_int(field(msg, 36))
        if new_seq is None or new_seq < state.next_in:
            await self._send(
                "3",
                [
                    (45, str(seq)),
                    (371, "36"),
                    (372, "4"),
                    (373, "5"),
                    (58, f"NewSeqNo {new_seq} is below the expected {state.next_in}"),
                ],
            )
            return True
        state.next_in = new_seq
        if self.resend_until is not None and new_seq > self.resend_until:
            self.resend_until = None
        self._event(f"SequenceReset: next expected 34={new_seq}")
        return True

    async def _gap_fill(self, msg: Any) -> None:
        """Answer a ResendRequest: all we have sent are admin messages, so gap-fill."""
        state = self._state()
        begin = as_int(field(msg, 7)) or 1
        if begin >= state.next_out:
            self._event(f"ResendRequest from 7={begin}: nothing sent there yet")
            return
        await self._send("4", [(123, "Y"), (36, str(state.next_out))], seq=begin, poss_dup=True)

    async def _request_resend(self, seen: int) -> None:
        """Ask for the gap once; later too-high messages wait for the same resend."""
        if self.resend_until is not None:
            return
        self.resend_until = seen
        await self._send("2", [(7, str(self._state().next_in)), (16, "0")])

    # ---- refusals -------------------------------------------------------------------------
    async def _too_low(self, seq: int) -> None:
        expected = self._state().next_in
        await self._logout(too_low_text(expected, seq), self._next_expected_field(expected))

    async def _refuse(self, msg: Any, text: str, reject: tuple[int, int] | None) -> None:
        """Reject (when a reason is given) then Logout, both with ``text``."""
        if reject is not None:
            reason, tag = reject
            await self._send(
                "3",
                [
                    (45, field(msg, 34)),
                    (371, str(tag)),
                    (372, field(msg, 35)),
                    (373, str(reason)),
                    (58, text),
                ],
            )
        await self._logout(text)

    async def _logout(self, text: str, extra: Iterable[tuple[int, str]] = ()) -> None:
        await self._send("5", [(58, text), *extra])
        self.said_goodbye = True
        self._event(f"disconnecting: {text}")

    def _next_expected_field(self, expected: int) -> list[tuple[int, str]]:
        """789 NextExpectedMsgSeqNum exists from FIX.4.4 on."""
        return [] if self._cfg().begin_string == "FIX.4.2" else [(789, str(expected))]

    def _header_problem(self, msg: Any) -> str | None:
        cfg = self._cfg()
        if field(msg, 8) != cfg.begin_string:
            return f"Wrong BeginString: expected {cfg.begin_string}, got {field(msg, 8)}"
        if (field(msg, 49), field(msg, 56)) != (cfg.sender_comp_id, cfg.target_comp_id):
            return f"CompID problem: 49={field(msg, 49)} 56={field(msg, 56)}"
        if as_int(field(msg, 34)) is None:
            return "MsgSeqNum (34) missing or not a number"
        return None

    def _sending_time_problem(self, msg: Any) -> tuple[str, tuple[int, int]] | None:
        sent = parse_utc(field(msg, 52))
        if sent is None:
            return f"SendingTime (52) missing or malformed: {field(msg, 52)!r}", (1, 52)
        skew = abs((self.venue.clock() - sent).total_seconds())
        if skew > SENDING_TIME_TOLERANCE_S:
            return f"SendingTime accuracy problem: {skew:.0f} s off", (10, 52)
        return None

    # ---- wire -----------------------------------------------------------------------------
    async def _read(self, timeout: float) -> Any:
        """The next well-framed message, or None after ``timeout``; raises _Closed."""
        deadline = _now() + timeout
        while True:
            msg = self._parse_one()
            if msg is not None:
                self.last_in = _now()
                self.test_request_out = None
                return msg
            remaining = deadline - _now()
            if remaining <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                return None
            if not chunk:
                raise _Closed("the counterparty closed the connection")
            self.parser.append_buffer(chunk)

    def _parse_one(self) -> Any:
        while True:
            try:
                msg = self.parser.get_message()
            except simplefix.errors.ParsingError as exc:
                raise _Closed(f"unparseable data: {exc!r}") from None
            if msg is None:
                return None
            problem = frame_problem(msg)
            self._record("in", msg, f"garbled, ignored: {problem}" if problem else "")
            if problem is None:
                return msg

    async def _send(
        self,
        msg_type: str,
        body: Iterable[tuple[int, str | None]] = (),
        *,
        seq: int | None = None,
        poss_dup: bool = False,
        answer: bool = True,
    ) -> None:
        """Send one message; answers wait for the ``latency`` fault first."""
        state = self._state()
        if answer:
            delay = answer_delay_s(self.venue.book)
            if delay > 0:
                await asyncio.sleep(delay)
        if seq is None:
            seq, state.next_out = state.next_out, state.next_out + 1
        cfg = state.config
        data = build_message(
            cfg.begin_string,
            cfg.target_comp_id,
            cfg.sender_comp_id,
            msg_type,
            seq,
            self.venue.clock(),
            body,
            poss_dup=poss_dup,
        ).encode()
        self._record("out", data)
        state.save_seqnums()
        self.writer.write(data)
        await self.writer.drain()
        self.last_out = _now()

    # ---- wire log -------------------------------------------------------------------------
    def _record(self, direction: Direction, msg: Any, note: str = "") -> None:
        """Log a parsed message, or the exact bytes sent."""
        text = wire_text(msg if isinstance(msg, bytes) else msg.encode(raw=True))
        self._log(direction, f"({note}) {text}" if note else text)

    def _event(self, text: str) -> None:
        log.debug("FIX venue connection %d: %s", self.id, text)
        self._log("event", text)

    def _log(self, direction: Direction, text: str) -> None:
        entry = WireEntry(datetime.now(UTC), direction, self.id, text)
        if self.state is None:
            self.pending.append(entry)
        else:
            self.state.record(entry)

    def _flush_pending(self) -> None:
        """Entries from before the session was known go to its log, or to the strangers'."""
        pending, self.pending = self.pending, []
        for entry in pending:
            if self.state is not None:
                self.state.record(entry)
            else:
                self.venue.record_unidentified(entry)

    def _state(self) -> SessionState:
        assert self.state is not None, "no session identified yet"
        return self.state

    def _cfg(self) -> FixSession:
        return self._state().config


def _now() -> float:
    return asyncio.get_running_loop().time()
