"""Pre-release checks, declared per kind of app.

A check is a named coroutine ``(ctx, target, artifact) -> Outcome`` registered for a kind
(``oms``, ``gateway``, ``algo``...). The release's ``checks`` step runs those of the app's
kind; a check that does not pass stops the release before any host is touched. Algo
certification adds "an algo needs a signed-off certification of this artifact" with::

    register("algo", PreReleaseCheck("certified", "a PASS certification of this sha256",
                                     certified))

without touching the release runbook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from openbell.outcome import Outcome

CheckFn = Callable[[Any, Any, Any], Awaitable[Outcome]]


@dataclass(frozen=True)
class PreReleaseCheck:
    name: str
    description: str
    run: CheckFn


_CHECKS: dict[str, list[PreReleaseCheck]] = {}


def register(kind: str, check: PreReleaseCheck) -> None:
    """Declare a check for every release of an app of ``kind`` (once per name)."""
    declared = _CHECKS.setdefault(kind, [])
    declared[:] = [c for c in declared if c.name != check.name] + [check]


def unregister(kind: str, name: str) -> None:
    _CHECKS[kind] = [c for c in _CHECKS.get(kind, []) if c.name != name]


def checks_for(kind: str) -> list[PreReleaseCheck]:
    return list(_CHECKS.get(kind, []))
