"""The FIX probe against the lab venue and against small misbehaving acceptors."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from openbell.errors import (
    FixError,
    FixLogonRejectedError,
    FixSequenceTooLowError,
    FixTimeoutError,
)
from openbell.lab.faults import FaultBook
from openbell.lab.venue import FixVenue
from openbell.runbooks.schema import Estate, FixSession
from openbell.settings import get_settings
from openbell.tasks.connectors.fix import (
    DEADLINE_MARGIN_S,
    LogoutResult,
    ProbeResult,
    end_of_day_logout,
    expected_seq_from_text,
    probe_session,
    probe_sessions,
)
from tests.fixtures.fix import (
    FixPeer,
    field,
    fix_estate,
    running_venue,
    scripted_acceptor,
    silent_acceptor,
    tags,
)
from tests.fixtures.services import free_port

PASSWORD = "correct-horse-battery"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENBELL_HOME", str(tmp_path))
    get_settings.cache_clear()
    return tmp_path


@pytest.fixture
def book(home: Path) -> FaultBook:
    return FaultBook(home / "lab" / "faults.json")


@pytest.fixture
def estate(home: Path) -> Estate:
    return fix_estate(
        {
            "oe42": {"port": free_port(), "begin_string": "FIX.4.2", "sender_comp_id": "OB42"},
            "oe44": {
                "port": free_port(),
                "begin_string": "FIX.4.4",
                "sender_comp_id": "OB44",
                "username": "trader",
                "password_secret": "OB_TEST_PROBE_PASSWORD",
            },
            "oe50": {"port": free_port(), "begin_string": "FIXT.1.1", "sender_comp_id": "OB50"},
            "dc44": {
                "port": free_port(),
                "begin_string": "FIX.4.4",
                "sender_comp_id": "OB44DC",
                "kind": "drop_copy",
                "reset_on_logon": False,
            },
            "dc42": {
                "port": free_port(),
                "begin_string": "FIX.4.2",
                "sender_comp_id": "OB42DC",
                "kind": "drop_copy",
                "reset_on_logon": False,
            },
        },
        home,
    )


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OB_TEST_PROBE_PASSWORD", PASSWORD)


def with_venue(
    estate: Estate,
    book: FaultBook,
    scenario: Callable[[FixVenue], Awaitable[Any]],
    **venue_kw: Any,
) -> Any:
    async def main() -> Any:
        async with running_venue(estate, book, **venue_kw) as venue:
            return await scenario(venue)

    return asyncio.run(main())


def session_at(port: int, **overrides: Any) -> FixSession:
    """A session pointing at a test acceptor (CompIDs OBTEST -> LABVENUE)."""
    cfg: dict[str, Any] = {
        "region": "emea",
        "address": "127.0.0.1",
        "port": port,
        "begin_string": "FIX.4.4",
        "sender_comp_id": "OBTEST",
        "target_comp_id": "LABVENUE",
        "heartbeat_s": 30,
    }
    return FixSession.model_validate({**cfg, **overrides})


def logons_received(venue: FixVenue, name: str) -> int:
    return sum(1 for e in venue.wire_log(name) if e.direction == "in" and "|35=A|" in e.text)


def sent(result: ProbeResult) -> list[str]:
    return [text for direction, text in result.transcript if direction == "out"]


def kinds(result: ProbeResult) -> list[str]:
    """The MsgTypes of the transcript, in order."""
    return [m.group(1) for _, t in result.transcript if (m := re.search(r"\|35=(\w+)\|", t))]


def seq_of(text: str) -> int:
    """The MsgSeqNum of a transcript line."""
    match = re.search(r"\|34=(\d+)\|", text)
    assert match is not None, text
    return int(match.group(1))


def check_framing(raw: bytes) -> int:
    """Check BodyLength and CheckSum of every message in a raw stream; return the count."""
    count = 0
    for match in re.finditer(rb"(?<![^\x01])8=FIX[^\x01]*\x019=(\d+)\x01", raw):
        body_end = match.end() + int(match.group(1))
        assert raw[body_end : body_end + 3] == b"10="
        assert sum(raw[match.start() : body_end]) % 256 == int(raw[body_end + 3 : body_end + 6])
        count += 1
    return count


# ---- healthy sessions -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["oe42", "oe44", "oe50"])
def test_healthy_session_for_each_version(estate: Estate, book: FaultBook, name: str) -> None:
    session = estate.fix_sessions[name]
    result = with_venue(estate, book, lambda v: probe_session(name, session, test_req_id="T-1"))
    assert result.session == name
    assert result.begin_string == session.begin_string
    assert result.heartbeat_echoed == 30
    assert result.test_req_id == "T-1"
    assert result.last_seq_sent == 3
    assert result.their_seq_seen == (1, 3)
    assert result.logout_clean
    assert kinds(result) == ["A", "A", "1", "0", "5", "5"]
    logon = sent(result)[0]
    assert logon.startswith(f"8={session.begin_string}|9=")
    assert "|98=0|108=30|141=Y" in logon
    assert ("|1137=9" in logon) == (name == "oe50")
    assert ("|553=trader|" in logon) == (name == "oe44")
    assert "|112=T-1|" in result.transcript[3][1]
    json.dumps(result.evidence())


def test_what_the_probe_sends_is_strictly_formed(home: Path) -> None:
    """Header order, SendingTime with milliseconds, BodyLength and CheckSum, seen raw."""

    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        test_request = await peer.expect("1")
        await peer.send("0", [(112, field(test_request, 112))])
        await _answer_logout(peer)
        for msg in peer.received:
            assert tags(msg)[:7] == [8, 9, 35, 49, 56, 34, 52]
            assert re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d\.\d{3}", field(msg, 52) or "")
        assert check_framing(peer.raw_received) == 3

    async def main() -> ProbeResult:
        async with scripted_acceptor(acceptor) as port:
            return await probe_session("strict", session_at(port))

    assert asyncio.run(main()).logout_clean


def test_password_is_sent_but_masked_in_the_transcript(estate: Estate, book: FaultBook) -> None:
    """The venue checks 554 against the secret, so a wrong given password is refused."""
    session = estate.fix_sessions["oe44"]

    async def scenario(venue: FixVenue) -> tuple[ProbeResult, FixError]:
        from_secret = await probe_session("oe44", session)
        with pytest.raises(FixLogonRejectedError) as wrong:
            await probe_session("oe44", session, password=SecretStr("wrong-pw-123"))
        return from_secret, wrong.value

    result, wrong = with_venue(estate, book, scenario)
    assert "|553=trader|554=***|" in sent(result)[0]
    assert PASSWORD not in repr(result)
    assert PASSWORD not in json.dumps(result.evidence())
    assert "wrong-pw-123" not in str(wrong)


def test_fix42_sends_no_username_or_password(home: Path, book: FaultBook) -> None:
    estate = fix_estate(
        {
            "oe42": {
                "port": free_port(),
                "begin_string": "FIX.4.2",
                "sender_comp_id": "OB42",
                "username": "trader",
            }
        },
        home,
    )
    result = with_venue(
        estate,
        book,
        lambda v: probe_session("oe42", estate.fix_sessions["oe42"], password=SecretStr("pw-42")),
    )
    assert "553=" not in sent(result)[0] and "554=" not in sent(result)[0]


def test_probe_sessions_fans_out_and_reports_each(estate: Estate, book: FaultBook) -> None:
    book.add("fix_logon_rejected", "oe50")
    results = with_venue(estate, book, lambda v: probe_sessions(estate.fix_sessions, concurrency=2))
    assert list(results) == list(estate.fix_sessions)
    assert isinstance(results["oe50"], FixLogonRejectedError)
    assert all(isinstance(r, ProbeResult) for n, r in results.items() if n != "oe50")


# ---- rejected logons and sequence numbers -----------------------------------------------------


def test_logon_rejected(estate: Estate, book: FaultBook) -> None:
    book.add("fix_logon_rejected", "oe44")
    with pytest.raises(FixLogonRejectedError) as info:
        with_venue(estate, book, lambda v: probe_session("oe44", estate.fix_sessions["oe44"]))
    assert info.value.target == "oe44"
    assert "Logon to 127.0.0.1" in info.value.action
    assert "Logon rejected: invalid username or password" in str(info.value)


def test_sequence_too_low_reports_expected_and_does_not_loop(
    estate: Estate, book: FaultBook
) -> None:
    book.add("fix_seq_too_low", "oe44", expected=42)
    session = estate.fix_sessions["oe44"]

    async def scenario(venue: FixVenue) -> tuple[FixError, FixError, int, FixError, int]:
        with pytest.raises(FixSequenceTooLowError) as first:
            await probe_session("oe44", session)
        with pytest.raises(FixError) as second:
            await probe_session("oe44", session)
        after_guard = logons_received(venue, "oe44")
        with pytest.raises(FixSequenceTooLowError) as forced:
            await probe_session("oe44", session, too_low_backoff_s=0)
        return first.value, second.value, after_guard, forced.value, logons_received(venue, "oe44")

    first, second, after_guard, forced, total = with_venue(estate, book, scenario)
    assert isinstance(first, FixSequenceTooLowError) and first.expected == 42
    assert "MsgSeqNum too low, expecting 42" in str(first)
    assert not isinstance(second, FixSequenceTooLowError)
    assert "not retrying" in str(second) and "(expecting 42)" in str(second)
    assert "next attempt allowed after" in str(second)
    assert after_guard == 1
    assert isinstance(forced, FixSequenceTooLowError)
    assert total == 2


@pytest.mark.parametrize("name", ["dc42", "dc44"])
def test_sequence_continues_without_reset_and_too_low_is_recovered(
    estate: Estate, book: FaultBook, home: Path, name: str
) -> None:
    """Without 141=Y the probe continues its numbers; after losing them it learns N."""
    session = estate.fix_sessions[name]

    async def scenario(venue: FixVenue) -> tuple[ProbeResult, ProbeResult, int, ProbeResult]:
        first = await probe_session(name, session)
        second = await probe_session(name, session)
        (home / "state" / "fix" / f"{name}.json").unlink()
        with pytest.raises(FixSequenceTooLowError) as lost:
            await probe_session(name, session)
        recovered = await probe_session(name, session, too_low_backoff_s=0)
        return first, second, lost.value.expected, recovered

    first, second, expected, recovered = with_venue(estate, book, scenario)
    assert "141=Y" not in sent(first)[0]
    assert "|34=1|" in sent(first)[0] and "|34=4|" in sent(second)[0]
    assert second.their_seq_seen == (4, 6)
    assert expected == 7
    assert "|34=7|" in sent(recovered)[0]


def test_probe_gap_fills_when_the_venue_expects_less(estate: Estate, book: FaultBook) -> None:
    """Our stored number is ahead of a restarted venue: it asks for a resend, we gap-fill.

    The venue (like QuickFIX) queued our TestRequest behind the gap and drops it when the
    gap fill moves past it, so the probe sends the TestRequest again.
    """
    session = estate.fix_sessions["dc44"]
    with_venue(estate, book, lambda v: probe_session("dc44", session))

    async def scenario(venue: FixVenue) -> tuple[ProbeResult, int]:
        result = await probe_session("dc44", session)
        return result, venue.expected_seq("dc44")

    result, expected_next = with_venue(estate, book, scenario)
    fills = [t for t in sent(result) if "|35=4|" in t]
    assert len(fills) == 1
    assert "|34=1|43=Y|" in fills[0] and "|123=Y|36=6|" in fills[0]
    test_requests = [t for t in sent(result) if "|35=1|" in t]
    assert [seq_of(t) for t in test_requests] == [5, 6]
    assert all(f"|112={result.test_req_id}" in t for t in test_requests)
    assert expected_next == 8
    assert result.last_seq_sent == 7


def test_sending_time_off_is_a_rejected_logon(estate: Estate, book: FaultBook) -> None:
    def venue_clock() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=10)

    with pytest.raises(FixLogonRejectedError) as info:
        with_venue(
            estate,
            book,
            lambda v: probe_session("oe42", estate.fix_sessions["oe42"]),
            clock=venue_clock,
        )
    assert "Reject 373=10 (SendingTime accuracy problem)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MsgSeqNum too low, expecting 5 but received 1", 5),
        ("MsgSeqNum too low, expected 17, received 3", 17),
        ("Sequence number too low. Expected: 1001 Received: 1", 1001),
        ("MsgSeqNum(34) too low, expecting 12", 12),
        ("Incoming seq number 1 is less than expected 12", 12),
        ("Tag 34 (MsgSeqNum) is lower than expected (77)", 77),
        ("msgseqnum too low, expected msgseqnum(34) = 8", 8),
        ("Logon rejected: invalid username or password", None),
        ("MsgSeqNum too high, expecting 5 but received 9", None),
        ("", None),
    ],
)
def test_expected_seq_from_common_engine_wordings(text: str, expected: int | None) -> None:
    assert expected_seq_from_text(text) == expected


# ---- deadlines --------------------------------------------------------------------------------


def test_acceptor_that_never_answers_fails_within_the_deadline(home: Path) -> None:
    async def main() -> float:
        async with silent_acceptor() as port:
            started = time.monotonic()
            with pytest.raises(FixTimeoutError) as info:
                await probe_session("mute", session_at(port), timeout_s=0.5)
            assert "no Logon answer" in str(info.value)
            return time.monotonic() - started

    assert asyncio.run(main()) < 0.5 + DEADLINE_MARGIN_S + 2.0  # generous


def test_latency_beyond_the_budget_times_out(estate: Estate, book: FaultBook) -> None:
    book.add("latency", "*", ms=3000)
    with pytest.raises(FixTimeoutError):
        with_venue(
            estate,
            book,
            lambda v: probe_session("oe42", estate.fix_sessions["oe42"], timeout_s=0.5),
        )


def test_connection_refused_is_a_fix_error_not_a_timeout(home: Path) -> None:
    port = free_port()
    with pytest.raises(FixError) as info:
        asyncio.run(probe_session("nobody", session_at(port)))
    assert not isinstance(info.value, FixTimeoutError)
    assert info.value.target == "nobody"
    assert f"connect to 127.0.0.1:{port}" in str(info.value)


# ---- acceptors that do things differently ------------------------------------------------------


async def _answer_logon(peer: FixPeer, **extra: Any) -> Any:
    logon = await peer.expect("A")
    await peer.send("A", [(98, "0"), (108, extra.get("heartbeat", field(logon, 108)))])
    return logon


async def _answer_logout(peer: FixPeer) -> None:
    await peer.expect("5")
    await peer.send("5")


def run_against(script: Callable[[FixPeer], Awaitable[None]], **session_kw: Any) -> ProbeResult:
    async def main() -> ProbeResult:
        async with scripted_acceptor(script) as port:
            return await probe_session("scripted", session_at(port, **session_kw))

    return asyncio.run(main())


def test_acceptor_test_request_duplicates_and_split_frames_are_handled(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await peer.expect("A")
        await peer.write(  # Logon answer with a vendor tag, our TestRequest, an idle Heartbeat
            peer.message("A", [(98, "0"), (108, 30), (9999, "vendor-tag")])
            + peer.message("1", [(112, "VENUE-TR-1")])
            + peer.message("0")
        )
        answers = [await peer.recv(), await peer.recv()]
        ours = next(m for m in answers if field(m, 35) == "1")
        assert [field(m, 112) for m in answers if field(m, 35) == "0"] == ["VENUE-TR-1"]
        await peer.send("0", [(112, "VENUE-TR-1")], seq=2, poss_dup=True)  # a duplicate
        await peer.send("8", [(37, "O1"), (17, "E1"), (150, "F"), (39, "2")])  # drop copy
        await peer.write(peer.message("0", [(112, field(ours, 112))]), chunk_size=5)
        await _answer_logout(peer)

    result = run_against(acceptor)
    assert result.logout_clean
    assert result.their_seq_seen == (1, 6)
    assert any("duplicate, ignored" in t for _, t in result.transcript)


def test_resend_request_is_answered_with_a_gap_fill(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        await peer.send("2", [(7, 1), (16, 0)])
        first = await peer.expect("1")  # sent as soon as the Logon was answered
        fill = await peer.expect("4")
        assert (field(fill, 34), field(fill, 43), field(fill, 123), field(fill, 36)) == (
            "1",
            "Y",
            "Y",
            "3",
        )
        assert field(fill, 122) is not None
        again = await peer.expect("1")  # the gap fill covered the first one
        assert (field(again, 34), field(again, 112)) == ("3", field(first, 112))
        await peer.send("0", [(112, field(again, 112))])
        await _answer_logout(peer)

    assert run_against(acceptor).logout_clean


def test_wrong_test_req_id_fails(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        await peer.expect("1")
        await peer.send("0", [(112, "NOT-YOURS")])
        await _answer_logout(peer)

    with pytest.raises(FixError) as info:
        run_against(acceptor)
    assert "Heartbeat echoed 112='NOT-YOURS'" in str(info.value)


def test_heartbeat_interval_not_echoed_fails(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer, heartbeat=60)
        await _answer_logout(peer)

    with pytest.raises(FixError) as info:
        run_against(acceptor)
    assert "echoed 108=60, expected 108=30" in str(info.value)


def test_no_heartbeat_answer_times_out_within_min_2s_or_heartbeat(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        await peer.expect("1")
        await _answer_logout(peer)

    started = time.monotonic()
    with pytest.raises(FixTimeoutError) as info:
        run_against(acceptor, heartbeat_s=1, timeout_s=20)
    assert "no Heartbeat with 112=" in str(info.value)
    assert time.monotonic() - started < 10  # generous: the wait is min(2 s, 1 s)


def test_session_reject_fails_with_its_text(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        test_request = await peer.expect("1")
        await peer.send("3", [(45, field(test_request, 34)), (373, 11), (58, "Invalid MsgType")])
        await _answer_logout(peer)

    with pytest.raises(FixError) as info:
        run_against(acceptor)
    assert not isinstance(info.value, FixLogonRejectedError)
    assert "Reject 373=11 (invalid MsgType) 45=2 58='Invalid MsgType'" in str(info.value)


def test_reject_in_answer_to_logon_is_a_rejected_logon(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await peer.expect("A")
        await peer.send("3", [(45, 1), (371, 1137), (373, 1), (58, "DefaultApplVerID missing")])

    with pytest.raises(FixLogonRejectedError) as info:
        run_against(acceptor)
    assert "DefaultApplVerID missing" in str(info.value)


def test_counterparty_logout_during_the_test_is_reported(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        await peer.expect("1")
        await peer.send("5", [(58, "Maintenance window")])
        await peer.expect("5")

    with pytest.raises(FixError) as info:
        run_against(acceptor)
    assert "Logout 58='Maintenance window'" in str(info.value)


def test_logout_without_answer_is_not_clean_but_passes(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await _answer_logon(peer)
        test_request = await peer.expect("1")
        await peer.send("0", [(112, field(test_request, 112))])
        await peer.expect("5")

    result = run_against(acceptor)
    assert not result.logout_clean


def test_too_low_logout_with_789_only(home: Path) -> None:
    async def acceptor(peer: FixPeer) -> None:
        await peer.expect("A")
        await peer.send("5", [(789, 250)])

    with pytest.raises(FixSequenceTooLowError) as info:
        run_against(acceptor)
    assert info.value.expected == 250


# ---- end of day ---------------------------------------------------------------------------------


def test_end_of_day_logout_continues_the_numbers_and_says_so(
    estate: Estate, book: FaultBook
) -> None:
    session = estate.fix_sessions["oe44"]  # reset_policy daily (the default)

    async def scenario(venue: FixVenue) -> tuple[LogoutResult, int, int]:
        probe = await probe_session("oe44", session)  # 141=Y, then 3 messages each way
        assert probe.last_seq_sent == 3
        with pytest.raises(FixSequenceTooLowError) as low:
            await end_of_day_logout("oe44", session, seq=2, text="End of day 2026-11-27")
        result = await end_of_day_logout("oe44", session, seq=4, text="End of day 2026-11-27")
        return result, low.value.expected, venue.expected_seq("oe44")

    first, expected, after = with_venue(estate, book, scenario)
    assert expected == 4  # a lower 34 is refused, never reset on the way
    out = [t for d, t in first.transcript if d == "out"]
    assert "|35=A|" in out[0] and "|34=4|" in out[0] and "141=Y" not in out[0]
    assert "|35=5|" in out[1] and "|58=End of day 2026-11-27|" in out[1]
    assert (first.logon_seq, first.last_seq_sent, first.logout_clean) == (4, 5, True)
    assert after == 1  # the venue's daily reset at the end of the FIX day
