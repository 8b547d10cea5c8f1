"""Missed runs: find the scheduled runs that did not happen, and run one, never twice.

A scheduled run can miss its time: the Prefect server was down, the region's worker
was down, or the horizon ran dry and the run was never created. ``run_statuses`` compares
what the calendar asked for with what Prefect has, per (runbook, region, trade date);
``openbell doctor`` reports the misses, and ``openbell catchup sod --region emea --date D``
runs one.

Never twice: a run is found by its idempotency key (``openbell:sod:emea:D``). When it
exists and has not started, it is already queued on the region's pool, and its worker
starts it; the catch-up says so and creates nothing. When it ran, or is running, nothing
is started. Only when no run exists is one created, with that same key, due now: if the
keeper creates it at the same moment, Prefect hands both callers the one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from openbell import catalog
from openbell.deployments.deploy import (
    CATCHUP_TAG,
    create_planned_run,
    not_started,
    read_openbell_deployments,
    read_runs_by_key,
    scheduled_at,
)
from openbell.deployments.schedules import PlannedRun, planned_run, runs_between
from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

#: How long after its time a run may still be waiting before it counts as late.
DEFAULT_GRACE = timedelta(minutes=5)


class CatchUpError(OpenbellError):
    """The run cannot be caught up (not a session, not due yet, nothing deployed)."""


@dataclass(frozen=True)
class RunStatus:
    """What happened to one planned run.

    Attributes:
        planned: what the calendar asked for.
        flow_run: the Prefect flow run with its key, if any.
        verdict: ``scheduled`` (not due), ``due`` (inside the grace), ``late`` (due, not
            started), ``missing`` (due, never created), ``not created`` (future, not
            created yet), ``running``, ``completed``, ``failed`` or ``cancelled``.
        detail: one line for a person.
        started_late_by: how late it started, when later than the grace.
    """

    planned: PlannedRun
    flow_run: FlowRun | None
    verdict: str
    detail: str
    started_late_by: timedelta | None = None

    @property
    def missed(self) -> bool:
        return self.verdict in ("late", "missing")

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.planned.name,
            "due_utc": self.planned.run_utc.isoformat(),
            "verdict": self.verdict,
            "detail": self.detail,
            "flow_run_id": str(self.flow_run.id) if self.flow_run else None,
            "state": self.flow_run.state_name if self.flow_run else None,
            "started_late_min": (
                round(self.started_late_by.total_seconds() / 60) if self.started_late_by else None
            ),
        }


@dataclass(frozen=True)
class CatchUp:
    """What ``catch_up`` did.

    Attributes:
        action: ``created`` (a run was made, due now), ``queued`` (the run exists and
            waits for its worker), ``running``, ``completed``, ``ended`` (failed or
            cancelled: not started again), or ``would create`` in a dry run.
        run: the planned run.
        flow_run: the Prefect flow run, if there is one.
        message: one line for a person.
        worker_online: whether a worker polls the region's pool.
    """

    action: str
    run: PlannedRun
    flow_run: FlowRun | None
    message: str
    worker_online: bool

    @property
    def ok(self) -> bool:
        return self.action != "ended"


def classify(
    planned: PlannedRun, run: FlowRun | None, *, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> RunStatus:
    """Compare one planned run with its Prefect flow run (or its absence)."""
    from prefect.client.schemas.objects import StateType

    due = planned.run_utc
    due_text = f"due {due:%Y-%m-%d %H:%M} UTC"
    if run is None:
        if due > now:
            return RunStatus(planned, None, "not created", f"{due_text}; not created yet")
        return RunStatus(planned, None, "missing", f"{due_text}; no run was ever created")
    state = run.state_type
    if state == StateType.SCHEDULED:
        when = scheduled_at(run) or due
        if when > now:
            return RunStatus(planned, run, "scheduled", f"scheduled {when:%Y-%m-%d %H:%M} UTC")
        if when + grace > now:
            return RunStatus(planned, run, "due", f"{due_text}; starting")
        late = _minutes(now - when)
        return RunStatus(
            planned, run, "late", f"{due_text}; {run.state_name}, not started {late} min later"
        )
    started_late = None
    if run.start_time is not None and run.start_time - due > grace:
        started_late = run.start_time - due
    note = f"; started {_minutes(started_late)} min late" if started_late else ""
    if state in (StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING):
        return RunStatus(planned, run, "running", f"{run.state_name}{note}", started_late)
    if state == StateType.COMPLETED:
        return RunStatus(planned, run, "completed", f"completed{note}", started_late)
    if state == StateType.CANCELLED:
        return RunStatus(planned, run, "cancelled", f"cancelled{note}", started_late)
    return RunStatus(planned, run, "failed", f"{run.state_name}{note}", started_late)


async def run_statuses(
    client: PrefectClient,
    estate: Estate,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    regions: list[str] | None = None,
) -> list[RunStatus]:
    """Every scheduled run due in ``[start, end)``, with its fate."""
    planned = runs_between(estate, start, end, regions=regions)
    runs = await read_runs_by_key(client, [p.idempotency_key for p in planned])
    return [classify(p, runs.get(p.idempotency_key), now=now, grace=grace) for p in planned]


async def workers_online(client: PrefectClient, pool: str) -> list[str]:
    """Names of the workers polling ``pool`` now."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    try:
        workers = await client.read_workers_for_work_pool(
            pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        )
    except ObjectNotFound:
        return []
    return [w.name for w in workers]


async def catch_up(
    client: PrefectClient,
    estate: Estate,
    runbook: str,
    region: str,
    trade_date: date,
    *,
    now: datetime,
    dry_run: bool = False,
) -> CatchUp:
    """Run a missed scheduled run on its region's worker, unless it exists or ran.

    Raises:
        CatchUpError: not a session, no schedule, not due yet, or not deployed.
    """
    rb = catalog.get(runbook)
    region = region.lower()
    pool = estate.region(region).work_pool
    try:
        planned = planned_run(estate, rb.key, region, trade_date)
    except ValueError as exc:
        raise CatchUpError(f"{rb.key} {region} {trade_date}: {exc}") from None
    if planned.run_utc > now:
        raise CatchUpError(
            f"{planned.name} is not due until {planned.run_utc:%Y-%m-%d %H:%M} UTC: "
            "nothing to catch up"
        )
    deployments = await read_openbell_deployments(client)
    dep = deployments.get(rb.deployment_name(region))
    if dep is None:
        raise CatchUpError(
            f"no deployment {rb.deployment_name(region)} on the server; run `openbell deploy`"
        )
    online = bool(await workers_online(client, pool))
    existing = (await read_runs_by_key(client, [planned.idempotency_key])).get(
        planned.idempotency_key
    )
    if existing is None:
        if dry_run:
            return CatchUp("would create", planned, None, f"would start {planned.name} now", online)
        created = await create_planned_run(client, dep, planned, when=now, tags=[CATCHUP_TAG])
        return CatchUp(
            "created",
            planned,
            created,
            f"{planned.name} was never created; started it now on work pool {pool}"
            + _worker_note(online, region, pool),
            online,
        )
    status = classify(planned, existing, now=now, grace=timedelta(0))
    if not_started(existing):
        return CatchUp(
            "queued",
            planned,
            existing,
            f"{planned.name} exists ({existing.state_name}) and starts as soon as a worker of "
            f"pool {pool} takes it; not created again" + _worker_note(online, region, pool),
            online,
        )
    if status.verdict == "running":
        return CatchUp("running", planned, existing, f"{planned.name} is running", online)
    if status.verdict == "completed":
        return CatchUp(
            "completed", planned, existing, f"{planned.name} already ran: {status.detail}", online
        )
    return CatchUp(
        "ended",
        planned,
        existing,
        f"{planned.name} already ran and ended {existing.state_name}; a catch-up never "
        f"runs it twice. To run it again on purpose: openbell run {rb.key} --region {region} "
        f"--date {trade_date}",
        online,
    )


async def wait_for(client: PrefectClient, flow_run_id: Any, *, timeout_s: float) -> FlowRun:
    """Poll a flow run until it reaches a final state or ``timeout_s`` passes."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        run = await client.read_flow_run(flow_run_id)
        if (run.state and run.state.is_final()) or time.monotonic() >= deadline:
            return run
        await asyncio.sleep(1.0)


def _worker_note(online: bool, region: str, pool: str) -> str:
    if online:
        return ""
    return f"; no worker polls pool {pool} now: start one with `openbell worker --region {region}`"


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def utcnow() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
