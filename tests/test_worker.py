"""Regional workers: a scheduled start of day fires on its region's worker, nowhere else.

On a real Prefect server (SQLite, then PostgreSQL) with the lab's regions deployed, two
workers run (emea and amer), each with its own OPENBELL_HOME so that where a run really
ran is visible on disk. A run scheduled a few seconds ahead for each region fires by
itself, runs the start-of-day flow on its region's worker, and records its trade date.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.deployments.deploy import (
    create_planned_run,
    prefect_client,
    read_openbell_deployments,
)
from openbell.deployments.schedules import PlannedRun, planned_run, sessions_between
from openbell.deployments.worker import worker_command
from openbell.runbooks.loader import load_estate
from tests.fixtures.prefect import LAB, Deployed, Worker

LATE = 120  # seconds a fired run may take to finish on a busy two-core machine


def test_worker_command_is_prefect_on_the_region_pool_with_the_estate() -> None:
    estate = load_estate(LAB)
    argv, env = worker_command(estate, "AMER", "http://127.0.0.1:4999/api", limit=2)
    assert argv[1:] == [
        "worker", "start", "--pool", "amer", "--type", "process",
        "--name", argv[8], "--limit", "2",
    ]  # fmt: skip
    assert argv[8].startswith("openbell-amer-")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert env["OPENBELL_ESTATE"] == str(LAB)


def test_worker_print_shows_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(
        "openbell.deployments.prefect_server.healthy", lambda url, timeout=2.0: True
    )
    result = CliRunner().invoke(app, ["worker", "--region", "emea", "--print"])
    assert result.exit_code == 0, result.output
    assert "prefect worker start --pool emea --type process --name openbell-emea-" in result.stdout
    assert f"OPENBELL_ESTATE={LAB}" in result.stdout


def first_session_after(calendar: str, day: date) -> date:
    return sessions_between(calendar, day, day + timedelta(days=10))[0]


@pytest.mark.integration
def test_a_scheduled_start_of_day_fires_on_its_regional_worker(
    deployed: Deployed, regional_workers: dict[str, Worker]
) -> None:
    # Trade dates beyond the deployed horizon, so their keys are free: each run is made
    # by the same call the keeper uses, but due in a few seconds rather than at open - 45.
    beyond = deployed.at.date() + timedelta(days=30)
    runs = {
        region: planned_run(
            deployed.estate,
            "sod",
            region,
            first_session_after(deployed.estate.region(region).primary_calendar, beyond),
        )
        for region in ("emea", "amer")
    }
    fired = asyncio.run(_schedule_and_wait(deployed.api_url, runs, seconds_ahead=5))

    for region, worker in regional_workers.items():
        run = fired[region]
        planned = runs[region]
        assert run.state_name == "Completed", (
            run.state_name,
            run.state.message if run.state else "",
        )
        assert run.name == f"sod-{region}-{planned.trade_date}"
        assert run.work_pool_name == region
        assert run.labels["prefect.worker.name"] == worker.name
        assert run.parameters["params"]["trade_date"] == planned.trade_date.isoformat()
        # Not before it was due. Prefect's server rounds the wait it imposes to whole
        # seconds (WaitForScheduledTime), so a run may start up to half a second early.
        assert run.start_time is not None and run.expected_start_time is not None
        assert run.start_time >= run.expected_start_time - timedelta(seconds=0.5)
        # The run record was written by the region's own worker, with the trade date.
        (record,) = _records(worker.home, run.id)
        assert (record["region"], record["trade_date"]) == (region, planned.trade_date.isoformat())
        assert record["flow_run_id"] == str(run.id)
        assert record["dry_run"] is False
        # A run a worker picked up carries only an operator parameter: nothing proves it.
        proof = record["requester_proof"]
        assert proof["method"] == "none" and proof["person"] == record["operator"]
        assert proof["account"].startswith("a Prefect deployment run: ")
        other = regional_workers["amer" if region == "emea" else "emea"]
        assert _records(other.home, run.id) == []


async def _schedule_and_wait(
    api_url: str, runs: dict[str, PlannedRun], *, seconds_ahead: float
) -> dict[str, Any]:
    async with prefect_client(api_url) as client:
        deployments = await read_openbell_deployments(client)
        when = datetime.now(UTC) + timedelta(seconds=seconds_ahead)
        created = {
            region: await create_planned_run(client, deployments[f"sod-{region}"], run, when=when)
            for region, run in runs.items()
        }
        for fr in created.values():
            assert fr.state_name == "Scheduled" and fr.next_scheduled_start_time is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds_ahead + LATE
        final: dict[str, Any] = {}
        while len(final) < len(created) and loop.time() < deadline:
            for region, fr in created.items():
                run = await client.read_flow_run(fr.id)
                if run.state and run.state.is_final():
                    final[region] = run
            await asyncio.sleep(1)
        assert len(final) == len(created), {
            r: (await client.read_flow_run(fr.id)).state_name for r, fr in created.items()
        }
        return final


def _records(home: Path, flow_run_id: Any) -> list[dict[str, Any]]:
    found = []
    for path in (home / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if record.get("flow_run_id") == str(flow_run_id):
            found.append(record)
    return found
