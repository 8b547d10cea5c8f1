"""openbell doctor: DST ahead, empty calendars, a dead server, and runs that did not happen."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.deployments.doctor import calendar_checks, prefect_checks
from openbell.runbooks.loader import load_estate
from tests.fixtures.prefect import LAB, Deployed
from tests.fixtures.services import free_port


def test_dst_in_new_york_is_announced_with_the_runs_that_move() -> None:
    checks = calendar_checks(load_estate(LAB), datetime(2026, 3, 1, 12, tzinfo=UTC))
    dst = [c for c in checks if c.area == "dst"]
    assert [c.subject for c in dst] == ["amer"]  # London moves on 03-29, beyond 14 days
    (amer,) = dst
    assert amer.level == "warn"
    assert (
        "America/New_York goes from EST (UTC-05:00) to EDT (UTC-04:00) on 2026-03-08" in amer.detail
    )
    assert "sod 13:45 -> 12:45 UTC (still 08:45 local)" in amer.detail
    assert "eod 21:20 -> 20:20 UTC (still 16:20 local)" in amer.detail


def test_london_autumn_change_and_tokyo_never() -> None:
    checks = calendar_checks(load_estate(LAB), datetime(2026, 10, 20, tzinfo=UTC))
    by_region = {c.subject: c for c in checks if c.area == "dst"}
    assert set(by_region) == {"emea", "amer"}  # London 10-25, New York 11-01
    assert "sod 06:15 -> 07:15 UTC (still 07:15 local)" in by_region["emea"].detail
    assert all(c.level == "ok" for c in checks if c.area == "calendar")


def test_a_horizon_without_sessions_warns() -> None:
    # Saturday noon UTC with a one-day horizon: no XNYS or XLON session until Monday.
    checks = calendar_checks(load_estate(LAB), datetime(2026, 11, 28, 12, tzinfo=UTC), 1)
    cal = {c.subject: c for c in checks if c.area == "calendar"}
    assert (
        cal["amer"].level == "warn"
        and "no XNYS sessions from 2026-11-28 to 2026-11-29" in cal["amer"].detail
    )
    assert cal["emea"].level == "warn"


def test_a_server_that_does_not_answer_is_one_failed_check() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    checks = asyncio.run(prefect_checks(load_estate(LAB), url, datetime.now(UTC)))
    assert [(c.area, c.level) for c in checks] == [("prefect", "fail")]
    assert "does not answer" in checks[0].detail


def test_doctor_cli_without_a_server_exits_1_with_lines_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    result = CliRunner().invoke(app, ["doctor", "--estate", str(LAB)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "fail prefect" in result.stdout and "does not answer" in result.stdout
    assert "ok   calendar   amer:" in result.stdout


@pytest.mark.integration
def test_three_days_without_keeper_or_workers_shows_late_runs_and_a_short_horizon(
    deployed: Deployed,
) -> None:
    # As if the server and workers had been down since the deploy: runs due in the three
    # days after it never started, and the keeper never topped the horizon up.
    later = deployed.at + timedelta(days=3)
    checks = asyncio.run(prefect_checks(deployed.estate, deployed.api_url, later, lookback_days=3))
    late = [c for c in checks if c.area == "runs" and c.level == "fail"]
    assert late, [c.to_json() for c in checks]
    for c in late:
        runbook, region, day = c.subject.split("-", 2)
        assert f"openbell catchup {runbook} --region {region} --date {day}" in c.detail
        assert "not started" in c.detail
    # The horizon lacks the days after the last deploy's 14: a region with a run due in
    # them warns, one whose venues have no session there (a weekend) is ok, whatever the date.
    from openbell.deployments.schedules import runs_between

    end = later + timedelta(days=13)  # the doctor's horizon, less its last (keeper) day
    last_deploy = datetime.now(UTC)  # no deploy of this session is later than now
    due = {p.region for p in runs_between(deployed.estate, last_deploy + timedelta(days=14), end)}
    maybe = {p.region for p in runs_between(deployed.estate, deployed.at + timedelta(days=14), end)}
    horizon = {c.subject: c for c in checks if c.area == "horizon"}
    assert due or all(c.level == "ok" for c in horizon.values()), horizon
    for region, c in horizon.items():
        if region in due:
            assert c.level == "warn", c
        elif region not in maybe:
            assert c.level == "ok", c
        if c.level == "warn":
            assert "not created" in c.detail and "openbell deploy" in c.detail, c
    assert any(c.area == "deployment" and c.level == "ok" for c in checks)


@pytest.mark.integration
def test_doctor_after_deploy_is_clean(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(
        __import__("openbell.deployments.deploy", fromlist=["deploy"]).deploy(
            deployed.estate, deployed.api_url, prefect_yaml=None
        )
    )
    monkeypatch.setenv("PREFECT_API_URL", deployed.api_url)
    result = CliRunner().invoke(app, ["doctor", "--estate", str(deployed.estate.source), "--json"])
    assert result.exit_code in (0, 1), result.output
    import json

    checks = json.loads(result.stdout)
    levels = {(c["area"], c["level"]) for c in checks}
    assert ("horizon", "ok") in levels and ("deployment", "ok") in levels
    assert not [
        c
        for c in checks
        if c["area"] in ("horizon", "deployment", "prefect") and c["level"] == "fail"
    ]


def test_database_roles_are_checked_per_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from openbell.deployments.doctor import database_checks

    estate = load_estate(LAB)
    checks = database_checks(estate)
    assert {c.subject for c in checks} == {n for n, d in estate.databases.items() if d.checks}
    assert all(c.area == "database" and c.level == "ok" for c in checks), checks  # SQLite: mode=ro
    broken = LAB.read_text().replace(
        "url: sqlite:///${OPENBELL_HOME}/lab/oms-emea.db",
        "url: postgresql://nobody@127.0.0.1:1/none",
        1,
    )
    (tmp_path / "entitlements.yaml").write_text((LAB.parent / "entitlements.yaml").read_text())
    (tmp_path / "lab.yaml").write_text(broken)
    by_name = {c.subject: c for c in database_checks(load_estate(tmp_path / "lab.yaml"))}
    assert by_name["emea-oms"].level == "warn"
    assert "could not check its role" in by_name["emea-oms"].detail
