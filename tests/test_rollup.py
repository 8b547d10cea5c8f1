"""The daily rollup: every run, change, approval and failure of one region's day, and no other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from openbell.outcome import Outcome, Status
from openbell.run import StepResult
from openbell.tasks.ledger import Ledger
from openbell.tasks.reports.rollup import rollup_paths, write_rollup
from tests.fixtures.report_sample import DAY, record_sample_run, record_simple_run

OTHER_DAY = DAY + timedelta(days=1)


@pytest.fixture
def day_ledger(ledger: Ledger, tmp_path: Path) -> Iterator[Ledger]:
    """EMEA's 2026-11-24 (the sample run, a changing run, a failing run), plus AMER's
    run of the same day and EMEA's run of the next day, interleaved in the chain."""
    record_simple_run(
        ledger,
        region="amer",
        day=DAY,
        run_id="amer-same-day",
        status=Status.FAILED,
        target="amer-app1",
    )
    record_sample_run(ledger, tmp_path)
    record_simple_run(
        ledger,
        region="emea",
        day=DAY,
        run_id="emea-second",
        status=Status.CHANGED,
        start=3600,
        target="emea-refdata",
    )
    record_simple_run(
        ledger,
        region="emea",
        day=OTHER_DAY,
        run_id="emea-next-day",
        status=Status.FAILED,
        target="emea-tomorrow",
    )
    record_simple_run(
        ledger,
        region="emea",
        day=DAY,
        run_id="emea-third",
        status=Status.FAILED,
        start=7200,
        target="emea-pricer",
    )
    yield ledger


def test_the_rollup_lists_every_run_change_approval_and_failure_of_the_region_and_day(
    day_ledger: Ledger, tmp_path: Path
) -> None:
    paths = write_rollup(day_ledger, "emea", DAY, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    texts = {fmt: p.read_text() for fmt, p in paths.items()}

    assert [r["run_id"] for r in data["runs"]] == [
        "4f1c2d3e-5a6b-4c7d-8e9f-0123456789ab",
        "emea-second",
        "emea-third",
    ]
    assert [(c["run_id"], c["target"]) for c in data["changes"]] == [
        ("4f1c2d3e-5a6b-4c7d-8e9f-0123456789ab", "emea-oms@emea-app1"),
        ("emea-second", "emea-refdata"),
    ]
    (approval,) = data["approvals"]
    assert approval["status"] == "approved"
    assert [(d["approver"], d["effect"]) for d in approval["decisions"]] == [
        ("bob", "refused"),
        ("carol", "counted"),
    ]
    failures = [(f["run_id"][:8], f["kind"], f["subject"]) for f in data["failures"]]
    assert ("emea-thi", "failed", "emea-pricer") in failures
    assert ("emea-thi", "run ended", "alice") in failures
    assert ("4f1c2d3e", "unknown", "TQ-ORD-2") in failures
    assert ("4f1c2d3e", "refused decision", "bob") in failures
    assert data["totals"] == {
        "runs": 3,
        "releases": 0,
        "changes": 2,
        "approvals": 1,
        "failures": len(failures),
        "refusals": 0,
    }
    for fmt, text in texts.items():
        for wanted in ("emea-refdata", "emea-pricer", "TQ-ORD-2", "carol"):
            assert wanted in text, (fmt, wanted)
        for other in ("amer-same-day", "amer-app1", "emea-next-day", "emea-tomorrow"):
            assert other not in text, (fmt, other)
    # Each run links to its own report, by the name the run reports are written under.
    assert 'href="sod-emea-2026-11-24-emea-sec.html"' in texts["html"]
    assert paths == rollup_paths("emea", DAY, tmp_path / "out")


def test_regenerating_the_rollup_gives_identical_bytes(day_ledger: Ledger, tmp_path: Path) -> None:
    first = write_rollup(day_ledger, "emea", DAY, tmp_path / "a")
    second = write_rollup(day_ledger, "EMEA", DAY, tmp_path / "b")

    assert [p.name for p in first.values()] == [p.name for p in second.values()]
    assert {k: p.read_bytes() for k, p in first.items()} == {
        k: p.read_bytes() for k, p in second.items()
    }


def test_refusals_outside_any_run_are_listed_for_their_region_and_day(
    ledger: Ledger, tmp_path: Path
) -> None:
    # Entries are stamped now, so the day is today (UTC).
    today = datetime.now(UTC).date()
    ledger.record_refusal(
        who="frank",
        action="run",
        runbook="sod",
        region="emea",
        reason="frank may not run sod in emea",
    )
    ledger.record_refusal(
        who="erin",
        action="run",
        runbook="sod",
        region="amer",
        reason="erin may not run sod in amer",
    )
    ledger.append(
        "refusal",
        None,
        {
            "who": "dave",
            "action": "approve",
            "runbook": "sod",
            "region": "emea",
            "reason": "for another trade date",
            "rule": None,
            "trade_date": (today + timedelta(days=1)).isoformat(),
        },
    )

    data = json.loads(write_rollup(ledger, "emea", today, tmp_path)["json"].read_text())

    assert [(r["who"], r["action"]) for r in data["refusals"]] == [("frank", "run")]
    assert data["runs"] == [] and data["totals"]["refusals"] == 1


def test_a_day_without_runs_says_so(ledger: Ledger, tmp_path: Path) -> None:
    paths = write_rollup(ledger, "apac", date(2026, 11, 23), tmp_path)

    assert "No run of any runbook is recorded for apac on 2026-11-23" in paths["html"].read_text()
    assert "No change was made." in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["totals"]["runs"] == 0


def test_a_run_with_no_end_recorded_is_interrupted_and_links_no_report(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A killed run's steps may all have passed so far: the rollup never calls it ok."""
    ledger.start_run(
        runbook="sod",
        region="emea",
        trade_date=DAY,
        requester="alice",
        parameters={"region": "emea"},
        run_id="emea-killed",
    )
    ok = Outcome(step="disk", target="emea-app1", status=Status.OK, detail="12% used")
    ledger.record_step("emea-killed", StepResult(name="disk", title="Disk", outcomes=[ok]))
    paths = write_rollup(ledger, "emea", DAY, tmp_path / "out")
    (run,) = json.loads(paths["json"].read_text())["runs"]
    assert (run["run_id"], run["status"], run["report"]) == ("emea-killed", "interrupted", "")
    html = paths["html"].read_text()
    assert "no report" in html and 'href=""' not in html
    assert "⛔ interrupted" in paths["md"].read_text()
