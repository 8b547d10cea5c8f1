"""The keeper deployment, run by a regional worker, tops up that region's runs only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from openbell.deployments.catchup import wait_for
from openbell.deployments.deploy import (
    deploy,
    prefect_client,
    read_openbell_deployments,
    read_runs_by_key,
    scheduled_at,
)
from openbell.deployments.schedules import runs_between
from tests.fixtures.prefect import Deployed, Worker

pytestmark = pytest.mark.integration


def test_keeper_recreates_its_regions_missing_runs(
    deployed: Deployed, regional_workers: dict[str, Worker]
) -> None:
    now = datetime.now(UTC)
    soon = runs_between(deployed.estate, now, now + timedelta(days=7), runbooks=["sod"])
    emea = next(r for r in soon if r.region == "emea")
    amer = next(r for r in soon if r.region == "amer")
    keys = [emea.idempotency_key, amer.idempotency_key]

    async def go() -> tuple[dict, object]:  # type: ignore[type-arg]
        from prefect.states import Scheduled

        async with prefect_client(deployed.api_url) as client:
            for run in (await read_runs_by_key(client, keys)).values():
                await client.delete_flow_run(run.id)
            assert await read_runs_by_key(client, keys) == {}
            keeper = (await read_openbell_deployments(client))["keeper-emea"]
            fr = await client.create_flow_run_from_deployment(
                keeper.id, state=Scheduled(scheduled_time=datetime.now(UTC))
            )
            done = await wait_for(client, fr.id, timeout_s=150)
            after = await read_runs_by_key(client, keys)
        return after, done

    after, done = asyncio.run(go())
    assert done.state_name == "Completed"  # type: ignore[attr-defined]
    assert done.labels["prefect.worker.name"] == regional_workers["emea"].name  # type: ignore[attr-defined]
    assert list(after) == [emea.idempotency_key]  # amer's is not the emea keeper's business
    assert scheduled_at(after[emea.idempotency_key]) == emea.run_utc
    # openbell deploy puts amer's back.
    report = asyncio.run(deploy(deployed.estate, deployed.api_url, prefect_yaml=None))
    created = [c.name for c in report.changes if c.action == "created"]
    assert amer.name in created and emea.name not in created
