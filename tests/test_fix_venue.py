"""The lab FIX venue, driven by a raw FIX peer on loopback."""

from __future__ import annotations

import asyncio
from asyncio import Server
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from openbell.lab.faults import FaultBook
from openbell.lab.venue import LOGON_REJECTED_TEXT, FixVenue, start_fix_venue
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings
from tests.fixtures.fix import VENUE_ID, FixPeer, eod_estate, field, fix_estate, running_venue
from tests.fixtures.services import free_port

SENDERS = {"oe42": "OB42", "oe44": "OB44", "oe50": "OB50", "dc44": "OB44DC"}
VERSIONS = {"oe42": "FIX.4.2", "oe44": "FIX.4.4", "oe50": "FIXT.1.1", "dc44": "FIX.4.4"}


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
    shared = free_port()
    return fix_estate(
        {
            "oe42": {"port": free_port(), "begin_string": "FIX.4.2", "sender_comp_id": "OB42"},
            "oe44": {"port": shared, "begin_string": "FIX.4.4", "sender_comp_id": "OB44"},
            "dc44": {
                "port": shared,
                "begin_string": "FIX.4.4",
                "sender_comp_id": "OB44DC",
                "kind": "drop_copy",
                "username": "trader",
                "password_secret": "OB_TEST_DC44_PASSWORD",
            },
            "oe50": {"port": free_port(), "begin_string": "FIXT.1.1", "sender_comp_id": "OB50"},
        },
        home,
    )


VenueScenario = Callable[[FixVenue], Awaitable[Any]]


def run(estate: Estate, book: FaultBook, scenario: VenueScenario, **venue_kw: Any) -> Any:
    """Run ``scenario(venue)`` against a fresh venue in its own event loop."""

    async def main() -> Any:
        async with running_venue(estate, book, **venue_kw) as venue:
            return await scenario(venue)

    return asyncio.run(main())


async def connect(estate: Estate, name: str, **kwargs: Any) -> FixPeer:
    cfg = estate.fix_sessions[name]
    kwargs.setdefault("begin_string", cfg.begin_string)
    kwargs.setdefault("sender", cfg.sender_comp_id)
    return await FixPeer.connect(cfg.port, **kwargs)


# ---- logon and the happy path ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["oe42", "oe44", "oe50"])
def test_logon_test_request_logout_for_each_version(
    estate: Estate, book: FaultBook, name: str
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, name)
        answer = await peer.logon(heartbeat=17)
        assert field(answer, 8) == VERSIONS[name]
        assert (field(answer, 49), field(answer, 56)) == (VENUE_ID, SENDERS[name])
        assert (field(answer, 34), field(answer, 108), field(answer, 141)) == ("1", "17", "Y")
        assert field(answer, 1137) == ("9" if name == "oe50" else None)
        await peer.send("1", [(112, "PING-1")])
        assert field(await peer.expect("0"), 112) == "PING-1"
        await peer.send("5")
        await peer.expect("5")
        assert await peer.until_closed() == []
        assert venue.expected_seq(name) == 4

    run(estate, book, scenario)


def test_sessions_sharing_a_port_are_told_apart_by_comp_ids(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        oe, dc = await connect(estate, "oe44"), await connect(estate, "dc44")
        answers = [await oe.logon(), await dc.logon(fields=[(553, "trader")])]
        assert [field(a, 56) for a in answers] == ["OB44", "OB44DC"]
        assert len(venue.servers) == 3
        for peer in (oe, dc):
            await peer.aclose()

    run(estate, book, scenario)


def test_start_fix_venue_listens_once_per_endpoint(estate: Estate, book: FaultBook) -> None:
    async def main() -> list[int]:
        servers = await start_fix_venue(estate, book)
        try:
            peer = await connect(estate, "oe42")
            await peer.logon()
            await peer.aclose()
            ports = [s.sockets[0].getsockname()[1] for s in servers if isinstance(s, Server)]
            assert len(ports) == len(servers)
            return sorted(ports)
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()

    ports = asyncio.run(main())
    assert ports == sorted({s.port for s in estate.fix_sessions.values()})


def test_split_and_coalesced_messages_are_framed(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        logon = peer.message("A", [(98, "0"), (108, 30), (141, "Y")])
        await peer.write(logon, chunk_size=7)
        await peer.expect("A")
        two = peer.message("1", [(112, "A")]) + peer.message("1", [(112, "B")])
        await peer.write(two)
        assert [field(await peer.expect("0"), 112) for _ in range(2)] == ["A", "B"]
        await peer.aclose()

    run(estate, book, scenario)


# ---- what a Logon must be ---------------------------------------------------------------------


def test_first_message_must_be_a_logon(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.send("0")
        logout = await peer.expect("5")
        assert "First message not a logon" in (field(logout, 58) or "")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_unknown_comp_ids_are_logged_out_and_logged_apart(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44", sender="STRANGER")
        await peer.send("A", [(98, "0"), (108, 30)])
        logout = await peer.expect("5")
        assert field(logout, 58) == f"Unknown session: 49=STRANGER 56={VENUE_ID}"
        assert field(logout, 56) == "STRANGER"
        await peer.until_closed()
        await asyncio.sleep(0.05)
        assert any("STRANGER" in e.text for e in venue.unidentified)

    run(estate, book, scenario)


def test_wrong_begin_string_is_logged_out(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44", begin_string="FIX.4.2")
        await peer.send("A", [(98, "0"), (108, 30), (141, "Y")])
        logout = await peer.expect("5")
        assert field(logout, 58) == "Wrong BeginString: expected FIX.4.4, got FIX.4.2"
        assert await peer.until_closed() == []

    run(estate, book, scenario)


@pytest.mark.parametrize(
    ("heartbeat", "accepted"), [(0, True), (-5, False), ("soon", False), (None, False)]
)
def test_heartbeat_interval_must_be_a_non_negative_integer(
    estate: Estate, book: FaultBook, heartbeat: Any, accepted: bool
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.send("A", [(98, "0"), (108, heartbeat), (141, "Y")])
        if accepted:
            assert field(await peer.expect("A"), 108) == str(heartbeat)
            await peer.aclose()
            return
        reject = await peer.expect("3")
        assert (field(reject, 371), field(reject, 373)) == ("108", "5" if heartbeat else "1")
        await peer.expect("5")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_fixt_logon_requires_default_appl_ver_id(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe50")
        await peer.send("A", [(98, "0"), (108, 30), (141, "Y")])
        reject = await peer.expect("3")
        assert (field(reject, 373), field(reject, 371)) == ("1", "1137")
        assert "1137" in (field(await peer.expect("5"), 58) or "")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


@pytest.mark.parametrize("skew", [timedelta(minutes=-3), timedelta(minutes=5)])
def test_logon_with_sending_time_off_is_rejected(
    estate: Estate, book: FaultBook, skew: timedelta
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe42")
        await peer.send(
            "A", [(98, "0"), (108, 30), (141, "Y")], sending_time=datetime.now(UTC) + skew
        )
        reject = await peer.expect("3")
        assert (field(reject, 373), field(reject, 371), field(reject, 45)) == ("10", "52", "1")
        assert "SendingTime accuracy problem" in (field(await peer.expect("5"), 58) or "")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_sending_time_off_after_logon_is_rejected(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe42")
        await peer.logon()
        await peer.send("0", sending_time=datetime.now(UTC) - timedelta(seconds=150))
        assert field(await peer.expect("3"), 373) == "10"
        await peer.expect("5")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_credentials_are_checked_when_configured(
    estate: Estate, book: FaultBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OB_TEST_DC44_PASSWORD", "s3cret-pw")

    async def scenario(venue: FixVenue) -> None:
        for user, password in [("trader", "nope"), ("someone", "s3cret-pw")]:
            bad = await connect(estate, "dc44")
            await bad.send("A", [(98, "0"), (108, 30), (141, "Y"), (553, user), (554, password)])
            assert field(await bad.expect("5"), 58) == LOGON_REJECTED_TEXT
            await bad.until_closed()
        good = await connect(estate, "dc44")
        await good.logon(fields=[(553, "trader"), (554, "s3cret-pw")])
        await good.aclose()

    run(estate, book, scenario)


def test_a_second_connection_for_a_logged_on_session_is_dropped(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        first = await connect(estate, "oe42")
        await first.logon()
        second = await connect(estate, "oe42")
        await second.send("A", [(98, "0"), (108, 30), (141, "Y")])
        assert await second.until_closed() == []
        await first.send("1", [(112, "still-here")])
        assert field(await first.expect("0"), 112) == "still-here"
        await first.aclose()

    run(estate, book, scenario)


# ---- sequence numbers -------------------------------------------------------------------------


async def _session_of_three(estate: Estate, name: str) -> None:
    """Logon (reset), TestRequest, Logout: the venue then expects 34=4."""
    peer = await connect(estate, name)
    await peer.logon()
    await peer.send("1", [(112, "x")])
    await peer.expect("0")
    await peer.send("5")
    await peer.expect("5")
    await peer.until_closed()


def test_sequence_continues_across_connections_without_reset(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        await _session_of_three(estate, "oe44")
        peer = await connect(estate, "oe44")
        answer = await peer.logon(reset=False, seq=4)
        assert field(answer, 34) == "4" and field(answer, 141) is None
        assert venue.expected_seq("oe44") == 5
        await peer.aclose()

    run(estate, book, scenario)


@pytest.mark.parametrize(("name", "with_789"), [("oe42", False), ("oe44", True)])
def test_logon_too_low_is_logged_out_with_expected(
    estate: Estate, book: FaultBook, name: str, with_789: bool
) -> None:
    async def scenario(venue: FixVenue) -> None:
        await _session_of_three(estate, name)
        peer = await connect(estate, name)
        await peer.send("A", [(98, "0"), (108, 30)], seq=2)
        logout = await peer.expect("5")
        assert field(logout, 58) == "MsgSeqNum too low, expecting 4 but received 2"
        assert field(logout, 789) == ("4" if with_789 else None)
        assert await peer.until_closed() == []

    run(estate, book, scenario)


@pytest.mark.parametrize(
    ("new_seq", "answered"), [(11, ["queued", "after-gap"]), (12, ["after-gap"])]
)
def test_too_high_is_queued_behind_a_resend_request_like_quickfix(
    estate: Estate, book: FaultBook, new_seq: int, answered: list[str]
) -> None:
    """A gap fill up to a queued message releases it; one past it drops it."""

    async def scenario(venue: FixVenue) -> list[str | None]:
        await _session_of_three(estate, "oe42")
        peer = await connect(estate, "oe42")
        await peer.logon(reset=False, seq=10)
        resend = await peer.expect("2")
        assert (field(resend, 7), field(resend, 16)) == ("4", "0")
        await peer.send("1", [(112, "queued")], seq=11)
        await peer.send("4", [(123, "Y"), (36, new_seq)], seq=4, poss_dup=True)
        await peer.send("1", [(112, "after-gap")], seq=12)
        echoed = []
        while "after-gap" not in echoed:
            echoed.append(field(await peer.expect("0"), 112))
        assert venue.expected_seq("oe42") == 13
        dropped = any("queued 34=11 dropped" in e.text for e in venue.wire_log("oe42"))
        assert dropped == (new_seq == 12)
        await peer.aclose()
        return echoed

    assert run(estate, book, scenario) == answered


def test_duplicate_with_poss_dup_is_ignored_without_poss_dup_logged_out(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe42")
        await peer.logon()
        await peer.send("1", [(112, "dup")], seq=1, poss_dup=True)
        await peer.send("1", [(112, "next")], seq=2)
        assert field(await peer.expect("0"), 112) == "next"
        await peer.send("0", seq=2)
        assert "too low" in (field(await peer.expect("5"), 58) or "")
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_resend_request_is_answered_with_a_gap_fill(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.logon()
        await peer.send("1", [(112, "t")])
        await peer.expect("0")
        await peer.send("2", [(7, 1), (16, 0)])
        fill = await peer.expect("4")
        assert (field(fill, 34), field(fill, 43), field(fill, 123), field(fill, 36)) == (
            "1",
            "Y",
            "Y",
            "3",
        )
        assert field(fill, 122) is not None
        await peer.aclose()

    run(estate, book, scenario)


def test_garbled_message_is_ignored_and_consumes_no_sequence_number(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.logon()
        good = peer.message("1", [(112, "garbled")], seq=2)
        await peer.write(good[:-4] + b"999\x01")  # wrong CheckSum
        await peer.send("1", [(112, "clean")], seq=2)
        assert field(await peer.expect("0"), 112) == "clean"
        assert venue.expected_seq("oe44") == 3
        assert any("garbled, ignored: CheckSum" in e.text for e in venue.wire_log("oe44"))
        await peer.aclose()

    run(estate, book, scenario)


def test_application_messages_get_a_business_reject(estate: Estate, book: FaultBook) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.logon()
        await peer.send("D", [(11, "ORD-1"), (55, "VOD.L"), (54, "1"), (38, 100), (40, "1")])
        reject = await peer.expect("j")
        assert (field(reject, 45), field(reject, 372), field(reject, 380)) == ("2", "D", "3")
        await peer.aclose()

    run(estate, book, scenario)


# ---- timers -----------------------------------------------------------------------------------


def test_heartbeat_then_test_request_then_disconnect_when_silent(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> list[tuple[str | None, str | None]]:
        peer = await connect(estate, "oe42")
        await peer.logon(heartbeat=1)
        got = await peer.until_closed(timeout=10)
        assert any("disconnecting" in e.text for e in venue.wire_log("oe42"))
        return [(field(m, 35), field(m, 112)) for m in got]

    seen = run(estate, book, scenario)
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "0" and seen[0][1] is None  # idle heartbeat at ~H
    assert "1" in kinds  # TestRequest at ~1.2 H
    assert seen[kinds.index("1")][1] == "LABVENUE-1-1"


def test_answering_the_venue_test_request_keeps_the_session(
    estate: Estate, book: FaultBook
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe42")
        await peer.logon(heartbeat=1)
        test_request = await peer.expect("1", timeout=10)
        await peer.send("0", [(112, field(test_request, 112))])
        await peer.send("1", [(112, "alive")])
        assert field(await peer.expect("0"), 112) == "alive"
        await peer.aclose()

    run(estate, book, scenario)


def test_venue_close_drops_live_connections(estate: Estate, book: FaultBook) -> None:
    async def main() -> list[Any]:
        venue = FixVenue(estate, book)
        await venue.start()
        peer = await connect(estate, "oe42")
        await peer.logon()
        await venue.close()
        return await peer.until_closed()

    assert asyncio.run(main()) == []


# ---- faults -----------------------------------------------------------------------------------


def test_fault_logon_rejected(estate: Estate, book: FaultBook) -> None:
    book.add("fix_logon_rejected", "oe44")

    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.send("A", [(98, "0"), (108, 30), (141, "Y")])
        assert field(await peer.expect("5"), 58) == "Logon rejected: invalid username or password"
        assert await peer.until_closed() == []

    run(estate, book, scenario)


@pytest.mark.parametrize(("params", "expected"), [({}, "100"), ({"expected": 7}, "7")])
def test_fault_seq_too_low(
    estate: Estate, book: FaultBook, params: dict[str, int], expected: str
) -> None:
    book.add("fix_seq_too_low", "oe44", **params)

    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe44")
        await peer.send("A", [(98, "0"), (108, 30), (141, "Y")])
        logout = await peer.expect("5")
        assert field(logout, 58) == f"MsgSeqNum too low, expecting {expected} but received 1"
        assert field(logout, 789) == expected
        assert await peer.until_closed() == []

    run(estate, book, scenario)


def test_fault_latency_delays_answers(estate: Estate, book: FaultBook) -> None:
    book.add("latency", "*", ms=300)

    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "oe42")
        await peer.logon()
        await peer.aclose()
        await asyncio.sleep(0.05)
        entries = [e for e in venue.wire_log("oe42") if "|35=A|" in e.text]
        assert [e.direction for e in entries] == ["in", "out"]
        assert (entries[1].at - entries[0].at) >= timedelta(milliseconds=300)

    run(estate, book, scenario)


# ---- the wire log -----------------------------------------------------------------------------


def test_wire_log_file_is_per_session_and_masks_passwords(
    estate: Estate, book: FaultBook, home: Path
) -> None:
    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "dc44")
        await peer.logon(fields=[(553, "trader"), (554, "pa55word-xyz")])
        await peer.send("5")
        await peer.expect("5")
        await peer.until_closed()

    run(estate, book, scenario)
    text = (home / "lab" / "fix" / "dc44.log").read_text()
    assert "pa55word-xyz" not in text
    assert "554=***" in text
    rows = [line.split("\t") for line in text.splitlines()]
    assert all(len(row) == 4 for row in rows)
    assert [r[1] for r in rows if r[1] != "event"] == ["in", "out", "in", "out"]
    assert not (home / "lab" / "fix" / "oe44.log").exists()


# ---- end of the FIX day ------------------------------------------------------------------------
def store(home: Path, session: str) -> Path:
    return home / "lab" / "hosts" / "gw1" / "var" / "fix" / "store" / session


@pytest.mark.parametrize(
    ("name", "resets"), [("daily", True), ("sunday", True), ("wednesday", False), ("never", False)]
)
def test_an_end_of_day_logout_applies_the_reset_policy(
    home: Path, book: FaultBook, name: str, resets: bool
) -> None:
    from openbell.lab.effects import EffectsLog

    estate = eod_estate(home)

    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, name)
        await peer.logon(reset=False)
        await peer.send("5", [(58, "End of day 2026-11-27")])  # a Friday; XLON reopens Monday
        await peer.expect("5")
        await peer.until_closed()
        assert venue.expected_seq(name) == (1 if resets else 3)

    run(estate, book, scenario)
    effects = EffectsLog(home / "lab" / "effects.jsonl")
    assert [e.key for e in effects.read(kind="fix_logout")] == [f"{name}|2026-11-27"]
    assert len(effects.read(kind="fix_seq_reset")) == (1 if resets else 0)
    here = store(home, name)
    assert (here / "seqnums").read_text() == (
        "0000000001 : 0000000001\n" if resets else "0000000003 : 0000000003\n"
    )
    events = (here / "event.log").read_text()
    assert "End of day 2026-11-27: logged out" in events
    assert ("End of day 2026-11-27: sequence numbers reset to 1" in events) is resets
    # A reset rotates the day's messages out of the store for the archive.
    assert (here / "messages.log-20261127").exists() is resets
    if resets:
        assert (here / "seqnums-20261127").read_text() == "0000000003 : 0000000003\n"


def test_the_store_carries_sequence_numbers_across_a_venue_restart(
    home: Path, book: FaultBook
) -> None:
    estate = eod_estate(home)

    async def first(venue: FixVenue) -> None:
        peer = await connect(estate, "never")
        await peer.logon(reset=True)
        await peer.send("5")
        await peer.expect("5")
        await peer.until_closed()

    run(estate, book, first)
    assert (store(home, "never") / "seqnums").read_text() == "0000000003 : 0000000003\n"

    async def second(venue: FixVenue) -> None:
        assert venue.expected_seq("never") == 3
        peer = await connect(estate, "never")
        peer.next_out = 3
        answer = await peer.logon(reset=False)
        assert field(answer, 34) == "3"
        await peer.aclose()

    run(estate, book, second)


def test_a_plain_logout_is_not_an_end_of_day(home: Path, book: FaultBook) -> None:
    from openbell.lab.effects import EffectsLog

    estate = eod_estate(home)

    async def scenario(venue: FixVenue) -> None:
        peer = await connect(estate, "daily")
        await peer.logon(reset=False)
        await peer.send("5", [(58, "bye")])
        await peer.expect("5")
        await peer.until_closed()
        assert venue.expected_seq("daily") == 3

    run(estate, book, scenario)
    assert EffectsLog(home / "lab" / "effects.jsonl").read() == []
