"""Missed runs: one command runs a missed start of day on its worker, and never twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from openbell.deployments.catchup import CatchUpError, catch_up, classify, wait_for
from openbell.deployments.deploy import prefect_client, read_runs_by_key
from openbell.deployments.schedules import planned_run, runs_between
from openbell.runbooks.loader import load_estate
from tests.fixtures.prefect import LAB, Deployed, Worker


def test_a_run_nobody_created_is_missing_once_due() -> None:
    run = planned_run(load_estate(LAB), "sod", "emea", date(2026, 11, 27))
    assert classify(run, None, now=run.run_utc - timedelta(minutes=1)).verdict == "not created"
    missing = classify(run, None, now=run.run_utc + timedelta(minutes=1))
    assert missing.missed and "no run was ever created" in missing.detail


@pytest.mark.integration
def test_catchup_runs_a_missed_run_on_its_worker_and_never_twice(
    deployed: Deployed, regional_workers: dict[str, Worker]
) -> None:
    now = datetime.now(UTC)
    # The last emea start of day before the deploy: due, and never created.
    missed = runs_between(
        deployed.estate, deployed.at - timedelta(days=7), deployed.at, regions=["emea"],
        runbooks=["sod"],
    )[-1]  # fmt: skip

    async def go() -> tuple[Any, Any, Any, Any]:
        async with prefect_client(deployed.api_url) as client:
            first = await catch_up(
                client, deployed.estate, "sod", "emea", missed.trade_date, now=now
            )
            again = await catch_up(
                client, deployed.estate, "sod", "emea", missed.trade_date, now=now
            )
            assert first.flow_run is not None
            done = await wait_for(client, first.flow_run.id, timeout_s=150)
            after = await catch_up(
                client, deployed.estate, "sod", "emea", missed.trade_date, now=now
            )
            runs = await read_runs_by_key(client, [missed.idempotency_key])
        return first, again, (done, after), runs

    first, again, (done, after), runs = asyncio.run(go())
    assert first.action == "created" and first.worker_online
    assert "was never created; started it now on work pool emea" in first.message
    assert again.action in ("queued", "running", "completed")
    assert again.flow_run is not None and again.flow_run.id == first.flow_run.id
    assert done.state_name == "Completed"
    assert done.labels["prefect.worker.name"] == regional_workers["emea"].name
    assert done.parameters["params"]["trade_date"] == missed.trade_date.isoformat()
    assert "openbell:catch-up" in done.tags
    assert after.action == "completed" and "already ran" in after.message
    assert list(runs) == [missed.idempotency_key]  # one run for the key, ever


@pytest.mark.integration
@pytest.mark.parametrize(
    ("day", "words"),
    [
        ("2026-12-25", "is not a XLON session (holiday: Christmas)"),
        ("2099-01-05", "is not due until"),
    ],
    ids=["holiday", "future"],
)
def test_catchup_refuses_what_is_not_a_missed_run(deployed: Deployed, day: str, words: str) -> None:
    async def go() -> None:
        async with prefect_client(deployed.api_url) as client:
            await catch_up(
                client,
                deployed.estate,
                "sod",
                "emea",
                date.fromisoformat(day),
                now=datetime.now(UTC),
            )

    if day.startswith("2099"):
        # exchange_calendars has no 2099 sessions: use the next real one in the horizon.
        future = runs_between(
            deployed.estate, deployed.at, deployed.at + timedelta(days=7), regions=["emea"]
        )[-1]
        day = future.trade_date.isoformat()
    with pytest.raises(CatchUpError, match=words.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(go())
