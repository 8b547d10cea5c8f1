"""What openbell wants on a Prefect server, and what a deploy did.

``DeploymentSpec`` and ``deployment_specs`` (from the estate and the runbook catalog);
``Change`` and ``DeployReport`` (what was created, updated, removed or left alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from openbell import catalog
from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

#: Tag on every deployment openbell owns.
TAG = "openbell"
#: Tag on every flow run openbell schedules from a calendar.
SCHEDULED_TAG = "openbell:scheduled"
#: Tag on a run started by ``openbell catchup``.
CATCHUP_TAG = "openbell:catch-up"
DEFAULT_HORIZON_DAYS = 14
KEEPER_FLOW = "openbell.deployments.keeper:keep_schedule"
KEEPER_EVERY = timedelta(hours=1)


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


def _rule(at: str, offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    return f"{at} {sign} {abs(offset)} min"


def maybe(action: str, dry_run: bool) -> str:
    return f"would be {action}" if dry_run else action
