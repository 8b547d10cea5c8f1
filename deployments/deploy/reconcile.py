"""Make the server match the estate: work pools, deployments, the horizon's runs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openbell import catalog
from openbell.deployments.schedules import PlannedRun, runs_between
from openbell.runbooks.schema import Estate

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

from openbell.deployments.deploy.client import prefect_client
from openbell.deployments.deploy.model import (
    DEFAULT_HORIZON_DAYS,
    SCHEDULED_TAG,
    TAG,
    Change,
    DeploymentSpec,
    DeployReport,
    deployment_specs,
    maybe,
)
from openbell.deployments.deploy.prefect_yaml import (
    default_prefect_yaml,
    render_prefect_yaml,
    write_prefect_yaml,
)


async def ensure_work_pools(
    client: PrefectClient, estate: Estate, *, dry_run: bool = False
) -> list[Change]:
    """One ``process`` work pool per region; an existing one of another type is reported."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    changes: list[Change] = []
    for pool in sorted({r.work_pool for r in estate.regions.values()}):
        try:
            existing = await client.read_work_pool(pool)
        except ObjectNotFound:
            if not dry_run:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=pool,
                        type="process",
                        description=f"openbell runs for region work pool {pool}",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
            changes.append(Change("work pool", pool, maybe("created", dry_run), "type process"))
            continue
        if existing.type != "process":
            changes.append(
                Change("work pool", pool, "stale", f"type {existing.type}, expected process")
            )
        else:
            changes.append(Change("work pool", pool, "unchanged"))
    return changes


async def read_openbell_deployments(client: PrefectClient) -> dict[str, DeploymentResponse]:
    """openbell's deployments on the server (tagged ``openbell``), by deployment name."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    found = await client.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[TAG]))
    )
    return {d.name: d for d in found}


def deployment_differences(spec: DeploymentSpec, current: DeploymentResponse) -> list[str]:
    """The fields in which ``current`` differs from ``spec`` (empty: up to date)."""
    limit = current.global_concurrency_limit.limit if current.global_concurrency_limit else None
    strategy = (
        str(current.concurrency_options.collision_strategy.value)
        if current.concurrency_options
        else None
    )
    every = [getattr(s.schedule, "interval", None) for s in current.schedules if s.active]
    want: dict[str, tuple[Any, Any]] = {
        "work pool": (current.work_pool_name, spec.work_pool),
        "entrypoint": (current.entrypoint, spec.entrypoint),
        "parameters": (current.parameters, spec.parameters),
        "tags": (sorted(current.tags), sorted(spec.tags)),
        "description": (current.description, spec.description),
        "concurrency limit": ((limit, strategy), (spec.concurrency_limit, spec.collision_strategy)),
        "schedule": (every, [spec.every] if spec.every else []),
        "parameter schema": (current.parameter_openapi_schema, spec.parameter_schema),
        "paused": (current.paused, False),
    }
    return [name for name, (have, wanted) in want.items() if have != wanted]


async def apply_deployment(client: PrefectClient, spec: DeploymentSpec) -> None:
    """Create or update (Prefect upserts by flow and name) one deployment."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.client.schemas.schedules import IntervalSchedule

    flow_id = await client.create_flow_from_name(spec.flow_name)
    schedules = (
        [
            DeploymentScheduleCreate(
                schedule=IntervalSchedule(
                    interval=spec.every, anchor_date=datetime(2026, 1, 1, tzinfo=UTC)
                ),
                active=True,
            )
        ]
        if spec.every
        else []
    )
    await client.create_deployment(
        flow_id=flow_id,
        name=spec.name,
        work_pool_name=spec.work_pool,
        entrypoint=spec.entrypoint,
        parameters=spec.parameters,
        parameter_openapi_schema=spec.parameter_schema,
        enforce_parameter_schema=True,
        description=spec.description,
        tags=spec.tags,
        concurrency_limit=spec.concurrency_limit,
        concurrency_options=ConcurrencyOptions(
            collision_strategy=ConcurrencyLimitStrategy(spec.collision_strategy)
        ),
        schedules=schedules,
        paused=False,
        pull_steps=[],
    )


async def ensure_deployments(
    client: PrefectClient, specs: list[DeploymentSpec], *, dry_run: bool = False
) -> list[Change]:
    """Create or update the deployments that differ from ``specs``; report the others."""
    current = await read_openbell_deployments(client)
    changes: list[Change] = []
    for spec in specs:
        have = current.get(spec.name)
        if have is None:
            action, detail = "created", f"on work pool {spec.work_pool}"
        else:
            diff = deployment_differences(spec, have)
            if not diff:
                changes.append(Change("deployment", spec.full_name, "unchanged"))
                continue
            action, detail = "updated", ", ".join(diff)
        if not dry_run:
            await apply_deployment(client, spec)
        changes.append(Change("deployment", spec.full_name, maybe(action, dry_run), detail))
    wanted = {s.name for s in specs}
    for name in sorted(set(current) - wanted):
        changes.append(
            Change(
                "deployment",
                name,
                "stale",
                "not in the estate or the catalog of runbooks; left in place "
                "(prefect deployment delete)",
            )
        )
    return changes


async def read_runs_by_key(client: PrefectClient, keys: Iterable[str]) -> dict[str, FlowRun]:
    """Flow runs by idempotency key (any state)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

    keys = list(keys)
    found: dict[str, FlowRun] = {}
    for i in range(0, len(keys), 200):
        chunk = keys[i : i + 200]
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=chunk))
        )
        for run in runs:
            if run.idempotency_key:
                found[run.idempotency_key] = run
    return found


async def create_planned_run(
    client: PrefectClient,
    deployment: DeploymentResponse,
    run: PlannedRun,
    *,
    when: datetime | None = None,
    tags: list[str] | None = None,
    dry_run: bool = False,
) -> FlowRun:
    """Create (or find: same idempotency key) the flow run for ``run``.

    Args:
        client: Prefect client.
        deployment: the runbook's deployment in the run's region.
        run: what to run.
        when: start time (default ``run.run_utc``).
        tags: run tags (default: the scheduled tag).
        dry_run: passed into the flow's parameters (plan only, touch nothing).
    """
    from prefect.states import Scheduled

    params: dict[str, Any] = {"region": run.region, "trade_date": run.trade_date.isoformat()}
    if dry_run:
        params["dry_run"] = True
    return await client.create_flow_run_from_deployment(
        deployment.id,
        parameters={"params": params},
        name=run.name,
        tags=tags or [SCHEDULED_TAG],
        idempotency_key=run.idempotency_key,
        state=Scheduled(scheduled_time=when or run.run_utc),
    )


async def sync_runs(
    client: PrefectClient,
    deployments: dict[str, DeploymentResponse],
    planned: list[PlannedRun],
    *,
    start: datetime,
    end: datetime,
    regions: list[str],
    dry_run: bool = False,
) -> list[Change]:
    """Make the server's scheduled runs in ``[start, end)`` match ``planned``.

    Missing runs are created (idempotency keys make a race harmless); a run not yet
    started whose time differs is re-timed; a run not yet started that nothing plans any
    more (a new holiday, a schedule removed) is deleted. Runs that started are never
    touched.
    """
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    changes: list[Change] = []
    existing = await read_runs_by_key(client, [p.idempotency_key for p in planned])
    for run in planned:
        dep = deployments.get(catalog.get(run.runbook).deployment_name(run.region))
        if dep is None:
            changes.append(Change("run", run.name, "skipped", "no deployment; run openbell deploy"))
            continue
        when = f"{_local(run)} ({run.run_utc:%H:%M} UTC)"
        have = existing.get(run.idempotency_key)
        if have is None:
            if not dry_run:
                await create_planned_run(client, dep, run)
            changes.append(Change("run", run.name, maybe("created", dry_run), when))
            continue
        was = scheduled_at(have)
        if not_started(have) and was != run.run_utc:
            # Delete and create again rather than re-time the state: the run's expected
            # start (what the UI and the late-run check read) then moves with it.
            if not dry_run:
                await client.delete_flow_run(have.id)
                await create_planned_run(client, dep, run)
            shown = f"{was:%Y-%m-%d %H:%M} UTC" if was else "unscheduled"
            changes.append(
                Change("run", run.name, maybe("rescheduled", dry_run), f"{shown} -> {when}")
            )
            continue
        changes.append(Change("run", run.name, "unchanged", when))
    ours = [d.id for d in deployments.values() if _region_of(d) in regions]
    if not ours:
        return changes
    wanted = {p.idempotency_key for p in planned}
    scheduled = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[SCHEDULED_TAG]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                {"after_": start, "before_": end}
            ),
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ours)),
    )
    for fr in scheduled:
        if fr.idempotency_key in wanted or not not_started(fr):
            continue
        if fr.expected_start_time and fr.expected_start_time < start:
            continue
        if not dry_run:
            await client.delete_flow_run(fr.id)
        changes.append(
            Change("run", fr.name, maybe("removed", dry_run), "no longer on the calendar")
        )
    return changes


def scheduled_at(run: FlowRun) -> datetime | None:
    """When a run is (or was) due: its Scheduled state's time, else its expected start."""
    details = run.state.state_details if run.state else None
    when = details.scheduled_time if details and details.scheduled_time else None
    return when or run.next_scheduled_start_time or run.expected_start_time


def not_started(run: FlowRun) -> bool:
    """True for a run still waiting to start (Scheduled or Late, never run)."""
    from prefect.client.schemas.objects import StateType

    return bool(run.state and run.state.type == StateType.SCHEDULED and run.run_count == 0)


async def deploy(
    estate: Estate,
    api_url: str,
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    now: datetime | None = None,
    prefect_yaml: Path | str | None = "home",
    dry_run: bool = False,
) -> DeployReport:
    """Make the server match the estate: pools, deployments, the horizon's runs, prefect.yaml.

    Args:
        estate: the estate.
        api_url: the Prefect API.
        horizon_days: how far ahead runs are created.
        now: the current instant (tests pass one).
        prefect_yaml: where to keep prefect.yaml in step: ``"home"`` (the default)
            for ``OPENBELL_HOME/prefect.yaml``, a path, or None not to write it.
        dry_run: report what would change, change nothing.
    """
    now = now or datetime.now(UTC)
    end = now + timedelta(days=horizon_days)
    report = DeployReport(api_url=api_url, horizon_end=end)
    specs = deployment_specs(estate, horizon_days=horizon_days)
    if prefect_yaml == "home":
        prefect_yaml = default_prefect_yaml()
    if prefect_yaml is not None:
        prefect_yaml = Path(prefect_yaml)
        prefect_yaml.parent.mkdir(parents=True, exist_ok=True)
        report.changes.append(
            write_prefect_yaml(prefect_yaml, render_prefect_yaml(estate, specs), dry_run=dry_run)
        )
    async with prefect_client(api_url) as client:
        report.changes += await ensure_work_pools(client, estate, dry_run=dry_run)
        report.changes += await ensure_deployments(client, specs, dry_run=dry_run)
        regions = list(estate.regions)
        report.changes += await top_up(
            client, estate, regions, now=now, horizon_days=horizon_days, dry_run=dry_run
        )
    return report


async def top_up(
    client: PrefectClient,
    estate: Estate,
    regions: list[str],
    *,
    now: datetime,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    dry_run: bool = False,
) -> list[Change]:
    """Create the runs of the next ``horizon_days`` for ``regions`` (and tidy the window)."""
    end = now + timedelta(days=horizon_days)
    changes: list[Change] = []
    planned = runs_between(estate, now, end, regions=regions)
    deployments = await read_openbell_deployments(client)
    changes += await sync_runs(
        client, deployments, planned, start=now, end=end, regions=regions, dry_run=dry_run
    )
    return changes


def _region_of(dep: DeploymentResponse) -> str | None:
    for tag in dep.tags or []:
        if tag.startswith("region:"):
            return tag.removeprefix("region:")
    return None


def _local(run: PlannedRun) -> str:
    return run.run_local.strftime("%a %Y-%m-%d %H:%M %Z")
