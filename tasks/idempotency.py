"""Side effects done once per day: idempotency keys kept in the ledger.

Every target of a side-effecting step has a key (runbook, region, trade date, step,
target). When the target's change succeeds (``changed``, or ``ok``: already as wanted),
a ``completion`` entry with that key goes to the ledger. A later run of the same
runbook for the same region and trade date finds the key and does nothing to that
target: it reports ``ok`` and names the run that did it. So re-running end of day after
anything went wrong picks up where the last run stopped.

``--from-step STEP`` re-does STEP and everything after it whatever the keys say: the
``ensure_*`` steps read state first, so forcing them is safe.

An ``unknown`` outcome (the connection dropped after the command was sent) is never
retried blindly: the step's probe is asked again, and it starts by reading the target's
state (the archive exists and its checksum matches, the venue logged the logout), acting
only on what is still missing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from openbell import chaos
from openbell.outcome import Outcome, Status, utcnow
from openbell.tasks.context import RunContext, in_thread, outcome_from_error
from openbell.tasks.ledger import CompletionKey

log = logging.getLogger(__name__)
T = TypeVar("T")


def completion_key(ctx: RunContext, step: str, target: str) -> CompletionKey:
    """The key of one target's side effect in this run's (runbook, region, trade date)."""
    return CompletionKey(
        ctx.runbook, ctx.region, ctx.trade_date, step, target, ctx.key_version or None
    )


def idempotent(
    ctx: RunContext, step: str, probe: Callable[[str, T], Awaitable[Outcome]]
) -> Callable[[str, T], Awaitable[Outcome]]:
    """Wrap a step's per-target probe so that what completed once is never done again.

    Args:
        ctx: the run (its ledger; ``ctx.redo`` lists the steps ``--from-step`` forces).
        step: the step's name.
        probe: reads the target's state and changes only what differs.

    Returns:
        A probe with the same signature for ``fan_out``.
    """

    async def once(target: str, item: T) -> Outcome:
        key = completion_key(ctx, step, target)
        chaos.point(f"{step}:{target}:start")
        if ctx.ledger is not None and step not in ctx.redo:
            done = await in_thread(ctx, ctx.ledger.completion, key)
            if done is not None:
                return _already_done(step, target, key, done)
        outcome = await _attempt(step, target, item, probe)
        if outcome.status == Status.UNKNOWN:
            outcome = await _reconcile(step, target, item, probe, outcome)
        chaos.point(f"{step}:{target}:acted")
        if ctx.ledger is not None and outcome.status in (Status.OK, Status.CHANGED):
            await in_thread(
                ctx, ctx.ledger.record_completion, key, run_id=ctx.run_id, detail=outcome.detail
            )
            chaos.point(f"{step}:{target}:recorded")
        return outcome.model_copy(
            update={"evidence": {**outcome.evidence, "idempotency_key": key.digest()}}
        )

    return once


async def _attempt(
    step: str, target: str, item: T, probe: Callable[[str, T], Awaitable[Outcome]]
) -> Outcome:
    started = utcnow()
    try:
        return await probe(target, item)
    except Exception as exc:  # a lost connection mid-command becomes ``unknown``
        log.info("%s on %s failed: %s", step, target, exc)
        return outcome_from_error(step, target, exc, started)


def _already_done(step: str, target: str, key: CompletionKey, done: Any) -> Outcome:
    when = done.ts.strftime("%Y-%m-%d %H:%M:%SZ")
    run = str(done.run_id or "?")
    return Outcome(
        step=step,
        target=target,
        status=Status.OK,
        detail=f"already done by run {run[:8]} at {when}: {done.payload.get('detail', '')}",
        evidence={"idempotency_key": key.digest(), "completed_by": run, "completed_seq": done.seq},
    )


async def _reconcile(
    step: str,
    target: str,
    item: T,
    probe: Callable[[str, T], Awaitable[Outcome]],
    unknown: Outcome,
) -> Outcome:
    """Ask the target again: its probe reads state first and acts only on what is missing."""
    log.info(
        "%s on %s: outcome unknown (%s); reconciling by reading state", step, target, unknown.detail
    )
    started = utcnow()
    again = await _attempt(step, target, item, probe)
    if again.status == Status.UNKNOWN:  # still cannot tell: stays unknown
        return again.model_copy(
            update={"detail": f"{unknown.detail}; reading state again: {again.detail}"}
        )
    note = f"was unknown ({unknown.detail}); reconciled by reading state: {again.detail}"
    return again.model_copy(
        update={
            "detail": note,
            "started_at": min(unknown.started_at, started),
            "evidence": {**again.evidence, "reconciled_from": unknown.detail},
        }
    )
