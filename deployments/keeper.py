"""The keeper: a small Prefect flow that keeps a region's scheduled runs topped up.

``openbell deploy`` creates the runs of the next 14 days; without anything else the
horizon would run dry two weeks later. Each region gets a ``keeper-<region>`` deployment
on its own work pool, on Prefect's own hourly schedule (a plain interval is all it needs),
so the worker that runs the region's runbooks also keeps its calendar: a region whose
worker is up always has its runs, and one region's outage does not touch another's.

The keeper reads the estate where the worker runs (``OPENBELL_ESTATE``, which
``openbell worker`` sets) and creates runs with the same idempotency keys as
``openbell deploy``, so the two never make a run twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger

from openbell.deployments.deploy import DEFAULT_HORIZON_DAYS, prefect_client, top_up
from openbell.flows.engine import openbell_flow
from openbell.runbooks.loader import load_estate


@openbell_flow("openbell-keeper", "keeper-{region}")
async def keep_schedule(region: str, horizon_days: int = DEFAULT_HORIZON_DAYS) -> dict[str, int]:
    """Create the region's runs on exchange sessions for the next ``horizon_days`` days.

    Returns:
        how many runs were created, rescheduled, removed and left unchanged.
    """
    logger = get_run_logger()
    estate = load_estate()
    estate.region(region)
    async with prefect_client() as client:
        changes = await top_up(
            client, estate, [region.lower()], now=datetime.now(UTC), horizon_days=horizon_days
        )
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
        if change.changed or change.action == "skipped":
            logger.info("%s", change.line())
    logger.info("keeper %s: %s", region, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return counts
