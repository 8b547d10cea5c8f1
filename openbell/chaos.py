"""Kill points: where a fault-injection run may SIGKILL the flow process.

A runbook marks the moments that matter for recovery: a step starting, a step recorded,
a target's side effect applied but not yet recorded as done, each remote command of a
multi-command change. ``benchmarks/faults.py`` and ``tests/test_faults.py`` first run
end of day with ``OPENBELL_KILL_TRACE`` set to learn the points in order, then run it
again with ``OPENBELL_KILL_AT=NAME#N`` (die the N-th time NAME is reached) or ``#N``
(die at the N-th kill point of any name), then re-run
it undisturbed and check that every side effect happened exactly once.

Unset (always, outside those runs), ``point`` costs one cached settings lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

from openbell.settings import get_settings

_lock = threading.Lock()
_seen: Counter[str] = Counter()
_total = 0


def point(name: str) -> None:
    """Mark a kill point; under fault injection, trace it or die here."""
    settings = get_settings()
    if settings.kill_at is None and settings.kill_trace is None:
        return
    global _total
    with _lock:
        _seen[name] += 1
        _total += 1
        label = f"{name}#{_seen[name]}"
        if settings.kill_trace is not None:
            with settings.kill_trace.open("a", encoding="utf-8") as f:
                f.write(label + "\n")
        if settings.kill_at in (label, f"#{_total}"):
            os.kill(os.getpid(), signal.SIGKILL)
