"""Register the estate with a Prefect server: work pools, deployments, and runs on sessions.

What ``openbell deploy`` makes, for every region of the estate:

- a **work pool** named by ``regions.<r>.work_pool`` (type ``process``), polled by that
  region's worker (``openbell worker --region r``), which runs near the region's hosts;
- one **deployment per registered runbook** (``sod-emea``), on that pool, with a
  concurrency limit of 1 (queued, never run side by side): two end-of-day runs of one
  region never overlap, whatever started them;
- a **keeper deployment** (``keeper-emea``) on the same pool, on Prefect's own hourly
  schedule, which keeps the region's runs topped up (``deployments.keeper``);
- the **scheduled flow runs** of the next ``horizon_days``: one per (runbook, region,
  trade date) that the estate schedules, at the exact instant ``deployments.schedules``
  computes from the exchange calendar, named ``sod-emea-2026-11-27`` and created with
  the idempotency key ``openbell:sod:emea:2026-11-27``: Prefect returns the existing run
  for a key it has seen, so two keepers, or a keeper and ``openbell deploy``, can never
  create a run twice. A run that moved (a schedule edited) is re-timed; a run no longer
  asked for (a new holiday) is deleted, as long as it has not started.

Cron cannot express "45 minutes before the XNYS open, on sessions only, half days
included"; concrete runs can, and they show in the Prefect UI days ahead, each with its
region and trade date.

Everything is compared before it is written, so a second deploy changes nothing and says
so. ``deployments/prefect.yaml`` is rendered from the same specs, for teams that deploy
with ``prefect deploy``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from openbell import catalog
from openbell.deployments.schedules import PlannedRun, runs_between
from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate
from openbell.settings import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tag on every deployment openbell owns.
TAG = "openbell"
#: Tag on every flow run openbell schedules from a calendar.
SCHEDULED_TAG = "openbell:scheduled"
#: Tag on a run started by ``openbell catchup``.
CATCHUP_TAG = "openbell:catch-up"
DEFAULT_HORIZON_DAYS = 14
KEEPER_FLOW = "openbell.deployments.keeper:keep_schedule"
KEEPER_EVERY = timedelta(hours=1)
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"


class DeployError(OpenbellError):
    """The Prefect server refused or could not be reached while deploying."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment openbell wants on the server.

    Attributes:
        name: deployment name, ``sod-emea`` or ``keeper-emea``.
        region: the region it serves.
        runbook: runbook key, or ``keeper``.
        flow_name: the Prefect flow's name (``start-of-day``).
        entrypoint: ``module:function``.
        work_pool: the region's work pool.
        parameters: default parameters.
        description: one line for the UI.
        parameter_schema: the flow's parameter schema (OpenAPI).
        concurrency_limit: runs at once (1), queued beyond that.
        collision_strategy: ``ENQUEUE`` (wait) or ``CANCEL_NEW``.
        every: Prefect's own interval schedule (the keeper), else None.
    """

    name: str
    region: str
    runbook: str
    flow_name: str
    entrypoint: str
    work_pool: str
    parameters: dict[str, Any]
    description: str
    parameter_schema: dict[str, Any] = field(compare=False, repr=False)
    concurrency_limit: int = 1
    collision_strategy: str = "ENQUEUE"
    every: timedelta | None = None

    @property
    def tags(self) -> list[str]:
        return [TAG, f"runbook:{self.runbook}", f"region:{self.region}"]

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    def prefect_yaml(self) -> dict[str, Any]:
        """This deployment as an entry of prefect.yaml's ``deployments:`` list."""
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "entrypoint": self.entrypoint,
            "tags": self.tags,
            "parameters": self.parameters,
            "work_pool": {"name": self.work_pool},
            "concurrency_limit": {
                "limit": self.concurrency_limit,
                "collision_strategy": self.collision_strategy,
            },
            "schedules": (
                [{"interval": int(self.every.total_seconds()), "active": True}]
                if self.every
                else []
            ),
        }
        return entry


@dataclass(frozen=True)
class Change:
    """One thing deploy created, updated, removed or found unchanged.

    Attributes:
        kind: ``work pool``, ``deployment``, ``run`` or ``file``.
        name: what it is called.
        action: ``created``, ``updated``, ``rescheduled``, ``removed``, ``unchanged``,
            ``skipped`` or ``stale``; prefixed ``would be`` in a dry run.
        detail: what differed, or why.
    """

    kind: str
    name: str
    action: str
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action not in ("unchanged", "skipped", "stale")

    def line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.action} {self.kind} {self.name}{detail}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


@dataclass
class DeployReport:
    """What a deploy (or a keeper's top-up) did."""

    api_url: str
    horizon_end: datetime
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.changed]

    def count(self, kind: str, action: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind and c.action == action)

    def to_json(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "horizon_end": self.horizon_end.isoformat(),
            "changed": len(self.changed),
            "changes": [c.to_json() for c in self.changes],
        }


# ---- what should exist -----------------------------------------------------------------
def deployment_specs(
    estate: Estate, *, horizon_days: int = DEFAULT_HORIZON_DAYS
) -> list[DeploymentSpec]:
    """Every deployment the estate asks for: each registered runbook and a keeper, per region."""
    from prefect.utilities.callables import parameter_schema

    specs: list[DeploymentSpec] = []
    from prefect.utilities.importtools import import_object

    runbooks = catalog.runbooks()
    schemas = {key: parameter_schema(rb.flow) for key, rb in runbooks.items()}
    keeper = import_object(KEEPER_FLOW)
    keeper_schema = parameter_schema(keeper)
    for region_name, region in sorted(estate.regions.items()):
        for key, rb in runbooks.items():
            schedule = estate.policy(key).schedule
            when = "when started (no schedule in the estate)"
            if schedule:
                rule = _rule(schedule.at, schedule.offset_minutes)
                when = f"on every {region.primary_calendar} session at {rule}"
            specs.append(
                DeploymentSpec(
                    name=rb.deployment_name(region_name),
                    region=region_name,
                    runbook=key,
                    flow_name=rb.flow.name,
                    entrypoint=rb.entrypoint,
                    work_pool=region.work_pool,
                    parameters={"params": {"region": region_name}},
                    description=f"{rb.title.capitalize()} for {region_name}, {when}.",
                    parameter_schema=schemas[key].model_dump(exclude_unset=True),
                )
            )
        specs.append(
            DeploymentSpec(
                name=f"keeper-{region_name}",
                region=region_name,
                runbook="keeper",
                flow_name=keeper.name,
                entrypoint=KEEPER_FLOW,
                work_pool=region.work_pool,
                parameters={"region": region_name, "horizon_days": horizon_days},
                description=(
                    f"Keeps {region_name}'s runs on its exchange sessions created "
                    f"{horizon_days} days ahead."
                ),
                parameter_schema=keeper_schema.model_dump(exclude_unset=True),
                collision_strategy="CANCEL_NEW",
                every=KEEPER_EVERY,
            )
        )
    return specs


def render_prefect_yaml(estate: Estate, specs: list[DeploymentSpec]) -> str:
    """deployments/prefect.yaml for ``prefect deploy --all``, generated from the estate."""
    source = Path(estate.source or "")
    try:
        shown = source.relative_to(REPO_ROOT)
    except ValueError:
        shown = source
    header = (
        f"# Generated by `openbell deploy` from {shown}: edit the estate, not this file.\n"
        "# For teams that deploy with the Prefect CLI (from the repository root):\n"
        "#   prefect deploy --all --prefect-file deployments/prefect.yaml\n"
        "# It registers the same work pools' deployments as `openbell deploy`. The runs on\n"
        "# exchange sessions are not here (cron cannot say 'open - 45 min on sessions only'):\n"
        "# the keeper-<region> deployments create them hourly, or `openbell deploy` at once.\n"
    )
    body = {
        "name": "openbell",
        "prefect-version": "3.9.1",
        "build": None,
        "push": None,
        "pull": None,
        "deployments": [s.prefect_yaml() for s in specs],
    }
    return header + yaml.safe_dump(body, sort_keys=False, width=100)


def write_prefect_yaml(path: Path, text: str, *, dry_run: bool = False) -> Change:
    """Write ``text`` to ``path`` when it differs; say whether it did."""
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current == text:
        return Change("file", str(path), "unchanged")
    action = "created" if current is None else "updated"
    if not dry_run:
        path.write_text(text, encoding="utf-8")
    return Change("file", str(path), _maybe(action, dry_run), "from the estate")


# ---- talking to Prefect --------------------------------------------------------------------
def run_sync(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async Prefect conversation from synchronous code (the CLI)."""
    return asyncio.run(coro_fn())


@asynccontextmanager
async def prefect_client(api_url: str | None = None) -> AsyncIterator[PrefectClient]:
    """A Prefect client (for ``api_url``, else the configured one) with one-line errors."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = api_url or PREFECT_API_URL.value()
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            try:
                yield client
            except httpx.HTTPStatusError as exc:
                body = exc.response.text[:300]
                raise DeployError(
                    f"Prefect API at {api_url} answered {exc.response.status_code} to "
                    f"{exc.request.method} {exc.request.url.path}: {body}"
                ) from None
            except httpx.TransportError as exc:
                raise DeployError(
                    f"Prefect API at {api_url} does not answer ({exc}); start it, or set "
                    "PREFECT_API_URL"
                ) from None


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
            changes.append(Change("work pool", pool, _maybe("created", dry_run), "type process"))
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
        changes.append(Change("deployment", spec.full_name, _maybe(action, dry_run), detail))
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
            changes.append(Change("run", run.name, _maybe("created", dry_run), when))
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
                Change("run", run.name, _maybe("rescheduled", dry_run), f"{shown} -> {when}")
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
            Change("run", fr.name, _maybe("removed", dry_run), "no longer on the calendar")
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
    prefect_yaml: Path | None = PREFECT_YAML,
    dry_run: bool = False,
) -> DeployReport:
    """Make the server match the estate: pools, deployments, the horizon's runs, prefect.yaml.

    Args:
        estate: the estate.
        api_url: the Prefect API.
        horizon_days: how far ahead runs are created.
        now: the current instant (tests pass one).
        prefect_yaml: where to keep prefect.yaml in step (None: do not write it).
        dry_run: report what would change, change nothing.
    """
    now = now or datetime.now(UTC)
    end = now + timedelta(days=horizon_days)
    report = DeployReport(api_url=api_url, horizon_end=end)
    specs = deployment_specs(estate, horizon_days=horizon_days)
    if prefect_yaml is not None:
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


@asynccontextmanager
async def runbook_slot(
    api_url: str, runbook: str, region: str, *, wait_s: float = 5.0
) -> AsyncIterator[str | None]:
    """Hold the concurrency slot of ``runbook``'s deployment in ``region`` while a run goes.

    A run started outside the worker (``openbell run``) takes the same slot as the
    deployment's runs, so it never overlaps a scheduled one of the same runbook and region.
    Without a deployment (nothing deployed yet) there is nothing to overlap with.

    Yields:
        the concurrency limit's name, or None when there is no deployment.

    Raises:
        DeployError: the slot stayed busy for ``wait_s`` (another run of it is going).
    """
    from prefect.concurrency.asyncio import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async with prefect_client(api_url) as client:
        deployments = await read_openbell_deployments(client)
    dep = deployments.get(catalog.get(runbook).deployment_name(region))
    limit = dep.global_concurrency_limit if dep else None
    if dep is None or limit is None:
        yield None
        return
    async with AsyncExitStack() as stack:
        # The slot is taken on (and its lease renewed with) the same server.
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        try:
            # strict: a limit that vanished is an error, not a silent free-for-all; a
            # lease renewal hiccup must not kill a long end of day, hence the explicit False.
            await stack.enter_async_context(
                concurrency(
                    limit.name,
                    occupy=1,
                    timeout_seconds=wait_s,
                    strict=True,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError:
            raise DeployError(
                f"{runbook} {region} is already running: a run of deployment {dep.name} holds "
                "its only slot; wait for it to finish or cancel it in the Prefect UI"
            ) from None
        yield limit.name


def _region_of(dep: DeploymentResponse) -> str | None:
    for tag in dep.tags or []:
        if tag.startswith("region:"):
            return tag.removeprefix("region:")
    return None


def _local(run: PlannedRun) -> str:
    return run.run_local.strftime("%a %Y-%m-%d %H:%M %Z")


def _rule(at: str, offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    return f"{at} {sign} {abs(offset)} min"


def _maybe(action: str, dry_run: bool) -> str:
    return f"would be {action}" if dry_run else action
