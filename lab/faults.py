"""Injectable faults for the lab, kept in one JSON file that every lab component reads.

The file is ``OPENBELL_HOME/lab/faults.json``; components call ``FaultBook.active()``
on each request (it re-reads only when the file changed), so a fault set from the CLI
(`openbell lab fault add host_down emea-app1`) or a test takes effect at once, without
restarting the lab.

Kinds and their targets:

==================== ========== ===================================================
kind                 target     effect
==================== ========== ===================================================
host_down            host       SSH listener refuses connections
host_blackhole       host       SSH accepts TCP and never answers (connect timeout)
slow_host            host       every command waits ``seconds`` before running
clock_offset         host       chronyc reports ``us`` microseconds of offset
app_fails_to_start   app        ``appctl start`` exits 1 with a message on stderr
wrong_version        app        the app reports ``version`` instead of the expected
stale_feed           feed       the feed stops updating ``seconds`` ago
feed_gap             feed       the feed reports an unrecovered sequence gap
fix_logon_rejected   session    the venue answers Logon with Logout (bad credentials)
fix_seq_too_low      session    the venue says "MsgSeqNum too low, expecting N"
missing_refdata      database   no instruments for the trade date
missing_fill         database   a fill is missing on one side (``side``: oms,
                                drop_copy, venue; default venue)
qty_mismatch         database   a fill's quantity differs on one side (default venue)
price_mismatch       database   a fill's price differs on one side (default drop_copy)
duplicate_exec_id    database   an ExecID appears twice on one side (default drop_copy)
order_left_open      database   a day order is still open after the close
latency              ``*``      every lab answer (SSH, FIX, HTTP) waits ``ms``
disk_full            host       ``df`` reports every path 100% used, 0 available
corrupt_artifact     app        the repository serves the app's artifacts (or only
                                ``app@version``) with one byte flipped
dies_after_stop      host       the next ``appctl stop`` there stops the app, then the
                                host goes down (``host_down`` is added; the fault is
                                used up): a host lost in the middle of a switch
==================== ========== ===================================================

The trade breaks take ``trade_date`` (default: the region's last closed session) and
``index`` (which fill or order of the day); see :mod:`lab.trades`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = {
    "host_down": "host",
    "host_blackhole": "host",
    "slow_host": "host",
    "clock_offset": "host",
    "app_fails_to_start": "app",
    "wrong_version": "app",
    "stale_feed": "feed",
    "feed_gap": "feed",
    "fix_logon_rejected": "session",
    "fix_seq_too_low": "session",
    "missing_refdata": "database",
    "missing_fill": "database",
    "qty_mismatch": "database",
    "price_mismatch": "database",
    "duplicate_exec_id": "database",
    "order_left_open": "database",
    "latency": "*",
    "disk_full": "host",
    "corrupt_artifact": "app",
    "dies_after_stop": "host",
}


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "params": self.params}


class FaultBook:
    """The lab's faults, shared through a JSON file.

    Example:
        >>> book = FaultBook(Path("/tmp/ob-doc/faults.json"))
        >>> book.clear(); book.add("slow_host", "emea-app1", seconds=3)
        >>> book.get("slow_host", "emea-app1").params["seconds"]
        3
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._cache: list[Fault] = []

    def active(self) -> list[Fault]:
        """The faults now in force (cheap: re-reads only when the file changed)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        with self._lock:
            if mtime != self._mtime:
                try:
                    raw = json.loads(self.path.read_text() or "[]")
                except (json.JSONDecodeError, OSError):
                    return self._cache
                self._cache = [Fault(r["kind"], r["target"], r.get("params", {})) for r in raw]
                self._mtime = mtime
            return list(self._cache)

    def get(self, kind: str, target: str) -> Fault | None:
        """The fault of ``kind`` on ``target`` (or on ``*``), if set."""
        for f in self.active():
            if f.kind == kind and f.target in (target, "*"):
                return f
        return None

    def latency_s(self) -> float:
        f = self.get("latency", "*")
        return float(f.params.get("ms", 0)) / 1000 if f else 0.0

    def add(self, kind: str, target: str, **params: Any) -> Fault:
        if kind not in KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r}; valid kinds: {', '.join(sorted(KINDS))}"
            )
        fault = Fault(kind, target, params)
        faults = [f for f in self._read() if not (f.kind == kind and f.target == target)]
        self._write([*faults, fault])
        return fault

    def remove(self, kind: str, target: str) -> bool:
        faults = self._read()
        kept = [f for f in faults if not (f.kind == kind and f.target == target)]
        self._write(kept)
        return len(kept) != len(faults)

    def clear(self) -> None:
        self._write([])

    def _read(self) -> list[Fault]:
        try:
            raw = json.loads(self.path.read_text() or "[]")
        except FileNotFoundError:
            return []
        return [Fault(r["kind"], r["target"], r.get("params", {})) for r in raw]

    def _write(self, faults: list[Fault]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([f.to_json() for f in faults], indent=2))
        os.replace(tmp, self.path)
