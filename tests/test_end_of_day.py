"""End of day against the lab, on a real Prefect server: reconcile, archive, report, re-run,
breaks, the cancel sweep, the close gate."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from openbell.deployments.runner import run_runbook
from openbell.lab import trades
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors import calendar
from openbell.tasks.sessions import reset_due
from tests.fixtures.people import as_

pytestmark = pytest.mark.integration

REGION = "amer"
BRIEF_DAY = date(2026, 11, 27)  # XNYS half day: closes 13:00 New York


def eod_day() -> date:
    """2026-11-27 while the lab still trades it, else the last session that has closed."""
    if (date.today() - BRIEF_DAY).days < trades.RECENT_DAYS - 3:
        return BRIEF_DAY
    return calendar.previous_session("XNYS", date.today())


@pytest.fixture
def lab(  # type: ignore[no-untyped-def]
    prefect_server: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: FaultBook,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """The lab, and a ledger of this test's own: the lab's day is reset between tests (the
    breaks reopen orders, rewrite fills), so keys recorded by another test do not apply."""
    from openbell.settings import get_settings

    monkeypatch.setenv("OPENBELL_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    get_settings.cache_clear()
    path, estate = lab_estate
    return path, estate, lab_faults


def run(path: Path, day: date | None = None, **kw: Any) -> RunRecord:
    return run_runbook("eod", REGION, day or eod_day(), estate=path, **kw)


def step(record: RunRecord, name: str) -> list[Outcome]:
    found = [s for s in record.steps if s.name == name]
    assert found, f"no step {name}: {[s.name for s in record.steps]}"
    return found[0].outcomes


def effects() -> EffectsLog:
    return EffectsLog(LabPaths.of().effects_file)


def break_faults(book: FaultBook, estate: Estate, kinds: list[str], day: date) -> None:
    from openbell.lab import supervisor

    (db,) = estate.oms_in(REGION)
    for kind in kinds:
        book.add(kind, db, trade_date=day.isoformat())
    assert supervisor.wait_faults_applied(timeout_s=20)


def test_end_of_day_reconciles_archives_and_reports_then_changes_nothing(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    day = eod_day()
    ymd = day.strftime("%Y%m%d")
    first = run(path)
    assert first.passed, [(s.name, s.summary()) for s in first.steps if not s.passed]
    assert [s.name for s in first.steps] == [
        "close",
        "day_orders",
        "fills_booked",
        "recon",
        "positions_rolled",
        "fix_eod",
        "archive",
        "disk_after_archive",
    ]
    (recon,) = step(first, "recon")
    assert recon.status == Status.OK and recon.evidence["matched"] > 0
    assert len(recon.evidence["trade_file"]["sha256"]) == 64
    assert {o.status for o in step(first, "fix_eod")} == {Status.CHANGED}
    archives = step(first, "archive")
    assert {o.status for o in archives} == {Status.CHANGED}
    assert all(len(o.evidence["sha256"]) == 64 and o.evidence["files"] for o in archives)
    assert day.isoformat() in step(first, "close")[0].detail

    second = run(path)
    assert second.passed
    assert second.counts().get("changed", 0) == 0
    assert {o.status for o in step(second, "fix_eod") + step(second, "archive")} == {Status.OK}

    # Every side effect applied once, not once per run.
    log = effects()
    following = calendar.session_info("XNYS", day).next_session
    assert following is not None
    for name, session in estate.fix_sessions_in(REGION).items():
        key = f"{name}|{day.isoformat()}"
        assert len(log.read(kind="fix_logout", key=key)) == 1
        resets = len(log.read(kind="fix_seq_reset", key=key))
        assert resets == (1 if reset_due(session, day, following) else 0)
    for o in archives:
        tars = [e for e in log.read(kind="archive", target=o.target) if ymd in str(e.detail)]
        removals = [e for e in log.read(kind="remove", target=o.target) if ymd in str(e.detail)]
        assert len(tars) == 1 and len(removals) == 1, (o.target, tars, removals)
        assert sorted(removals[0].detail["argv"][3:]) == sorted(o.evidence["files"])

    report = json.loads(Path(second.reports["json"]).read_text())
    assert report["status"] == "ok" and report["runbook"] == "eod"
    md = Path(first.reports["md"]).read_text()
    assert f"End of day AMER {day}" in md and "Three-way reconciliation" in md


BREAKS = [
    ("missing_fill", "missing on venue"),
    ("qty_mismatch", "qty: oms"),
    ("price_mismatch", "price: oms"),
    ("duplicate_exec_id", "2 rows on drop_copy"),
]


@pytest.mark.parametrize(("kind", "words"), BREAKS, ids=[b[0] for b in BREAKS])
def test_a_break_fails_reconciliation_and_the_report_lists_it(  # type: ignore[no-untyped-def]
    lab, kind: str, words: str
) -> None:
    path, estate, book = lab
    break_faults(book, estate, [kind], eod_day())
    record = run(path)
    assert not record.passed
    summary, *breaks = step(record, "recon")
    assert summary.status == Status.FAILED
    assert [b["kind"] for b in summary.evidence["breaks"]] == [
        {"missing_fill": "missing", "duplicate_exec_id": "duplicate"}.get(kind, kind)
    ]
    (listed,) = breaks
    assert words in listed.detail
    md = Path(record.reports["md"]).read_text()
    assert listed.detail in md.replace("\\", "")
    others = {s.name: s.passed for s in record.steps if s.name != "recon"}
    assert all(others.values()), others  # a venue/drop-copy break is a reconciliation matter


def test_every_break_at_once_is_listed_in_the_report(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, book = lab
    break_faults(book, estate, [k for k, _ in BREAKS], eod_day())
    record = run(path)
    summary, *breaks = step(record, "recon")
    kinds = sorted(b["kind"] for b in summary.evidence["breaks"])
    assert kinds == ["duplicate", "missing", "price_mismatch", "qty_mismatch"]
    assert summary.detail.startswith("4 break(s)")
    html = Path(record.reports["html"]).read_text()
    md = Path(record.reports["md"]).read_text().replace("\\", "")
    for b in breaks:
        assert b.target.split(":", 1)[1] in html
        assert b.detail in md


def test_an_order_left_open_is_swept_once(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, book = lab
    day = eod_day()
    break_faults(book, estate, ["order_left_open"], day)
    first = run(path)
    (orders,) = step(first, "day_orders")
    assert orders.status == Status.CHANGED, orders.detail
    (canceled,) = orders.evidence["sweep"]["canceled"]
    second = run(path)
    assert step(second, "day_orders")[0].status == Status.OK
    (db,) = estate.oms_in(REGION)
    assert len(effects().read(kind="oms_cancel", key=f"{db}|{day.isoformat()}|{canceled}")) == 1


def test_before_the_close_it_refuses_and_touches_nothing(lab) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = lab
    upcoming = calendar.session_info("XNYS", date.today()).next_session
    assert upcoming is not None
    before = len(effects().read())
    record = run(path, upcoming)
    assert not record.passed
    assert [s.name for s in record.steps] == ["close"]
    assert "not closed yet" in record.steps[0].outcomes[0].detail
    assert len(effects().read()) == before


def test_a_holiday_is_skipped_and_a_dry_run_only_plans(lab) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = lab
    holiday = run(path, date(2026, 11, 26))
    assert holiday.status == Status.SKIPPED and holiday.steps == []
    assert "Thanksgiving" in (holiday.skipped_reason or "")
    before = len(effects().read())
    dry = run(path, dry_run=True)
    assert dry.steps == [] and dry.plan is not None
    assert [s["name"] for s in dry.plan["steps"]][:3] == ["calendar", "close", "day_orders"]
    assert len(effects().read()) == before


def test_logout_waits_for_a_second_person_where_the_estate_says_so(  # type: ignore[no-untyped-def]
    lab, tmp_path: Path
) -> None:
    """``runbooks.eod.approvals: {steps: [fix_eod]}``: nothing is logged out before a second
    person approves exactly the sessions to end; the requester cannot approve it."""
    import shutil
    import threading
    import time

    import yaml
    from typer.testing import CliRunner

    from openbell.deployments.cli import app
    from openbell.tasks.approvals.gate import pending_requests
    from openbell.tasks.ledger import Ledger

    path, estate, _ = lab
    region = "apac"
    doc = yaml.safe_load(path.read_text())
    doc["runbooks"]["eod"]["approvals"] = {"steps": ["fix_eod"], "ttl_minutes": 5}
    gated = tmp_path / "estate.yaml"
    gated.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(path.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    day = calendar.previous_session(estate.region(region).primary_calendar, date.today())
    sessions = sorted(estate.fix_sessions_in(region))
    logouts = [f"{s}|{day.isoformat()}" for s in sessions]
    done: dict[str, Any] = {}
    started = time.time()
    thread = threading.Thread(
        target=lambda: done.update(
            record=run_runbook("eod", region, day, estate=gated, operator=f"{region}-oncall")
        ),
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 180
    waiting = []
    while not waiting and time.monotonic() < deadline:
        with Ledger() as ledger:
            waiting = [
                r
                for r in pending_requests(ledger)
                if r.request.runbook == "eod"
                and r.request.region == region
                and r.request.created_at.timestamp() >= started
            ]
        assert thread.is_alive(), "end of day ended without asking for approval"
        time.sleep(0.5)
    assert waiting, "no approval request"
    req = waiting[-1]
    assert req.request.step == "fix_eod"
    assert sorted(c.split()[2] for c in req.changes) == sessions
    assert all(not effects().read(kind="fix_logout", key=k) for k in logouts)  # not yet
    cli = CliRunner()
    own = cli.invoke(
        app, ["approve", req.request.run_id, *as_(f"{region}-oncall"), "--reason", "x"]
    )
    assert own.exit_code != 0 and "cannot decide on their own change" in own.output
    ok = cli.invoke(app, ["approve", req.request.run_id, *as_(f"{region}-lead"), "--reason", "ok"])
    assert ok.exit_code == 0, ok.output
    thread.join(180)
    record = done["record"]
    assert {o.status for o in step(record, "fix_eod")} == {Status.CHANGED}
    assert record.approvals[0].step == "fix_eod" and record.approvals[0].status == "approved"
    assert all(len(effects().read(kind="fix_logout", key=k)) == 1 for k in logouts)
