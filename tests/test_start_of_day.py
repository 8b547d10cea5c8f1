"""Start of day against the lab, on a real Prefect server: runs, re-runs, skips, faults."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from openbell.deployments.runner import run_runbook
from openbell.lab.faults import FaultBook
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings
from openbell.tasks.connectors import calendar
from openbell.tasks.connectors.ssh import SshPool

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(prefect_server: str, lab_estate: tuple[Path, Estate], lab_faults: FaultBook):  # type: ignore[no-untyped-def]
    path, estate = lab_estate
    return path, estate, lab_faults


def read_flow_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def session_day(estate: Estate, region: str) -> date:
    """The last completed session of the region's primary calendar: always seeded."""
    return calendar.previous_session(estate.region(region).primary_calendar, date.today())


def run(
    path: Path, estate: Estate, region: str = "emea", day: date | None = None, **kw: Any
) -> RunRecord:
    return run_runbook("sod", region, day or session_day(estate, region), estate=path, **kw)


def outcomes(record: RunRecord, step_prefix: str) -> list[Outcome]:
    return [o for s in record.steps if s.name.startswith(step_prefix) for o in s.outcomes]


def stop_apps(estate: Estate, region: str) -> int:
    stopped = 0
    with SshPool(estate) as pool:
        for name, app in estate.apps_in(region).items():
            for host in app.hosts:
                assert pool.run(host, app.stop).ok, f"could not stop {name}"
                stopped += 1
    return stopped


def test_run_starts_what_is_down_then_a_rerun_changes_nothing(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    targets = stop_apps(estate, "emea")

    first = run(path, estate)
    assert first.passed, [(s.name, s.summary()) for s in first.steps if not s.passed]
    apps = outcomes(first, "apps")
    assert len(apps) == targets
    assert {o.status for o in apps} == {Status.CHANGED}
    assert all(o.detail.startswith("started; healthy, version") for o in apps)

    second = run(path, estate)
    assert second.passed
    assert second.counts().get("changed", 0) == 0
    assert {o.status for o in outcomes(second, "apps")} == {Status.OK}
    expected = {
        "disk",
        "clock",
        "fix_store",
        "logs",
        "fix",
        "feeds",
        "refdata",
        "positions",
        "limits",
        "controls",
        "batch",
        "alert_path",
        "quarantine",
    }
    assert expected <= {s.name for s in second.steps}

    report = json.loads(Path(second.reports["json"]).read_text())
    assert report["status"] == "ok" and report["region"] == "emea"
    html = Path(second.reports["html"]).read_text()
    assert "Start of day EMEA" in html and "FIX sessions logged on" in html
    sink = (get_settings().home / "notifications.jsonl").read_text()
    assert second.run_id in sink
    # The run is on the Prefect server, named for its region and trade date.
    assert second.flow_run_id == second.run_id
    flow_run = read_flow_run(second.flow_run_id)
    assert flow_run.name == f"sod-emea-{second.trade_date}"
    assert flow_run.state is not None and flow_run.state.is_completed()


def test_holiday_is_skipped_with_the_reason(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    record = run(path, estate, "amer", date(2026, 11, 26))
    assert record.status == Status.SKIPPED and record.passed
    assert record.skipped_reason == "2026-11-26 is not an XNYS session (holiday: Thanksgiving)"
    assert record.steps == []
    assert Path(record.reports["html"]).exists()


def test_dry_run_plans_and_touches_nothing(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    stop_apps(estate, "apac")
    record = run(path, estate, "apac", dry_run=True)
    assert record.dry_run and record.steps == [] and record.plan is not None
    assert any(
        a["action"].startswith("if down: ssh") for s in record.plan["steps"] for a in s["actions"]
    )
    with SshPool(estate) as pool:
        for app in estate.apps_in("apac").values():
            assert not pool.run(app.hosts[0], app.status).ok, "a dry run started an app"


def _first(estate: Estate, kind: str, region: str = "emea") -> str:
    items = {
        "host": estate.hosts_in(region),
        "gw": {n: h for n, h in estate.hosts_in(region).items() if h.fix_store_dir},
        "app": estate.apps_in(region),
        "feed": estate.feeds_in(region),
        "session": estate.fix_sessions_in(region),
        "db": estate.databases_in(region),
    }[kind]
    return sorted(items)[0]


FAULTS = [
    # (fault, target kind, params, failing step, status, words the detail must contain)
    ("host_down", "host", {}, "disk", Status.FAILED, ["refused"]),
    ("host_blackhole", "host", {}, "clock", Status.FAILED, ["no SSH banner"]),
    ("slow_host", "host", {"seconds": 30}, "disk", Status.UNKNOWN, ["no exit status within"]),
    ("clock_offset", "host", {"us": 5000}, "clock", Status.FAILED, ["exceeds algo tier"]),
    ("app_fails_to_start", "app", {}, "apps", Status.FAILED, ["refused to start"]),
    (
        "wrong_version",
        "app",
        {"version": "0.0.1"},
        "apps",
        Status.FAILED,
        ["0.0.1", "expected"],
    ),
    ("stale_feed", "feed", {"seconds": 90}, "feeds", Status.FAILED, ["stale"]),
    ("feed_gap", "feed", {}, "feeds", Status.FAILED, ["gap"]),
    ("fix_logon_rejected", "session", {}, "fix", Status.FAILED, ["Logon rejected"]),
    ("fix_seq_too_low", "session", {"expected": 500}, "fix", Status.FAILED, ["500"]),
    ("missing_refdata", "db", {}, "refdata", Status.FAILED, ["expected >= 1"]),
]


@pytest.mark.parametrize(
    ("kind", "target_kind", "params", "step", "status", "words"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_every_lab_fault_fails_its_step_naming_target_and_cause(  # type: ignore[no-untyped-def]
    lab,
    kind: str,
    target_kind: str,
    params: dict[str, Any],
    step: str,
    status: Status,
    words: list[str],
) -> None:
    from openbell.lab import supervisor

    path, estate, book = lab
    target = _first(estate, "gw" if kind == "host_blackhole" else target_kind)
    if target_kind == "app":
        stop_apps(estate, "emea")  # so that the start (and its fault) really happens
    day = session_day(estate, "emea")
    book.add(
        kind,
        target,
        **params,
        **({"trade_date": day.isoformat()} if kind == "missing_refdata" else {}),
    )
    assert supervisor.wait_faults_applied(timeout_s=10)
    try:
        record = run(path, estate, day=day)
    finally:
        for state in (get_settings().home / "state" / "fix").glob("*.json"):
            state.unlink()  # the too-low guard would block the next test's logon
    assert not record.passed
    hit = [o for o in outcomes(record, step) if o.target.startswith(target) or target in o.target]
    assert hit, f"no {step} outcome names {target}: {[o.target for o in outcomes(record, step)]}"
    assert hit[0].status == status, hit[0]
    for word in words:
        assert word.lower() in hit[0].detail.lower(), hit[0].detail
    # Independent checks still ran and passed.
    unaffected = "alert_path" if step != "alert_path" else "feeds"
    assert all(s.passed for s in record.steps if s.name == unaffected)
    assert any(s.name == "positions" and s.passed for s in record.steps) or kind == "host_down"


def test_dependents_of_an_app_that_did_not_start_are_skipped(lab) -> None:  # type: ignore[no-untyped-def]
    from openbell.lab import supervisor

    path, estate, book = lab
    tiers = estate.app_tiers("emea")
    root = tiers[0][0]
    stop_apps(estate, "emea")
    book.add("app_fails_to_start", root)
    assert supervisor.wait_faults_applied(timeout_s=10)
    record = run(path, estate)
    skipped = [o for o in outcomes(record, "apps") if o.status == Status.SKIPPED]
    dependents = {n for n, a in estate.apps_in("emea").items() if root in a.depends_on}
    assert dependents and dependents <= {o.target.split("@")[0] for o in skipped}
    assert all(
        f"dependency {root}" in o.detail for o in skipped if o.target.split("@")[0] in dependents
    )
