"""One FIX connection as the initiator: sequence numbers, admin messages, the deadline.

``Initiator`` is the session layer that ``probe_session`` and ``end_of_day_logout`` run
their steps on: connect, Logon, TestRequest, Logout, close, each bounded by one deadline.
It is tolerant in what it accepts, so that any QuickFIX-style acceptor will do, not only
the lab venue: extra tags, application messages (a drop copy may stream
ExecutionReports), idle Heartbeats, messages split across reads or several in one read,
and duplicates (43=Y) are taken in stride; garbled messages (bad BodyLength or CheckSum)
are ignored as the FIX spec says. While waiting it behaves like a well-mannered
initiator: a counterparty TestRequest gets a Heartbeat with the same 112, a ResendRequest
gets a SequenceReset-GapFill (123=Y; all it ever sends are admin messages, and admin
messages are never resent), and a session Reject 35=3 fails with its 58/373 text.

What the counterparty expects: "MsgSeqNum too low, expecting N" -- the 58 text in the
wording of the common engines (``expected_seq_from_text``), or 789=N on the Logout --
becomes ``FixSequenceTooLowError(expected=N)``; any other Logout or Reject in answer to
our Logon is a ``FixLogonRejectedError``, after it a ``FixError``. Every error names the
session, the step (``Initiator.action``) and the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Literal

import simplefix
from pydantic import SecretStr

from openbell.errors import (
    FixError,
    FixLogonRejectedError,
    FixSequenceTooLowError,
    FixTimeoutError,
)
from openbell.runbooks.schema import FixSession
from openbell.tasks.connectors.fix.codec import (
    as_int,
    build_message,
    describe,
    field,
    frame_problem,
    logon_body,
    wire_text,
)

log = logging.getLogger(__name__)

#: The whole probe may overrun ``timeout_s`` by at most this (Logout grace and close).
DEADLINE_MARGIN_S = 1.0
#: A TestRequest must be answered within min(this, HeartBtInt).
HEARTBEAT_WAIT_MAX_S = 2.0
#: How long to wait for the counterparty's Logout answer, at most ...
LOGOUT_WAIT_MAX_S = 2.0
#: ... and at least (taken from the margin when the budget is spent).
LOGOUT_GRACE_S = 0.5
#: The transcript keeps this many messages; the rest are counted, not kept.
TRANSCRIPT_MAX = 50

Direction = Literal["out", "in"]

# "MsgSeqNum too low, expecting 5 but received 1" (QuickFIX/J, QuickFIX),
# "Sequence number too low. Expected: 5 Received: 1", "MsgSeqNum(34) too low, expected 5",
# "Incoming seq number 1 is less than expected 5", "... lower than expected (5)".
_TOO_LOW = re.compile(r"too\s*low|(?:less|lower)\s+than\s+(?:the\s+)?expected", re.IGNORECASE)
_EXPECTED_N = re.compile(
    r"expect(?:ing|ed)?(?:\s+msg\s*seq\s*num(?:\s*\(34\))?)?[\s:=(,]*(\d+)", re.IGNORECASE
)


def expected_seq_from_text(text: str | None) -> int | None:
    """The MsgSeqNum a "sequence too low" text says the counterparty expects.

    Tolerates the wordings of the common engines; returns None for any other text.

    Example:
        >>> expected_seq_from_text("MsgSeqNum too low, expecting 5 but received 1")
        5
        >>> expected_seq_from_text("Incoming seq number 1 is less than expected 12")
        12
        >>> expected_seq_from_text("Logon rejected: invalid username or password") is None
        True
    """
    if not text or not _TOO_LOW.search(text):
        return None
    match = _EXPECTED_N.search(text)
    return int(match.group(1)) if match else None


class Initiator:
    """One connection: a TCP stream, our sequence numbers, the transcript, the deadline.

    Args:
        name: the session's name in the estate; errors and log lines use it.
        session: where and who to log on as.
        password: sent as 554 where the FIX version has it.
        test_req_id: the TestReqID (112) ``test_request`` sends.
        first_seq: the MsgSeqNum of our Logon.

    Example:
        >>> conn = Initiator("emea-oe", session, None, "OB-1", 1)
        >>> await conn.connect(budget_s=5.0)
        >>> await conn.logon()
        >>> await conn.logout()
        >>> await conn.close()
    """

    def __init__(
        self,
        name: str,
        session: FixSession,
        password: SecretStr | None,
        test_req_id: str,
        first_seq: int,
    ) -> None:
        self.name = name
        self.session = session
        self.password = password
        self.test_req_id = test_req_id
        self.next_out = first_seq
        self.logon_seq = first_seq
        self.action = f"connect to {session.address}:{session.port}"
        self.deadline = 0.0
        self.sent_any = False
        self.logged_on = False
        self.logout_sent = False
        self.test_request_seq: int | None = None  # while its Heartbeat is awaited
        self.their_first: int | None = None
        self.their_last: int | None = None
        self.transcript: list[tuple[Direction, str]] = []
        self.not_kept = 0
        self.parser = simplefix.FixParser(allow_empty_values=True)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    # ---- the steps --------------------------------------------------------------------------
    async def connect(self, budget_s: float) -> float:
        """Start the deadline (``budget_s`` from now) and open the TCP connection.

        Returns:
            The connect time in ms.
        """
        self.deadline = _now() + budget_s
        s = self.session
        started = time.perf_counter()
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(s.address, s.port), self.remaining()
            )
        except TimeoutError:
            raise FixTimeoutError(self.name, self.action, "no TCP answer in time") from None
        except OSError as exc:
            raise FixError(self.name, self.action, exc.strerror or str(exc)) from None
        return _ms_since(started)

    async def logon(self) -> tuple[float, int]:
        """Send our Logon and read the answer.

        Returns:
            The round trip in ms, and the HeartBtInt the counterparty echoed.
        """
        s = self.session
        reset = ", 141=Y" if s.reset_on_logon else ""
        self.action = (
            f"Logon to {s.address}:{s.port} as {s.sender_comp_id}->{s.target_comp_id} "
            f"({s.begin_string}, 34={self.next_out}, 108={s.heartbeat_s}{reset})"
        )
        started = time.perf_counter()
        self.logon_seq = self.next_out
        await self._send("A", logon_body(s, self.password))
        while True:
            msg = await self._next_message(self.remaining(), "Logon answer", started)
            kind = field(msg, 35)
            if kind == "A":
                break
            if kind == "5":
                raise self._logout_error(msg)
            log.debug("FIX probe %s: ignoring 35=%s before the Logon answer", self.name, kind)
        rtt = _ms_since(started)
        self.logged_on = True
        return rtt, self._check_logon_answer(msg)

    async def test_request(self) -> float:
        """Send a TestRequest and wait for the Heartbeat echoing its 112.

        Returns:
            The round trip in ms.
        """
        wait = min(HEARTBEAT_WAIT_MAX_S, float(self.session.heartbeat_s), self.remaining())
        want = self.test_req_id
        self.action = f"TestRequest 112={want} (Heartbeat expected within {wait:.1f} s)"
        started = time.perf_counter()
        self.test_request_seq = self.next_out
        await self._send("1", [(112, want)])
        try:
            while True:
                msg = await self._next_message(wait, f"Heartbeat with 112={want}", started)
                kind = field(msg, 35)
                if kind == "5":
                    raise await self._counterparty_logout(msg)
                if kind != "0" or field(msg, 112) is None:
                    continue  # an idle Heartbeat, or an application message
                if field(msg, 112) != want:
                    raise FixError(
                        self.name,
                        self.action,
                        f"Heartbeat echoed 112={field(msg, 112)!r}, expected 112={want!r}",
                    )
                return _ms_since(started)
        finally:
            self.test_request_seq = None

    async def logout(self, text: str | None = None) -> bool:
        """Send Logout (with 58 ``text`` if given) and wait (bounded) for the answer.

        Returns:
            True if the counterparty answered with a Logout.
        """
        self.action = "Logout" if text is None else f"Logout 58={text!r}"
        await self._send("5", [] if text is None else [(58, text)])
        self.logout_sent = True
        return await self._await_logout(
            min(LOGOUT_WAIT_MAX_S, max(self.remaining(), LOGOUT_GRACE_S))
        )

    async def close(self) -> None:
        """Log out if we logged on and have not yet (best effort), then close."""
        writer = self.writer
        if writer is None:
            return
        try:
            if self.logged_on and not self.logout_sent:
                with contextlib.suppress(FixError):
                    self.action = "Logout after a failed check"
                    await self._send("5")
                    self.logout_sent = True
                    await self._await_logout(LOGOUT_GRACE_S)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.2)

    # ---- what the steps saw -----------------------------------------------------------------
    def their_seq_seen(self) -> tuple[int, int]:
        """The counterparty's first and last MsgSeqNum seen (0 for none)."""
        first = self.their_first if self.their_first is not None else 0
        last = self.their_last if self.their_last is not None else first
        return first, last

    def kept_transcript(self) -> tuple[tuple[Direction, str], ...]:
        """The transcript as results carry it, with a count of the messages not kept."""
        items = list(self.transcript)
        if self.not_kept:
            items.append(("in", f"({self.not_kept} more messages not kept)"))
        return tuple(items)

    def remaining(self) -> float:
        """Seconds left before the deadline, never negative."""
        return max(self.deadline - _now(), 0.0)

    # ---- what the counterparty must say -----------------------------------------------------
    def _check_logon_answer(self, msg: Any) -> int:
        """The echoed HeartBtInt; raises if the answer is not for this session."""
        s = self.session
        problems = []
        if field(msg, 8) != s.begin_string:
            problems.append(f"BeginString {field(msg, 8)!r}, expected {s.begin_string!r}")
        if (field(msg, 49), field(msg, 56)) != (s.target_comp_id, s.sender_comp_id):
            problems.append(
                f"49={field(msg, 49)} 56={field(msg, 56)}, expected "
                f"49={s.target_comp_id} 56={s.sender_comp_id}"
            )
        echoed = field(msg, 108)
        if echoed is None:
            problems.append("no HeartBtInt (108) in the Logon answer")
        elif echoed.strip() != str(s.heartbeat_s):
            problems.append(f"Logon answer echoed 108={echoed}, expected 108={s.heartbeat_s}")
        if problems:
            raise FixError(self.name, self.action, "; ".join(problems))
        return s.heartbeat_s

    async def _await_logout(self, within_s: float) -> bool:
        """Wait (bounded) for the counterparty's Logout; True if it came."""
        started = time.perf_counter()
        until = _now() + within_s
        try:
            while True:
                msg = await self._next_message(until - _now(), "Logout answer", started)
                if field(msg, 35) == "5":
                    return True
        except FixError as exc:
            log.info("FIX probe %s: Logout not answered cleanly: %s", self.name, exc.answer)
            return False

    # ---- messages in --------------------------------------------------------------------------
    async def _next_message(
        self, within_s: float, waiting_for: str, since: float | None = None
    ) -> Any:
        """The next session message worth the caller's attention.

        Answers TestRequest and ResendRequest itself, skips SequenceResets, and turns a
        session Reject into an error. ``since`` (a ``perf_counter`` value) is when the
        wait began, for the error message.
        """
        # Graces (Logout answer) may run into the first half of the margin, never further.
        deadline = min(_now() + max(within_s, 0.0), self.deadline + DEADLINE_MARGIN_S / 2)
        started = time.perf_counter() if since is None else since
        while True:
            msg = await self._receive(deadline, waiting_for, started)
            kind = field(msg, 35)
            if kind == "1":
                await self._send("0", [(112, field(msg, 112))])
            elif kind == "2":
                await self._gap_fill(msg)
            elif kind == "3":
                raise self._logout_error(msg)
            elif kind != "4":
                return msg

    async def _receive(self, deadline: float, waiting_for: str, started: float) -> Any:
        """The next well-formed, new message off the wire, before ``deadline``."""
        assert self.reader is not None
        while True:
            msg = self._parse_one()
            if msg is not None:
                return msg
            remaining = deadline - _now()
            if remaining <= 0:
                raise FixTimeoutError(
                    self.name,
                    self.action,
                    f"no {waiting_for} after {_ms_since(started) / 1000:.1f} s",
                )
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                raise FixError(
                    self.name, self.action, f"connection lost waiting for {waiting_for}: {exc}"
                ) from None
            if not chunk:
                raise FixError(
                    self.name,
                    self.action,
                    f"connection closed by the counterparty while waiting for {waiting_for}",
                )
            self.parser.append_buffer(chunk)

    def _parse_one(self) -> Any:
        """One message from the buffer, None if incomplete.

        Garbled messages and PossDup resends of what we already saw are skipped.
        """
        while True:
            try:
                msg = self.parser.get_message()
            except simplefix.errors.ParsingError as exc:
                raise FixError(
                    self.name, self.action, f"unparseable data from the counterparty: {exc!r}"
                ) from None
            if msg is None:
                return None
            problem = frame_problem(msg)
            if problem is not None:
                self._record("in", msg, note=f"garbled, ignored: {problem}")
                log.warning("FIX probe %s: ignoring a garbled message: %s", self.name, problem)
            elif self._duplicate(msg):
                self._record("in", msg, note="duplicate, ignored")
            else:
                self._seen(msg)
                return msg

    def _seen(self, msg: Any) -> None:
        self._record("in", msg)
        seq = as_int(field(msg, 34))
        if seq is None:
            return
        if self.their_first is None:
            self.their_first = seq
        self.their_last = seq

    def _duplicate(self, msg: Any) -> bool:
        """A PossDup resend of a message we already saw."""
        seq = as_int(field(msg, 34))
        return (
            field(msg, 43) == "Y"
            and seq is not None
            and self.their_last is not None
            and seq <= self.their_last
        )

    # ---- messages out -------------------------------------------------------------------------
    async def _send(
        self,
        msg_type: str,
        body: Iterable[tuple[int, str | None]] = (),
        *,
        seq: int | None = None,
        poss_dup: bool = False,
    ) -> None:
        assert self.writer is not None
        if seq is None:
            seq, self.next_out = self.next_out, self.next_out + 1
        data = build_message(self.session, msg_type, seq, body, poss_dup=poss_dup).encode()
        self._record("out", data)
        self.sent_any = True
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), max(self.remaining(), LOGOUT_GRACE_S))
        except TimeoutError:
            raise FixTimeoutError(
                self.name, self.action, "the counterparty is not reading (send buffer full)"
            ) from None
        except OSError as exc:
            raise FixError(
                self.name, self.action, f"connection lost while sending: {exc}"
            ) from None

    async def _gap_fill(self, msg: Any) -> None:
        """Answer a ResendRequest: we only ever sent admin messages, so gap-fill them.

        An acceptor queues messages that arrive while its gap is open (QuickFIX does) and
        drops those a gap fill skips past: if that swallowed our TestRequest, send it again.
        """
        begin = as_int(field(msg, 7)) or 1
        end = as_int(field(msg, 16)) or 0
        new_seq = self.next_out if end == 0 or end >= self.next_out - 1 else end + 1
        if begin >= new_seq:
            log.info("FIX probe %s: ResendRequest 7=%d is past what we sent", self.name, begin)
            return
        await self._send("4", [(123, "Y"), (36, str(new_seq))], seq=begin, poss_dup=True)
        swallowed = self.test_request_seq
        if swallowed is not None and begin <= swallowed < new_seq:
            log.info(
                "FIX probe %s: gap fill covered TestRequest 34=%d; sending it again",
                self.name,
                swallowed,
            )
            self.test_request_seq = self.next_out
            await self._send("1", [(112, self.test_req_id)])

    # ---- what went wrong ----------------------------------------------------------------------
    def _logout_error(self, msg: Any) -> FixError:
        """The error a Logout (or Reject) from the counterparty means at this point.

        789 on a Logout means "too low" only when it is above the MsgSeqNum of our Logon;
        some engines put 789 on every Logout.
        """
        next_expected = as_int(field(msg, 789)) if field(msg, 35) == "5" else None
        if next_expected is not None and next_expected <= self.logon_seq:
            next_expected = None
        expected = next_expected or expected_seq_from_text(field(msg, 58))
        answer = describe(msg)
        if expected is not None:
            return FixSequenceTooLowError(self.name, self.action, answer, expected=expected)
        if not self.logged_on:
            return FixLogonRejectedError(self.name, self.action, answer)
        return FixError(self.name, self.action, answer)

    async def _counterparty_logout(self, msg: Any) -> FixError:
        """Answer their Logout with ours (as a session should), then report it."""
        error = self._logout_error(msg)
        if not self.logout_sent:
            self.logout_sent = True
            with contextlib.suppress(FixError):
                await self._send("5")
        return error

    # ---- bookkeeping --------------------------------------------------------------------------
    def _record(self, direction: Direction, msg: Any, note: str = "") -> None:
        text = wire_text(msg.encode(raw=True) if hasattr(msg, "pairs") else msg)
        log.debug("FIX probe %s %s %s", self.name, direction, text)
        if len(self.transcript) >= TRANSCRIPT_MAX:
            self.not_kept += 1
            return
        self.transcript.append((direction, f"({note}) {text}" if note else text))


def _now() -> float:
    return asyncio.get_running_loop().time()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
