"""The venue's listeners: one TCP server per (address, port), shared by its sessions.

Sessions may share an endpoint: a connection belongs to the session of that endpoint whose
CompIDs it logs on with, and ``engine.Conversation`` serves it. ``FixVenue`` also holds
what outlives connections: each session's ``SessionState`` (numbers, wire log, the firm's
store), the strangers' log, and the reset policy applied at the end of the FIX day.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.venue.engine import Conversation
from openbell.lab.venue.session import SessionState, WireEntry, append_line
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Clock = Callable[[], datetime]


class FixVenue:
    """The lab venue: listeners, per-session state and wire logs.

    Args:
        estate: its ``fix_sessions`` are the sessions served.
        book: the lab's faults.
        log_dir: where wire logs go; defaults to ``OPENBELL_HOME/lab/fix``.
        clock: the venue's idea of now (UTC); tests move it to skew SendingTime.

    Example:
        >>> venue = FixVenue(estate, FaultBook(tmp / "faults.json"))
        >>> servers = await venue.start()
        >>> ...
        >>> await venue.close()
    """

    def __init__(
        self,
        estate: Estate,
        book: FaultBook,
        *,
        log_dir: Path | None = None,
        clock: Clock | None = None,
        hosts_dir: Path | None = None,
        effects: EffectsLog | None = None,
    ) -> None:
        self.book = book
        self.estate = estate
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.log_dir = log_dir or get_settings().lab_dir / "fix"
        self.hosts_dir = hosts_dir or get_settings().lab_dir / "hosts"
        self.effects = effects or EffectsLog(self.log_dir.parent / "effects.jsonl")
        self.sessions = {
            name: SessionState(
                name, cfg, self.log_dir / f"{name}.log", self._store_dir(estate, name)
            )
            for name, cfg in estate.fix_sessions.items()
        }
        self.unidentified: list[WireEntry] = []
        self.servers: list[asyncio.AbstractServer] = []
        self._ids = itertools.count(1)
        self._conversations: set[Conversation] = set()

    async def start(self) -> list[asyncio.AbstractServer]:
        """Listen on every (address, port) of the estate's FIX sessions."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        by_endpoint: dict[tuple[str, int], list[SessionState]] = {}
        for state in self.sessions.values():
            key = (state.config.address, state.config.port)
            by_endpoint.setdefault(key, []).append(state)
        for (address, port), states in sorted(by_endpoint.items()):
            listener = Listener(self, states)
            server = await asyncio.start_server(listener.accept, address, port)
            listener.server = server
            self.servers.append(server)
            log.info(
                "FIX venue listening on %s:%d for %s",
                address,
                port,
                ", ".join(s.name for s in states),
            )
        return list(self.servers)

    async def close(self) -> None:
        """Stop listening and drop every live connection."""
        for server in self.servers:
            server.close()
        tasks = [conv.abort() for conv in list(self._conversations)]
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()

    def wire_log(self, session: str) -> list[WireEntry]:
        """Everything on the wire of one session since the venue started."""
        return list(self.sessions[session].wire)

    def expected_seq(self, session: str) -> int:
        """The MsgSeqNum the venue expects next from the firm on this session."""
        return self.sessions[session].next_in

    def _store_dir(self, estate: Estate, name: str) -> Path | None:
        host = estate.store_host(name)
        store_dir = estate.hosts[host].fix_store_dir if host else None
        if host is None or not store_dir:
            return None
        return self.hosts_dir / host / store_dir / name

    def resets_after(self, session: str, day: date) -> bool:
        """Whether the session's reset policy resets its numbers at the end of ``day``."""
        cfg = self.sessions[session].config
        if cfg.reset_policy != "weekly":
            return cfg.reset_policy == "daily"
        region = self.estate.region(cfg.region)
        following = _next_session(region.primary_calendar, day)
        wanted = WEEKDAYS.index(cfg.reset_weekday or "sun")
        span = (following - day).days
        return any((day + timedelta(days=n)).weekday() == wanted for n in range(1, span + 1))

    def record_unidentified(self, entry: WireEntry) -> None:
        """Log an entry of a connection that never named its session."""
        self.unidentified.append(entry)
        append_line(self.log_dir / "_unidentified.log", entry.line())


async def start_fix_venue(estate: Estate, book: FaultBook) -> list[asyncio.AbstractServer]:
    """Start the lab venue for every FIX session of the estate.

    Args:
        estate: the sessions to serve (``estate.fix_sessions``).
        book: the lab's faults, read at each logon.

    Returns:
        One listening server per distinct (address, port). Closing them stops new
        connections; live ones end within ``SERVING_CHECK_S``. Use ``FixVenue`` directly
        to read wire logs in memory.

    Example:
        >>> servers = await start_fix_venue(load_estate(), FaultBook(lab_dir / "faults.json"))
    """
    return await FixVenue(estate, book).start()


class Listener:
    """One (address, port): hands each connection to a conversation.

    Args:
        venue: the venue it serves for.
        sessions: the sessions configured on this endpoint.
    """

    def __init__(self, venue: FixVenue, sessions: list[SessionState]) -> None:
        self.venue = venue
        self.sessions = sessions
        self.server: asyncio.AbstractServer | None = None

    def serving(self) -> bool:
        """Whether the listener still accepts connections (live ones end when not)."""
        return self.server is not None and self.server.is_serving()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one new connection (``asyncio.start_server``'s callback)."""
        conv = Conversation(self, next(self.venue._ids), reader, writer)
        self.venue._conversations.add(conv)
        try:
            await conv.run()
        finally:
            self.venue._conversations.discard(conv)


_calendars: dict[str, Any] = {}


def _next_session(code: str, day: date) -> date:
    """The first session of a calendar after ``day``."""
    import exchange_calendars as xcals

    if code not in _calendars:
        _calendars[code] = xcals.get_calendar(code)
    following = _calendars[code].date_to_session(
        (day + timedelta(days=1)).isoformat(), direction="next"
    )
    return date(following.year, following.month, following.day)
