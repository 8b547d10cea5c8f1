"""What the tasks of one run share, and the fan-out that turns targets into Outcomes.

A Prefect task runs per runbook step; inside it, ``fan_out`` probes every target at
once (threads for blocking connectors such as paramiko, the event loop for async ones)
and turns each exception into a ``failed`` or ``unknown`` Outcome that names the target
and the cause, so one bad host never hides the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from openbell.errors import CommandTimeoutError, ConnectionLostError, OpenbellError
from openbell.outcome import Outcome, Status, utcnow
from openbell.runbooks.schema import Estate
from openbell.secrets import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

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
