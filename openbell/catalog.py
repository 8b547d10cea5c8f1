"""The runbooks openbell knows, read from their declarations.

Everything that lists runbooks reads this catalog: the CLI (``openbell run RUNBOOK``
and its help), the estate's schema (which ``runbooks.<key>`` blocks exist and what each
may hold), the entitlements file's runbook names, approvals, titles in reports, the
deployments and schedules. A runbook is added by declaring it
(:class:`openbell.flows.runbook.Runbook`) in a module listed in :data:`BUILTIN`, or, for
one that does not ship with openbell (a test's, a desk's own), by :func:`register`.

Declarations import no Prefect, so reading the catalog is cheap.

Example:
    >>> get("sod").title
    'start of day'
    >>> names()
    ['eod', 'sod']
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from openbell.errors import UnknownNameError

if TYPE_CHECKING:
    from openbell.flows.runbook import Runbook

#: The modules that declare openbell's own runbooks.
BUILTIN = (
    "openbell.flows.start_of_day",
    "openbell.flows.end_of_day",
    "openbell.flows.release",
)

_lock = threading.Lock()
_loaded: dict[str, Runbook] | None = None
_registered: dict[str, Runbook] = {}


def _builtin() -> dict[str, Runbook]:
    global _loaded
    with _lock:
        if _loaded is None:
            from openbell.flows.runbook import Runbook

            found: dict[str, Runbook] = {}
            for name in BUILTIN:
                module = importlib.import_module(name)
                for value in vars(module).values():
                    if isinstance(value, Runbook) and value.module == name:
                        found[value.key] = value
            _loaded = found
        return _loaded


def runbooks() -> dict[str, Runbook]:
    """Every runbook, by key: the built-in ones and the registered ones."""
    return {**_builtin(), **_registered}


def names() -> list[str]:
    """The runbook keys, sorted."""
    return sorted(runbooks())


def get(key: str) -> Runbook:
    """The runbook ``key`` (any case).

    Raises:
        UnknownNameError: listing the runbooks there are.
    """
    found = runbooks()
    runbook = found.get(key.lower())
    if runbook is None:
        raise UnknownNameError("runbook", key, list(found))
    return runbook


def title(key: str) -> str:
    """What people call runbook ``key`` (the key itself if there is no such runbook)."""
    runbook = runbooks().get(key)
    return runbook.title if runbook else key


def register(runbook: Runbook) -> Runbook:
    """Add a runbook that is not one of openbell's own; returns it.

    Raises:
        ValueError: the key is taken by another runbook.
    """
    taken = runbooks().get(runbook.key)
    if taken is not None and taken is not runbook:
        raise ValueError(f"runbook key {runbook.key!r} is taken (declared in {taken.module})")
    _registered[runbook.key] = runbook
    return runbook


def unregister(key: str) -> None:
    """Forget a registered runbook (tests that declare their own)."""
    _registered.pop(key, None)
