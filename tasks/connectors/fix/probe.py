"""The health probe before the open and the Logout that ends the FIX day.

``probe_session`` does what an on-call engineer would do by hand before the open (DOMAIN.md,
"FIX session layer essentials")::

    TCP connect ─► Logon 35=A ─► Logon back, 108 echoed
      ─► TestRequest 35=1 with a unique 112 ─► Heartbeat 35=0 with the same 112
         within min(2 s, HeartBtInt)
      ─► Logout 35=5 ─► Logout back (bounded wait) ─► close

``end_of_day_logout`` logs on continuing the day's numbers and logs out with an
``End of day`` text. Both stand on ``session.Initiator``; every step has a deadline, and
neither takes longer than ``timeout_s`` (default: the session's ``timeout_s``) plus
``DEADLINE_MARGIN_S``.

Sequence numbers: with ``reset_on_logon`` (the default) the Logon carries 141=Y and
34=1. Otherwise the probe continues from the number ``store`` kept after its previous
attempt on that session. After a "sequence too low" answer the expected number is
stored, and for ``too_low_backoff_s`` (a minute) the probe refuses to log on to that
session again. The errors are drawn in the package docstring (``fix/__init__.py``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import SecretStr

from openbell import secrets
from openbell.errors import FixError, FixSequenceTooLowError, FixTimeoutError
from openbell.runbooks.schema import FixSession
from openbell.tasks.connectors.fix.codec import sends_credentials
from openbell.tasks.connectors.fix.session import DEADLINE_MARGIN_S, Direction, Initiator
from openbell.tasks.connectors.fix.store import (
    after_attempt,
    after_too_low,
    load_state,
    refuse_if_recently_too_low,
    save_state,
)

log = logging.getLogger(__name__)

#: After a "sequence too low" answer, no new logon to that session for this long.
TOO_LOW_BACKOFF_S = 60.0


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


def _evidence(result: ProbeResult | LogoutResult) -> dict[str, Any]:
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
        FixError: anything else the session did wrong (see the package docstring).

    Example:
        >>> r = asyncio.run(probe_session("amer-oe", estate.fix_sessions["amer-oe"]))
        >>> r.begin_string, r.their_seq_seen, r.last_seq_sent
        ('FIXT.1.1', (1, 3), 3)
    """
    budget = session.timeout_s if timeout_s is None else timeout_s
    if budget <= 0:
        raise ValueError(f"timeout_s must be positive, got {budget}")
    state = load_state(name)
    refuse_if_recently_too_low(name, state, too_low_backoff_s)
    if password is None and session.password_secret and sends_credentials(session):
        password = await _resolve_password(name, session.password_secret, budget)
    first_seq = 1 if session.reset_on_logon else state.next_sender_seq
    conn = Initiator(name, session, password, test_req_id or _new_test_req_id(), first_seq)
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
            result = await _probe(conn, budget)
    except TimeoutError:
        raise FixTimeoutError(
            name, conn.action, f"probe did not finish within {budget + DEADLINE_MARGIN_S:.1f} s"
        ) from None
    except FixSequenceTooLowError as exc:
        save_state(name, after_too_low(state, exc.expected))
        log.warning("FIX probe %s: %s", name, exc)
        raise
    except FixError as exc:
        save_state(name, after_attempt(state, conn))
        log.warning("FIX probe %s failed: %s", name, exc)
        log.debug("FIX probe %s transcript: %s", name, conn.transcript)
        raise
    save_state(name, after_attempt(state, conn))
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
    if password is None and session.password_secret and sends_credentials(session):
        password = await _resolve_password(name, session.password_secret, budget)
    continuing = session.model_copy(update={"reset_on_logon": False})
    conn = Initiator(name, continuing, password, "", seq)
    log.info("FIX %s: end-of-day logon (34=%d) and Logout %r", name, seq, text)
    try:
        async with asyncio.timeout(budget + DEADLINE_MARGIN_S):
            return await _eod_logout(conn, budget, text)
    except TimeoutError:
        raise FixTimeoutError(
            name, conn.action, f"logout did not finish within {budget + DEADLINE_MARGIN_S:.1f} s"
        ) from None


async def _probe(conn: Initiator, budget_s: float) -> ProbeResult:
    """Connect, log on, test, log out; always close."""
    connect_ms = await conn.connect(budget_s)
    try:
        logon_ms, heartbeat = await conn.logon()
        test_ms = await conn.test_request()
        clean = await conn.logout()
    finally:
        await conn.close()
    return ProbeResult(
        session=conn.name,
        begin_string=conn.session.begin_string,
        connect_ms=connect_ms,
        logon_rtt_ms=logon_ms,
        test_request_rtt_ms=test_ms,
        heartbeat_echoed=heartbeat,
        test_req_id=conn.test_req_id,
        last_seq_sent=conn.next_out - 1,
        their_seq_seen=conn.their_seq_seen(),
        logout_clean=clean,
        transcript=conn.kept_transcript(),
    )


async def _eod_logout(conn: Initiator, budget_s: float, text: str) -> LogoutResult:
    """Connect, log on, log out with ``text``; always close."""
    await conn.connect(budget_s)
    try:
        await conn.logon()
        clean = await conn.logout(text)
    finally:
        await conn.close()
    return LogoutResult(
        session=conn.name,
        text=text,
        logon_seq=conn.logon_seq,
        last_seq_sent=conn.next_out - 1,
        their_seq_seen=conn.their_seq_seen(),
        logout_clean=clean,
        transcript=conn.kept_transcript(),
    )


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
