"""The venue's side of one configured session, across connections, and its wire log.

Sequence numbers live in memory per session (``SessionState.next_in``/``next_out``),
across connections, not across restarts. The venue also plays the firm's gateway engine:
when the estate gives the session a store (``estate.store_host``; ``fix_store_dir``), it
keeps it the way a QuickFIX-style engine does: ``seqnums`` ("next to send : next
expected", the firm's view, loaded at start so numbers survive a restart), ``session``
(when the store was created or last reset), ``messages.log`` (every message) and
``event.log`` (logons, logouts, resets, end of day).

A file that cannot be written is logged and the session carries on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from openbell.runbooks.schema import FixSession

log = logging.getLogger(__name__)

Direction = Literal["in", "out", "event"]


@dataclass(frozen=True)
class WireEntry:
    """One line of a session's wire log."""

    at: datetime
    direction: Direction
    connection: int
    text: str

    def line(self) -> str:
        """The entry as written to the log file (tabs and newlines in text escaped)."""
        stamp = self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = self.text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        return f"{stamp}\t{self.direction}\t{self.connection}\t{text}"


class SessionState:
    """The venue's side of one configured session, across connections.

    Args:
        name: the session's name in the estate.
        config: the session as configured.
        log_path: the session's wire log file.
        store: the firm's store directory on its gateway host, if it has one.
    """

    def __init__(
        self, name: str, config: FixSession, log_path: Path, store: Path | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.log_path = log_path
        self.store = store
        self.next_in = 1
        self.next_out = 1
        self.connection: int | None = None
        self.wire: list[WireEntry] = []
        self._load_store()

    def record(self, entry: WireEntry) -> None:
        """Add one entry to the wire log, in memory, in its file and in the store."""
        self.wire.append(entry)
        append_line(self.log_path, entry.line())
        if self.store is not None:
            if entry.direction == "event":
                self.store_event(entry.text, entry.at)
            else:
                stamp = entry.at.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]
                append_line(self.store / "messages.log", f"{stamp} {entry.direction} {entry.text}")

    # ---- the firm's store (the venue plays the firm's gateway engine) ------------------
    def _load_store(self) -> None:
        if self.store is None:
            return
        try:
            text = (self.store / "seqnums").read_text()
            firm_out, _, firm_in = text.partition(":")
            self.next_in, self.next_out = int(firm_out), int(firm_in)
        except (OSError, ValueError):
            self.reset_store("store created")

    def save_seqnums(self) -> None:
        """The firm's next MsgSeqNum to send and to expect, QuickFIX's format."""
        if self.store is not None:
            _write_atomic(self.store / "seqnums", f"{self.next_in:010d} : {self.next_out:010d}\n")

    def store_event(self, text: str, at: datetime | None = None) -> None:
        """One line in the store's ``event.log``."""
        if self.store is not None:
            stamp = (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H:%M:%S.%f")
            append_line(self.store / "event.log", f"{stamp[:-3]} : {text}")

    def reset_store(self, why: str) -> None:
        """Numbers back to 1 in the store, and a new creation time."""
        if self.store is None:
            return
        self.store.mkdir(parents=True, exist_ok=True)
        self.save_seqnums()
        _write_atomic(self.store / "session", datetime.now(UTC).strftime("%Y%m%d-%H:%M:%S") + "\n")
        self.store_event(f"store reset: {why}")

    def rotate_store(self, day: date) -> None:
        """Keep the day's messages and final numbers as ``*-YYYYMMDD`` (once)."""
        if self.store is None:
            return
        ymd = day.strftime("%Y%m%d")
        for name in ("messages.log", "seqnums"):
            live, dated = self.store / name, self.store / f"{name}-{ymd}"
            if live.exists() and not dated.exists():
                if name == "seqnums":
                    dated.write_bytes(live.read_bytes())
                else:
                    live.rename(dated)


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file; a failure is logged, never raised."""
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        log.warning("FIX venue: cannot append to %s: %s", path, exc)


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("FIX venue: cannot write %s: %s", path, exc)
