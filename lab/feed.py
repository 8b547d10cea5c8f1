"""Market-data feed status servers: one small HTTP/1.1 server per address:port.

Every feed whose ``status_url`` points at an address:port is served there (on its
URL's path, and on ``/feeds/<name>``)::

    GET /feeds/emea-equities
    200 {"feed": "emea-equities", "last_update": "2026-11-26T08:00:00.123Z",
         "sequence": 48211, "gaps": [], "status": "live"}

A ticker advances every live feed every 150 ms (the sequence by a few hundred
messages). ``GET /feeds`` lists the feeds of that server; an unknown feed is a 404 JSON.

Faults: ``stale_feed`` (params ``seconds``, default 60) freezes ``last_update`` that many
seconds in the past until removed; ``feed_gap`` (params ``size``, default 40) makes the
sequence jump and lists the hole ``[from, to]`` as unrecovered until removed (then it
counts as recovered); ``latency`` (params ``ms``) delays every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from openbell.lab import jsonhttp
from openbell.lab.faults import Fault, FaultBook
from openbell.lab.paths import LabError, require_loopback
from openbell.runbooks.schema import Estate

log = logging.getLogger(__name__)

TICK_S = 0.15


@dataclass
class FeedState:
    """One feed's published state."""

    name: str
    sequence: int
    last_update: float
    frozen: float | None = None  # stale_feed: the frozen last_update
    stale_seconds: float | None = None
    gap: tuple[int, int] | None = None  # feed_gap: the unrecovered hole

    def apply(self, now: float, faults: list[Fault]) -> None:
        """Take up or drop this feed's faults (``stale_feed``, ``feed_gap``)."""
        stale = _find(faults, "stale_feed", self.name)
        gap = _find(faults, "feed_gap", self.name)
        if stale is None:
            self.frozen = self.stale_seconds = None
        else:
            seconds = float(stale.params.get("seconds", 60))
            if self.frozen is None or seconds != self.stale_seconds:
                self.frozen, self.stale_seconds = now - seconds, seconds
        if gap is None:
            self.gap = None  # retransmitted: the hole counts as recovered
        elif gap is not None and self.gap is None:
            size = max(1, int(gap.params.get("size", 40)))
            self.gap = (self.sequence + 1, self.sequence + size)
            self.sequence += size

    def advance(self, now: float, rng: random.Random) -> None:
        """Publish more messages, unless the feed is frozen (stale)."""
        if self.frozen is None:
            self.sequence += rng.randint(50, 400)
            self.last_update = now

    def document(self) -> dict[str, Any]:
        stamp = self.frozen if self.frozen is not None else self.last_update
        return {
            "feed": self.name,
            "last_update": _iso(stamp),
            "sequence": self.sequence,
            "gaps": [list(self.gap)] if self.gap else [],
            "status": "live",
        }


class FeedServers:
    """Every feed of an estate, grouped by the address:port serving it."""

    def __init__(self, estate: Estate, book: FaultBook) -> None:
        self.book = book
        self.feeds: dict[str, FeedState] = {}
        self.routes: dict[tuple[str, int], dict[str, str]] = {}
        now = time.time()
        for name, feed in estate.feeds.items():
            url = urlsplit(feed.status_url)
            if url.scheme != "http" or not url.hostname or not url.port:
                raise LabError(
                    f"feeds.{name}.status_url: {feed.status_url!r} must be http://address:port/..."
                )
            require_loopback(url.hostname, f"feeds.{name}.status_url")
            paths = self.routes.setdefault((url.hostname, url.port), {})
            paths[url.path or f"/feeds/{name}"] = name
            paths[f"/feeds/{name}"] = name
            self.feeds[name] = FeedState(name, sequence=1000 + len(self.feeds) * 7, last_update=now)
        self._servers: list[asyncio.Server] = []
        self._ticker: asyncio.Task[None] | None = None
        self._rng = random.Random(7)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return sorted(self.routes)

    async def start(self) -> None:
        """Bind every feed server and start the ticker.

        Raises:
            LabError: an address:port cannot be bound.
        """
        self._servers = await jsonhttp.listen(self.routes, self._handle, "feeds", "paths")
        self.tick()
        self._ticker = asyncio.ensure_future(self._run_ticker())

    def tick(self, now: float | None = None) -> None:
        """Advance every feed once."""
        now = time.time() if now is None else now
        faults = self.book.active()
        for state in self.feeds.values():
            state.apply(now, faults)
            state.advance(now, self._rng)

    async def aclose(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await jsonhttp.close(self._servers)

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, paths: dict[str, str]
    ) -> None:
        try:
            method, path, _ = await asyncio.wait_for(
                jsonhttp.read_request(reader), jsonhttp.READ_TIMEOUT_S
            )
            code, body = self._answer(method, path, paths)
            delay = self.book.latency_s()
            if delay:
                await asyncio.sleep(delay)
            jsonhttp.write_response(
                writer, code, body, server="lab-feed/1", head_only=method == "HEAD"
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("feed request failed: %s", exc)
        finally:
            await jsonhttp.finish(writer)

    def _answer(self, method: str, path: str, paths: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if method not in ("GET", "HEAD"):
            return 405, {"error": f"method {method} not allowed"}
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/feeds":
            return 200, {"feeds": sorted(set(paths.values()))}
        name = paths.get(path)
        if name is None:
            wanted = path.removeprefix("/feeds/")
            return 404, {
                "error": "unknown feed",
                "feed": wanted,
                "known": sorted(set(paths.values())),
            }
        state = self.feeds[name]
        state.apply(time.time(), self.book.active())
        return 200, state.document()


def _find(faults: list[Fault], kind: str, target: str) -> Fault | None:
    return next((f for f in faults if f.kind == kind and f.target in (target, "*")), None)


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
