"""What the steps of one run share, and the fan-out that turns targets into Outcomes.

The engine runs a Prefect task per runbook step and gives the step's function two things:
the :class:`RunContext` of the run (estate, region, trade date, connectors, ledger) and
the :class:`StepRun` of this step (its declaration, what approvals refused). Inside,
``step.fan_out`` probes every target at once (threads for blocking connectors such as
paramiko, the event loop for async ones) and turns each exception into a ``failed`` or
``unknown`` Outcome that names the target and the cause, so one bad host never hides the
others; for a step declared with side effects it also keeps the idempotency keys.

A step's plan function gets a :class:`PlanContext` instead: the same estate, region and
trade date, and nothing that could touch a target.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shlex
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from openbell.errors import CommandTimeoutError, ConnectionLostError, OpenbellError
from openbell.outcome import Outcome, Status, utcnow
from openbell.runbooks.schema import Estate, Host, RunbookPolicy
from openbell.secrets import redact

log = logging.getLogger(__name__)
T = TypeVar("T")
Probe = Callable[[str, T], Awaitable[Outcome]]

#: Called as progress(step, event, detail) with event in {"start", "done"}.
ProgressFn = Callable[[str, str, Any], None]


@dataclass
class RunContext:
    """The resources of one run: built by the flow, closed when it ends.

    Attributes:
        estate: the validated estate.
        region: region name.
        trade_date: the session being prepared.
        prev_trade_date: the previous session of the primary calendar.
        ssh: an ``SshRunner`` (real pool or fake).
        http: makes an ``HttpClient`` (an async context manager). A task opens its own,
            because Prefect may run async tasks on different event loops and a
            connection pool belongs to the loop that opened it.
        notifier: a ``Notifier``.
        max_workers: threads for blocking probes.
        ledger: the run's ``tasks.ledger.Ledger`` (None in unit tests with fakes):
            every finished step, approval and notification is appended as it happens.
        run_id: the run's id in the ledger (its Prefect flow-run id).
        runbook: e.g. ``sod``.
        parameters: the run's parameters as JSON values (bound into approvals).
        runbook_version: openbell's version and the estate file's sha256.
        dry_run: plan only.
        redo: steps whose idempotency keys are ignored (``--from-step``).
    """

    estate: Estate
    region: str
    trade_date: date
    prev_trade_date: date | None
    ssh: Any
    http: Any
    notifier: Any
    operator: str = "unknown"
    max_workers: int = 64
    progress: ProgressFn | None = None
    sql_runners: dict[str, Any] = field(default_factory=dict)
    ledger: Any = None
    run_id: str = ""
    runbook: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    runbook_version: str = ""
    dry_run: bool = False
    redo: frozenset[str] = frozenset()
    #: what makes this run's idempotency keys its own beyond (runbook, region, trade date):
    #: a release's ``app@version``; empty for runbooks of the day.
    key_version: str = ""
    #: the run's parameters as their model (``ReleaseParams`` for a release).
    params: Any = None
    #: what one step found for the next ones (a release's verified artifact); a step that
    #: needs it and finds it missing (``--from-step``) works it out again.
    scratch: dict[str, Any] = field(default_factory=dict)
    #: approval policies a step asked for itself (``Step(approval="always")``), by step.
    approval_overrides: dict[str, Any] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="openbell-probe")
        return self._pool

    def emit(self, step: str, event: str, detail: Any = None) -> None:
        if self.progress:
            try:
                self.progress(step, event, detail)
            except Exception:  # a display problem must never break a run
                log.debug("progress callback failed", exc_info=True)

    async def close(self) -> None:
        for closer in (getattr(self.ssh, "close", None),):
            if closer:
                await asyncio.get_running_loop().run_in_executor(self.pool, closer)
        for runner in self.sql_runners.values():
            runner.close()
        if self.ledger is not None:
            self.ledger.close()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)


def outcome_from_error(step: str, target: str, exc: BaseException, started: Any) -> Outcome:
    """A failed (or, when the effect is ambiguous, unknown) Outcome for an exception."""
    status = (
        Status.UNKNOWN
        if isinstance(exc, CommandTimeoutError | ConnectionLostError)
        else Status.FAILED
    )
    detail = str(exc) if isinstance(exc, OpenbellError) else f"{type(exc).__name__}: {exc}"
    # "emea-app1:.: emea-app1: connect ..." says the host twice; keep the target once.
    named = getattr(exc, "target", None)
    if named and target.startswith(named) and detail.startswith(f"{named}: "):
        detail = detail[len(named) + 2 :]
    evidence: dict[str, Any] = {"error": type(exc).__name__}
    if getattr(exc, "expected", None) is not None:  # FIX "MsgSeqNum too low, expecting N"
        evidence["expected_seq"] = exc.expected  # type: ignore[attr-defined]
    return Outcome(
        step=step,
        target=target,
        status=status,
        detail=redact(detail),
        evidence=evidence,
        started_at=started,
    )


async def in_thread(ctx: RunContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (e.g. an SSH command) on the run's probe pool."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(ctx.pool, call)


async def fan_out(
    step: str,
    targets: Iterable[tuple[str, T]],
    probe: Callable[[str, T], Awaitable[Outcome]],
) -> list[Outcome]:
    """Probe every target concurrently; exceptions become Outcomes naming the target.

    Args:
        step: the step name, for the Outcomes made from errors.
        targets: (target name, item) pairs.
        probe: async function returning the Outcome for one target.

    Returns:
        One Outcome per target, in the order given.
    """

    async def one(name: str, item: T) -> Outcome:
        started = utcnow()
        try:
            return await probe(name, item)
        except Exception as exc:
            log.info("%s on %s failed: %s", step, name, redact(str(exc)))
            return outcome_from_error(step, name, exc, started)

    return list(await asyncio.gather(*(one(n, i) for n, i in targets)))


@dataclass(frozen=True)
class Changes:
    """What a step would change now, read before it acts: what an approval is asked for.

    Attributes:
        targets: the targets it would change (bound into the approval).
        lines: one line per change, shown to the approvers (``start emea-oms@emea-app1``).
        summary: one line: what will run, where.
    """

    targets: list[str]
    lines: list[str]
    summary: str
    #: for a step that always asks (``Step(approval="always")``): who decides, how many.
    approver_group: str | None = None
    required_approvers: int = 1
    ttl_minutes: float = 60.0
    #: an emergency change: two approvers at least, flagged for review.
    emergency: bool = False
    #: the checksum of the artifact being deployed, bound into the approval.
    artifact_sha256: str | None = None
    #: what else the approval is bound to (the version, the hosts' order, the strategy).
    bound: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRun:
    """One step of a run, as its function sees it.

    Attributes:
        name: the step's one name (flow, plan, ledger, report, approvals, ``--from-step``).
        title: what people call it.
        side_effects: its targets get idempotency keys (``fan_out`` keeps them).
        approval: the verdict's status when the step needed approval, else None.
        approved: the targets the approval covered (empty when none was needed).
        refused: targets whose change the approval did not allow, with the reason.
        rejected_by: the persons whose proven rejection counted (empty otherwise: an
            expired request, or a resume that carried no decision).
        note: what the step says about itself in the report (set by its function).
    """

    name: str
    title: str
    side_effects: bool = False
    approval: str | None = None
    approved: frozenset[str] = frozenset()
    refused: dict[str, str] = field(default_factory=dict)
    rejected_by: tuple[str, ...] = ()
    note: str = ""

    async def fan_out(
        self, ctx: RunContext, targets: Iterable[tuple[str, T]], probe: Probe[T]
    ) -> list[Outcome]:
        """:func:`fan_out` for this step: refused targets fail without being touched, and a
        step with side effects skips what completed once and records what completes now."""
        guarded = self._guard(probe)
        if self.side_effects:
            from openbell.tasks.idempotency import idempotent

            guarded = idempotent(ctx, self.name, guarded)
        return await fan_out(self.name, targets, guarded)

    def refusal(self, target: str) -> str | None:
        """Why ``target`` may not be changed (its change was not approved), or None."""
        return self.refused.get(target)

    def _guard(self, probe: Probe[T]) -> Probe[T]:
        if not self.refused:
            return probe

        async def guarded(target: str, item: T) -> Outcome:
            why = self.refused.get(target)
            if why is None:
                return await probe(target, item)
            detail = f"not changed: {why}"
            return Outcome(step=self.name, target=target, status=Status.FAILED, detail=detail)

        return guarded


@dataclass(frozen=True)
class PlanContext:
    """What a step's plan function sees: the estate, the run's identity, no connectors.

    Attributes:
        estate: the validated estate.
        region: region name.
        trade_date: the session planned for.
        facts: the calendar's facts for the day (``openbell.flows.plan.calendar_facts``).
        policy: the estate's policy for the runbook (``runbooks.<key>``).
        step: the name of the step being planned.
    """

    estate: Estate
    region: str
    trade_date: date
    facts: dict[str, Any]
    policy: RunbookPolicy
    step: str = ""
    #: the run's parameters as their model (None: the model's defaults).
    params: Any = None
    #: the moment planned for (``openbell plan --at``); None: now.
    at: datetime | None = None

    def ssh(self, host: str, argv: list[str]) -> str:
        """How a remote command is shown: ``ssh user@host (address:port) $ argv``."""
        h = self.estate.host(host)
        return f"ssh {h.user}@{host} ({h.address}:{h.port}) $ {shlex.join(argv)}"

    def hosts(self) -> list[tuple[str, Host]]:
        """The region's hosts, by name."""
        return sorted(self.estate.hosts_in(self.region).items())
