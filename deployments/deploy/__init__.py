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
so. ``prefect.yaml`` is rendered from the same specs, for teams that deploy with
``prefect deploy`` (kept under OPENBELL_HOME; the lab estate's copy is checked in as
``deployments/prefect.yaml``).

The package, one module a concern:

- ``model``: what should exist (``DeploymentSpec``, ``deployment_specs``) and what a deploy
  did (``Change``, ``DeployReport``);
- ``prefect_yaml``: the prefect.yaml rendering;
- ``client``: a Prefect client with one-line errors;
- ``reconcile``: work pools, deployments and scheduled runs brought in step (``deploy``,
  ``top_up``);
- ``slot``: the deployment's concurrency slot, shared by runs started outside the worker.
"""

from openbell.deployments.deploy.client import prefect_client, run_sync
from openbell.deployments.deploy.model import (
    CATCHUP_TAG,
    DEFAULT_HORIZON_DAYS,
    KEEPER_EVERY,
    KEEPER_FLOW,
    SCHEDULED_TAG,
    TAG,
    Change,
    DeployError,
    DeploymentSpec,
    DeployReport,
    deployment_specs,
)
from openbell.deployments.deploy.prefect_yaml import (
    PREFECT_YAML,
    default_prefect_yaml,
    render_prefect_yaml,
    write_prefect_yaml,
)
from openbell.deployments.deploy.reconcile import (
    apply_deployment,
    create_planned_run,
    deploy,
    deployment_differences,
    ensure_deployments,
    ensure_work_pools,
    not_started,
    read_openbell_deployments,
    read_runs_by_key,
    scheduled_at,
    sync_runs,
    top_up,
)
from openbell.deployments.deploy.slot import runbook_slot

__all__ = [
    "CATCHUP_TAG",
    "DEFAULT_HORIZON_DAYS",
    "KEEPER_EVERY",
    "KEEPER_FLOW",
    "PREFECT_YAML",
    "SCHEDULED_TAG",
    "TAG",
    "Change",
    "DeployError",
    "DeployReport",
    "DeploymentSpec",
    "apply_deployment",
    "create_planned_run",
    "default_prefect_yaml",
    "deploy",
    "deployment_differences",
    "deployment_specs",
    "ensure_deployments",
    "ensure_work_pools",
    "not_started",
    "prefect_client",
    "read_openbell_deployments",
    "read_runs_by_key",
    "render_prefect_yaml",
    "run_sync",
    "runbook_slot",
    "scheduled_at",
    "sync_runs",
    "top_up",
    "write_prefect_yaml",
]
