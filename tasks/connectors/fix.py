"""A FIX session health probe: log on, prove the session answers, log out.

The probe does what an on-call engineer would do by hand before the open (DOMAIN.md,
"FIX session layer essentials")::

    TCP connect ─► Logon 35=A ─► Logon back, 108 echoed
      ─► TestRequest 35=1 with a unique 112 ─► Heartbeat 35=0 with the same 112
         within min(2 s, HeartBtInt)
      ─► Logout 35=5 ─► Logout back (bounded wait) ─► close

Every step has a deadline, and the whole probe never takes longer than ``timeout_s``
(default: the session's ``timeout_s``) plus ``DEADLINE_MARGIN_S``.

It is strict in what it sends: header 8, 9, 35, 49, 56, 34, 52 in that order, SendingTime
in UTC with milliseconds, BodyLength and CheckSum computed by simplefix, 553/554 only on
FIX.4.4 and later, 1137 DefaultApplVerID on FIXT.1.1. It is tolerant in what it accepts,
so that any QuickFIX-style acceptor will do, not only the lab venue: extra tags,
application messages (a drop copy may stream ExecutionReports), idle Heartbeats, messages
split across reads or several in one read, and duplicates (43=Y) are taken in stride;
garbled messages (bad BodyLength or CheckSum) are ignored as the FIX spec says. While
waiting it behaves like a well-mannered initiator: a counterparty TestRequest gets a
Heartbeat with the same 112, a ResendRequest gets a SequenceReset-GapFill (123=Y; all the
probe ever sends are admin messages, and admin messages are never resent), and a session
Reject 35=3 fails the probe with its 58/373 text.

Sequence numbers: with ``reset_on_logon`` (the default) the Logon carries 141=Y and
34=1. Otherwise the probe continues from the number stored after its previous attempt on
that session, in ``OPENBELL_HOME/state/fix/<session>.json``. After an ambiguous end the
stored number errs on the high side, because "too high" heals itself (the acceptor sends
a ResendRequest, the probe gap-fills) and "too low" does not.

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
    >>> result = asyncio.run(probe_session("emea-oe", estate.fix_sessions["emea-oe"]))
    >>> result.heartbeat_echoed, result.logout_clean
    (30, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import simplefix
from pydantic import SecretStr

from openbell import secrets
from openbell.errors import (
    FixError,
    FixLogonRejectedError,
    FixSequenceTooLowError,
    FixTimeoutError,
)
from openbell.runbooks.schema import FixSession
from openbell.settings import get_settings

log = logging.getLogger(__name__)

#: The whole probe may overrun ``timeout_s`` by at most this (Logout grace and close).
DEADLINE_MARGIN_S = 1.0
#: A TestRequest must be answered within min(this, HeartBtInt).
HEARTBEAT_WAIT_MAX_S = 2.0
#: How long to wait for the counterparty's Logout answer, at most ...
LOGOUT_WAIT_MAX_S = 2.0
#: ... and at least (taken from the margin when the budget is spent).
LOGOUT_GRACE_S = 0.5
#: After a "sequence too low" answer, no new logon to that session for this long.
TOO_LOW_BACKOFF_S = 60.0
#: The transcript keeps this many messages; the rest are counted, not kept.
TRANSCRIPT_MAX = 50
#: Password and NewPassword: masked in transcripts.
SECRET_TAGS = frozenset({554, 925})
MASK = "***"

Direction = Literal["out", "in"]

_REJECT_REASONS = {
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

# "MsgSeqNum too low, expecting 5 but received 1" (QuickFIX/J, QuickFIX),
# "Sequence number too low. Expected: 5 Received: 1", "MsgSeqNum(34) too low, expected 5",
# "Incoming seq number 1 is less than expected 5", "... lower than expected (5)".
_TOO_LOW = re.compile(r"too\s*low|(?:less|lower)\s+than\s+(?:the\s+)?expected", re.IGNORECASE)
_EXPECTED_N = re.compile(
    r"expect(?:ing|ed)?(?:\s+msg\s*seq\s*num(?:\s*\(34\))?)?[\s:=(,]*(\d+)", re.IGNORECASE
)


@dataclass(frozen=True)
class ProbeResult:
    """What one successful probe saw.

    Attributes:
        session: the session name from the estate.
        begin_string: FIX.4.2, FIX.4.4 or FIXT.1.1.
        connect_ms: TCP connect time.
        logon_rtt_ms: from sending our Logon to reading theirs.
        test_request_rtt_ms: from sending the TestRequest to reading the matching Heartbeat.
        heartbeat_echoed: the HeartBtInt (108) in the counterparty's Logon.
        test_req_id: the TestReqID (112) sent and echoed.
        last_seq_sent: our last MsgSeqNum (34) in sequence (gap fills not counted).
        their_seq_seen: the counterparty's first and last MsgSeqNum seen.
        logout_clean: whether the counterparty answered our Logout with a Logout.
        transcript: ``(direction, message)`` pairs, SOH shown as ``|``, passwords masked.
    """

    session: str
    begin_string: str
    connect_ms: float
    logon_rtt_ms: float
    test_request_rtt_ms: float
    heartbeat_echoed: int
    test_req_id: str
    last_seq_sent: int
    their_seq_seen: tuple[int, int]
    logout_clean: bool
    transcript: tuple[tuple[Direction, str], ...] = ()

    def evidence(self) -> dict[str, Any]:
        """The result as JSON-ready data, for an Outcome's evidence."""
        return _evidence(self)


def _evidence(result: Any) -> dict[str, Any]:
    """A probe or logout result as JSON-ready data (tuples as lists)."""
    data = asdict(result)
    data["their_seq_seen"] = list(result.their_seq_seen)
    data["transcript"] = [list(item) for item in result.transcript]
    return data


async def probe_session(
    name: str,
    session: FixSession,
    *,
    password: SecretStr | None = None,
    timeout_s: float | None = None,
    test_req_id: str | None = None,
    too_low_backoff_s: float = TOO_LOW_BACKOFF_S,
) -> ProbeResult:
    """Log on to one FIX session, check it answers a TestRequest, and log out.

    Args:
        name: the session's name in the estate; errors and state files use it.
        session: where and who to log on as.
        password: sent as 554 on FIX.4.4 and later; when None and the session names a
            ``password_secret``, that secret is resolved (environment, then Prefect).
        timeout_s: budget for the whole probe; defaults to ``session.timeout_s``.
        test_req_id: the TestReqID (112) to send; defaults to a fresh unique id.
        too_low_backoff_s: refuse to log on for this long after a "sequence too low"
            answer on this session; 0 disables the guard (tests).

    Returns:
        The timings, sequence numbers and wire transcript of a healthy session.

    Raises:
        FixTimeoutError: no TCP answer, Logon answer or Heartbeat within the deadline.
        FixLogonRejectedError: the Logon was answered with a Logout or a Reject.
        FixSequenceTooLowError: the counterparty expects a higher MsgSeqNum.
        FixError: anything else the session did wrong (see the module docstring).

    Example:
        >>> r = asyncio.run(probe_session("amer-oe", estate.fix_sessions["amer-oe"]))
        >>> r.begin_string, r.their_seq_seen, r.last_seq_sent
        ('FIXT.1.1', (1, 3), 3)
    """
    budget = session.timeout_s if timeout_s is None else timeout_s
    if budget <= 0:
        raise ValueError(f"timeout_s must be positive, got {budget}")
    state = _load_state(name)
    _refuse_if_recently_too_low(name, state, too_low_backoff_s)
    if password is None and session.password_secret and _sends_credentials(session):
        password = await _resolve_password(name, session.password_secret, budget)
    first_seq = 1 if session.reset_on_logon else state.next_sender_seq
    probe = _Probe(name, session, password, test_req_id or _new_test_req_id(), first_seq)
    log.info(
        "FIX probe %s: logon to %s:%d as %s->%s (%s, 34=%d)",
        name,
        session.address,
        session.port,
        session.sender_comp_id,
        session.target_comp_id,
        session.begin_string,
        first_seq,
    )
    try:
        async with asyncio.timeout(budget + DEADLINE_MARGIN_S):
            result = await probe.run(budget)
    except TimeoutError:
        raise FixTimeoutError(
            name, probe.action, f"probe did not finish within {budget + DEADLINE_MARGIN_S:.1f} s"
        ) from None
    except FixSequenceTooLowError as exc:
        _save_state(name, _after_too_low(state, exc.expected))
        log.warning("FIX probe %s: %s", name, exc)
        raise
    except FixError as exc:
        _save_state(name, _after_attempt(state, probe))
        log.warning("FIX probe %s failed: %s", name, exc)
        log.debug("FIX probe %s transcript: %s", name, probe.transcript)
        raise
    _save_state(name, _after_attempt(state, probe))
    log.info(
        "FIX probe %s: ok, logon %.1f ms, TestRequest %.1f ms, logout %s",
        name,
        result.logon_rtt_ms,
        result.test_request_rtt_ms,
        "clean" if result.logout_clean else "unanswered",
    )
    return result


async def probe_sessions(
    sessions: Mapping[str, FixSession],
    *,
    passwords: Mapping[str, SecretStr] | None = None,
    timeout_s: float | None = None,
    concurrency: int = 64,
    too_low_backoff_s: float = TOO_LOW_BACKOFF_S,
) -> dict[str, ProbeResult | FixError]:
    """Probe many sessions at once, at most ``concurrency`` in flight.

    Args:
        sessions: session name -> session, e.g. ``estate.fix_sessions_in("emea")``.
        passwords: per-session passwords; sessions not in it resolve their secret.
        timeout_s: per-probe budget; defaults to each session's ``timeout_s``.
        concurrency: the most probes in flight at once.
        too_low_backoff_s: see ``probe_session``.

    Returns:
        Session name -> its ``ProbeResult`` or the ``FixError`` it failed with, in the
        order of ``sessions``. Every probe runs to its end; an unexpected exception (a
        bug, not a session problem) is raised after all of them finished.

    Example:
        >>> results = asyncio.run(probe_sessions(estate.fix_sessions_in("apac")))
        >>> sorted(n for n, r in results.items() if isinstance(r, FixError))
        []
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)
    known = passwords or {}

    async def one(name: str, session: FixSession) -> ProbeResult | FixError:
        async with gate:
            try:
                return await probe_session(
                    name,
                    session,
                    password=known.get(name),
                    timeout_s=timeout_s,
                    too_low_backoff_s=too_low_backoff_s,
                )
            except FixError as exc:
                return exc

    names = list(sessions)
    outcomes = await asyncio.gather(*(one(n, sessions[n]) for n in names), return_exceptions=True)
    results: dict[str, ProbeResult | FixError] = {}
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, ProbeResult | FixError):
            results[name] = outcome
        else:
            raise outcome
    return results


@dataclass(frozen=True)
class LogoutResult:
    """What an end-of-day Logon/Logout exchange saw.

    Attributes:
        session: the session name.
        text: the Logout's 58 text.
        logon_seq: the MsgSeqNum of our Logon (continuing the day's numbers).
        last_seq_sent: our last MsgSeqNum.
        their_seq_seen: the counterparty's first and last MsgSeqNum seen.
        logout_clean: whether the counterparty answered our Logout.
        transcript: ``(direction, message)`` pairs, passwords masked.
    """

    session: str
    text: str
    logon_seq: int
    last_seq_sent: int
    their_seq_seen: tuple[int, int]
    logout_clean: bool
    transcript: tuple[tuple[Direction, str], ...] = ()

    def evidence(self) -> dict[str, Any]:
        """The result as JSON-ready data, for an Outcome's evidence."""
        return _evidence(self)


async def end_of_day_logout(
    name: str,
    session: FixSession,
    *,
    seq: int,
    text: str,
    password: SecretStr | None = None,
    timeout_s: float | None = None,
) -> LogoutResult:
    """Log on with the day's sequence numbers (no reset) and log out with ``text``.

    The end of the FIX day: the Logon continues at ``seq`` (the next number in the
    firm's store) without 141=Y, and the Logout carries ``text`` (e.g. ``End of day
    2026-11-27``), after which a venue applies its reset schedule. The probe's own
    state file is not touched.

    Raises:
        FixTimeoutError, FixLogonRejectedError, FixSequenceTooLowError, FixError: as
            ``probe_session``.

    Example:
        >>> r = asyncio.run(end_of_day_logout("amer-oe", cfg, seq=4, text="End of day 2026-11-27"))
        >>> r.logout_clean
        True
    """
    budget = session.timeout_s if timeout_s is None else timeout_s
    if password is None and session.password_secret and _sends_credentials(session):
        password = await _resolve_password(name, session.password_secret, budget)
    continuing = session.model_copy(update={"reset_on_logon": False})
    probe = _Probe(name, continuing, password, "", seq)
    log.info("FIX %s: end-of-day logon (34=%d) and Logout %r", name, seq, text)
    try:
        async with asyncio.timeout(budget + DEADLINE_MARGIN_S):
            return await probe.run_logout(budget, text)
    except TimeoutError:
        raise FixTimeoutError(
            name, probe.action, f"logout did not finish within {budget + DEADLINE_MARGIN_S:.1f} s"
        ) from None


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


# ---- one probe ----------------------------------------------------------------------------


class _Probe:
    """One probe: a TCP connection, our sequence numbers, the transcript, the deadline."""

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

    # ---- the sequence -----------------------------------------------------------------------
    async def run(self, budget_s: float) -> ProbeResult:
        """Connect, log on, test, log out; always close."""
        self.deadline = _now() + budget_s
        connect_ms = await self._connect()
        try:
            logon_ms, heartbeat = await self._logon()
            test_ms = await self._test_request()
            clean = await self._logout()
        finally:
            await self._close()
        first = self.their_first if self.their_first is not None else 0
        last = self.their_last if self.their_last is not None else first
        return ProbeResult(
            session=self.name,
            begin_string=self.session.begin_string,
            connect_ms=connect_ms,
            logon_rtt_ms=logon_ms,
            test_request_rtt_ms=test_ms,
            heartbeat_echoed=heartbeat,
            test_req_id=self.test_req_id,
            last_seq_sent=self.next_out - 1,
            their_seq_seen=(first, last),
            logout_clean=clean,
            transcript=self._transcript(),
        )

    async def run_logout(self, budget_s: float, text: str) -> LogoutResult:
        """Connect, log on, log out with ``text``; always close."""
        self.deadline = _now() + budget_s
        await self._connect()
        try:
            await self._logon()
            self.action = f"Logout 58={text!r}"
            await self._send("5", [(58, text)])
            self.logout_sent = True
            clean = await self._await_logout(
                min(LOGOUT_WAIT_MAX_S, max(self._remaining(), LOGOUT_GRACE_S))
            )
        finally:
            await self._close()
        first = self.their_first if self.their_first is not None else 0
        last = self.their_last if self.their_last is not None else first
        return LogoutResult(
            session=self.name,
            text=text,
            logon_seq=self.logon_seq,
            last_seq_sent=self.next_out - 1,
            their_seq_seen=(first, last),
            logout_clean=clean,
            transcript=self._transcript(),
        )

    async def _connect(self) -> float:
        s = self.session
        started = time.perf_counter()
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(s.address, s.port), self._remaining()
            )
        except TimeoutError:
            raise FixTimeoutError(self.name, self.action, "no TCP answer in time") from None
        except OSError as exc:
            raise FixError(self.name, self.action, exc.strerror or str(exc)) from None
        return _ms_since(started)

    async def _logon(self) -> tuple[float, int]:
        s = self.session
        reset = ", 141=Y" if s.reset_on_logon else ""
        self.action = (
            f"Logon to {s.address}:{s.port} as {s.sender_comp_id}->{s.target_comp_id} "
            f"({s.begin_string}, 34={self.next_out}, 108={s.heartbeat_s}{reset})"
        )
        started = time.perf_counter()
        self.logon_seq = self.next_out
        await self._send("A", _logon_body(s, self.password))
        while True:
            msg = await self._next_message(self._remaining(), "Logon answer", started)
            kind = _get(msg, 35)
            if kind == "A":
                break
            if kind == "5":
                raise self._logout_error(msg)
            log.debug("FIX probe %s: ignoring 35=%s before the Logon answer", self.name, kind)
        rtt = _ms_since(started)
        self.logged_on = True
        return rtt, self._check_logon_answer(msg)

    def _check_logon_answer(self, msg: Any) -> int:
        """The echoed HeartBtInt; raises if the answer is not for this session."""
        s = self.session
        problems = []
        if _get(msg, 8) != s.begin_string:
            problems.append(f"BeginString {_get(msg, 8)!r}, expected {s.begin_string!r}")
        if (_get(msg, 49), _get(msg, 56)) != (s.target_comp_id, s.sender_comp_id):
            problems.append(
                f"49={_get(msg, 49)} 56={_get(msg, 56)}, expected "
                f"49={s.target_comp_id} 56={s.sender_comp_id}"
            )
        echoed = _get(msg, 108)
        if echoed is None:
            problems.append("no HeartBtInt (108) in the Logon answer")
        elif echoed.strip() != str(s.heartbeat_s):
            problems.append(f"Logon answer echoed 108={echoed}, expected 108={s.heartbeat_s}")
        if problems:
            raise FixError(self.name, self.action, "; ".join(problems))
        return s.heartbeat_s

    async def _test_request(self) -> float:
        wait = min(HEARTBEAT_WAIT_MAX_S, float(self.session.heartbeat_s), self._remaining())
        want = self.test_req_id
        self.action = f"TestRequest 112={want} (Heartbeat expected within {wait:.1f} s)"
        started = time.perf_counter()
        self.test_request_seq = self.next_out
        await self._send("1", [(112, want)])
        try:
            while True:
                msg = await self._next_message(wait, f"Heartbeat with 112={want}", started)
                kind = _get(msg, 35)
                if kind == "5":
                    raise await self._counterparty_logout(msg)
                if kind != "0" or _get(msg, 112) is None:
                    continue  # an idle Heartbeat, or an application message
                if _get(msg, 112) != want:
                    raise FixError(
                        self.name,
                        self.action,
                        f"Heartbeat echoed 112={_get(msg, 112)!r}, expected 112={want!r}",
                    )
                return _ms_since(started)
        finally:
            self.test_request_seq = None

    async def _logout(self) -> bool:
        """Send Logout and wait (bounded) for the answer; True if it came."""
        self.action = "Logout"
        await self._send("5")
        self.logout_sent = True
        return await self._await_logout(
            min(LOGOUT_WAIT_MAX_S, max(self._remaining(), LOGOUT_GRACE_S))
        )

    async def _await_logout(self, within_s: float) -> bool:
        """Wait (bounded) for the counterparty's Logout; True if it came."""
        started = time.perf_counter()
        until = _now() + within_s
        try:
            while True:
                msg = await self._next_message(until - _now(), "Logout answer", started)
                if _get(msg, 35) == "5":
                    return True
        except FixError as exc:
            log.info("FIX probe %s: Logout not answered cleanly: %s", self.name, exc.answer)
            return False

    async def _close(self) -> None:
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
            kind = _get(msg, 35)
            if kind == "1":
                await self._send("0", [(112, _get(msg, 112))])
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
        seq = _int(_get(msg, 34))
        if seq is None:
            return
        if self.their_first is None:
            self.their_first = seq
        self.their_last = seq

    def _duplicate(self, msg: Any) -> bool:
        """A PossDup resend of a message we already saw."""
        seq = _int(_get(msg, 34))
        return (
            _get(msg, 43) == "Y"
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
        data = _build(self.session, msg_type, seq, body, poss_dup=poss_dup).encode()
        self._record("out", data)
        self.sent_any = True
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), max(self._remaining(), LOGOUT_GRACE_S))
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
        begin = _int(_get(msg, 7)) or 1
        end = _int(_get(msg, 16)) or 0
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
        next_expected = _int(_get(msg, 789)) if _get(msg, 35) == "5" else None
        if next_expected is not None and next_expected <= self.logon_seq:
            next_expected = None
        expected = next_expected or expected_seq_from_text(_get(msg, 58))
        answer = _describe(msg)
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
    def _remaining(self) -> float:
        return max(self.deadline - _now(), 0.0)

    def _record(self, direction: Direction, msg: Any, note: str = "") -> None:
        text = wire_text(msg.encode(raw=True) if hasattr(msg, "pairs") else msg)
        log.debug("FIX probe %s %s %s", self.name, direction, text)
        if len(self.transcript) >= TRANSCRIPT_MAX:
            self.not_kept += 1
            return
        self.transcript.append((direction, f"({note}) {text}" if note else text))

    def _transcript(self) -> tuple[tuple[Direction, str], ...]:
        items = list(self.transcript)
        if self.not_kept:
            items.append(("in", f"({self.not_kept} more messages not kept)"))
        return tuple(items)


# ---- wire helpers ---------------------------------------------------------------------------


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
    if _int(pairs[1][1].decode("ascii", "replace")) != body_length:
        return f"BodyLength 9={pairs[1][1].decode('ascii', 'replace')}, counted {body_length}"
    if _int(pairs[-1][1].decode("ascii", "replace")) != checksum:
        return f"CheckSum 10={pairs[-1][1].decode('ascii', 'replace')}, computed {checksum:03d}"
    return None


def _build(
    session: FixSession,
    msg_type: str,
    seq: int,
    body: Iterable[tuple[int, str | None]],
    *,
    poss_dup: bool = False,
) -> Any:
    """A message with the standard header in the standard order."""
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


def _sends_credentials(session: FixSession) -> bool:
    """553/554 exist from FIX.4.4 on (FIXT.1.1 included), not in FIX.4.2."""
    return session.begin_string != "FIX.4.2"


def _logon_body(session: FixSession, password: SecretStr | None) -> list[tuple[int, str | None]]:
    body: list[tuple[int, str | None]] = [(98, "0"), (108, str(session.heartbeat_s))]
    if session.reset_on_logon:
        body.append((141, "Y"))
    if _sends_credentials(session):
        body.append((553, session.username))
        body.append((554, password.get_secret_value() if password else None))
    elif session.username or password:
        log.warning("FIX.4.2 has no Username/Password fields: not sending credentials")
    if session.begin_string == "FIXT.1.1":
        body.append((1137, session.default_appl_ver_id or "9"))
    return body


def _describe(msg: Any) -> str:
    """A Logout or Reject as the one line an on-call engineer needs."""
    kind = {"5": "Logout", "3": "Reject"}.get(_get(msg, 35) or "", f"35={_get(msg, 35)}")
    parts = [kind]
    reason = _get(msg, 373)
    if reason is not None:
        parts.append(f"373={reason} ({_REJECT_REASONS.get(reason, 'other')})")
    for tag in (45, 371, 789):
        if _get(msg, tag) is not None:
            parts.append(f"{tag}={_get(msg, tag)}")
    text = _get(msg, 58)
    parts.append(f"58={text!r}" if text else "(no text)")
    return " ".join(parts)


def _get(msg: Any, tag: int) -> str | None:
    value = msg.get(tag)
    return None if value is None else value.decode("utf-8", "replace")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _now() -> float:
    return asyncio.get_running_loop().time()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _new_test_req_id() -> str:
    return f"OB-{uuid.uuid4().hex[:16].upper()}"


async def _resolve_password(name: str, ref: str, within_s: float) -> SecretStr:
    """Resolve the password secret in a thread (Prefect may be slow), within the budget."""
    action = f"resolve password secret {ref}"
    try:
        return await asyncio.wait_for(asyncio.to_thread(secrets.resolve, ref), within_s)
    except TimeoutError:
        raise FixTimeoutError(name, action, f"not resolved within {within_s:.1f} s") from None
    except secrets.SecretNotFoundError as exc:
        raise FixError(name, action, str(exc)) from None


# ---- state across probes: OPENBELL_HOME/state/fix/<session>.json ----------------------------


@dataclass(frozen=True)
class _State:
    next_sender_seq: int = 1
    too_low_at: datetime | None = None
    too_low_expected: int | None = None


def _state_path(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return get_settings().home / "state" / "fix" / f"{safe}.json"


def _load_state(name: str) -> _State:
    path = _state_path(name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        too_low = raw.get("too_low") or {}
        return _State(
            next_sender_seq=int(raw.get("next_sender_seq", 1)),
            too_low_at=datetime.fromisoformat(too_low["at"]) if too_low else None,
            too_low_expected=int(too_low["expected"]) if too_low else None,
        )
    except FileNotFoundError:
        return _State()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("FIX probe %s: ignoring unreadable state %s: %s", name, path, exc)
        return _State()


def _save_state(name: str, state: _State) -> None:
    path = _state_path(name)
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


def _after_attempt(state: _State, probe: _Probe) -> _State:
    """After a probe that got past "too low": keep our next MsgSeqNum (high side)."""
    if not probe.sent_any:
        return state
    if probe.logged_on:
        return _State(next_sender_seq=probe.next_out)
    return replace(state, next_sender_seq=probe.next_out)


def _after_too_low(state: _State, expected: int) -> _State:
    return _State(next_sender_seq=expected, too_low_at=datetime.now(UTC), too_low_expected=expected)


def _refuse_if_recently_too_low(name: str, state: _State, backoff_s: float) -> None:
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
