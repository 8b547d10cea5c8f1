"""End of day is safe to re-run: idempotency keys, --from-step, one run at a time, and
what ``openbell plan`` says a re-run would skip. Against the lab, on a real Prefect server,
each test with a ledger of its own."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.deployments.runner import run_runbook
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings
from openbell.tasks.ledger import Ledger
from tests.fixtures.killer import closed_days
from tests.fixtures.people import as_
from tests.test_end_of_day import eod_day

pytestmark = pytest.mark.integration

REGION = "amer"
SIDE_EFFECTS = ("day_orders", "fix_eod", "archive")


@pytest.fixture
def lab(  # type: ignore[no-untyped-def]
    prefect_server: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: FaultBook,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("OPENBELL_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    get_settings.cache_clear()
    return lab_estate


#: Each test ends a trading day no other test touches (the lab's FIX stores and archives
#: carry on from day to day): the oldest closed sessions go to tests/test_ssh_faults.py,
#: the newest to tests/test_faults.py, these in between.
TESTS = [
    "test_a_rerun_does_nothing_that_completed_and_names_the_run_that_did",
    "test_from_step_skips_the_steps_before_and_redoes_that_one_from_its_state",
    "test_a_second_run_at_once_is_refused_and_touches_nothing",
    "test_a_second_run_waits_when_the_estate_says_so",
    "test_a_run_that_died_is_recorded_as_interrupted_by_the_next",
    "test_a_ledger_locked_by_another_writer_for_10_s_is_waited_for_and_nothing_is_lost",
]


@pytest.fixture
def day(lab: tuple[Path, Estate], request: pytest.FixtureRequest) -> date:
    closed = closed_days(lab[1], REGION, exclude=(eod_day(),))
    index = 5 + TESTS.index(request.node.originalname)
    if index >= len(closed) - 8:
        pytest.skip(f"the lab trades only {len(closed)} closed sessions of {REGION} now")
    return closed[index]


def run(path: Path, day: date, **kw: Any) -> RunRecord:
    return run_runbook("eod", REGION, day, estate=path, operator="amer-oncall", **kw)


def step(record: RunRecord, name: str) -> list[Outcome]:
    found = [s for s in record.steps if s.name == name]
    assert found, f"no step {name}: {[s.name for s in record.steps]}"
    return found[0].outcomes


def effect_count() -> int:
    return len(EffectsLog(LabPaths.of().effects_file).read())


def test_a_rerun_does_nothing_that_completed_and_names_the_run_that_did(
    lab: tuple[Path, Estate], day: date
) -> None:
    path, _ = lab
    first = run(path, day)
    assert first.passed, [(s.name, s.summary()) for s in first.steps if not s.passed]
    applied = effect_count()

    second = run(path, day)
    assert second.passed
    assert effect_count() == applied  # not one more cancel, logout, reset, tar or rm
    for name in SIDE_EFFECTS:
        for o in step(second, name):
            assert o.status == Status.OK
            assert o.detail.startswith(f"already done by run {first.run_id[:8]} at "), o.detail
            assert o.evidence["completed_by"] == first.run_id
    # Read-only checks are read again.
    assert step(second, "recon")[0].status == Status.OK
    assert "already done" not in step(second, "recon")[0].detail

    shown = CliRunner().invoke(
        app,
        [
            "plan",
            "eod",
            "-r",
            REGION,
            "-d",
            day.isoformat(),
            "--estate",
            str(path),
            "--as",
            "amer-lead",
        ],
    )
    assert shown.exit_code == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"re-run: a re-run skips 2 of 2 target(s), done by run {first.run_id[:8]}" in text


def test_from_step_skips_the_steps_before_and_redoes_that_one_from_its_state(
    lab: tuple[Path, Estate], day: date
) -> None:
    path, _ = lab
    assert run(path, day).passed
    applied = effect_count()

    again = run(path, day, from_step="archive")
    assert again.passed
    for name in ("day_orders", "fills_booked", "recon", "positions_rolled", "fix_eod"):
        (o,) = step(again, name)
        assert o.status == Status.SKIPPED and o.detail == "not run: restarting from archive"
    archives = step(again, "archive")
    assert archives and all(o.status == Status.OK for o in archives)
    assert all(o.detail.startswith("already archived:") for o in archives), archives
    assert step(again, "close")[0].status == Status.OK  # the close gate always runs
    assert effect_count() == applied  # re-done from its state: nothing to change

    typo = CliRunner().invoke(
        app,
        [
            "run",
            "eod",
            "-r",
            REGION,
            "-d",
            day.isoformat(),
            "--estate",
            str(path),
            *as_("amer-oncall"),
            "--from-step",
            "archve",
        ],
    )
    assert typo.exit_code == 1
    assert "unknown eod step 'archve'; valid eod steps: archive, close, day_orders" in typo.stderr


def _hold_lock(seconds: float, held: threading.Event, day: date) -> threading.Thread:
    def hold() -> None:
        with Ledger() as ledger, ledger.run_lock("eod", REGION, day):
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread


def test_a_second_run_at_once_is_refused_and_touches_nothing(
    lab: tuple[Path, Estate], day: date
) -> None:
    path, _ = lab
    before = effect_count()
    holder = _hold_lock(20, threading.Event(), day)
    refused = run(path, day)
    assert not refused.passed
    assert [s.name for s in refused.steps] == ["lock"]
    assert "another run holds the run lock" in step(refused, "lock")[0].detail
    assert effect_count() == before
    holder.join()


def test_a_second_run_waits_when_the_estate_says_so(
    lab: tuple[Path, Estate], tmp_path: Path, day: date
) -> None:
    src, _ = lab
    doc = yaml.safe_load(src.read_text())
    doc["runbooks"]["eod"] |= {"concurrent_run": "wait", "max_lock_wait_minutes": 2}
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "entitlements.yaml").write_text((src.parent / "entitlements.yaml").read_text())

    holder = _hold_lock(4, threading.Event(), day)
    waited = run(path, day)
    holder.join()
    assert waited.passed, [(s.name, s.summary()) for s in waited.steps if not s.passed]
    assert "lock" not in [s.name for s in waited.steps]


def test_a_run_that_died_is_recorded_as_interrupted_by_the_next(
    lab: tuple[Path, Estate], day: date
) -> None:
    path, _ = lab
    from openbell.tasks.ledger.runs import run_started_payload

    with Ledger() as ledger:  # what a run killed after its start leaves in the ledger
        ledger.append(
            "run_started",
            "00000000-dead-4000-8000-000000000000",
            run_started_payload(
                run_id="00000000-dead-4000-8000-000000000000",
                runbook="eod",
                region=REGION,
                trade_date=day,
                requester="amer-oncall",
                parameters={},
                flow_run_id=None,
                runbook_version=None,
                dry_run=False,
                started_at=date.today().isoformat() + "T00:00:00Z",
                calendar={},
                skipped_reason=None,
                estate_source=str(path),
            ),
        )
    assert run(path, day).passed
    with Ledger() as ledger:
        (marked,) = ledger.entries(kinds=["run_interrupted"])
    assert marked.run_id == "00000000-dead-4000-8000-000000000000"
    assert "never finished" in marked.payload["reason"]


def test_a_ledger_locked_by_another_writer_for_10_s_is_waited_for_and_nothing_is_lost(
    lab: tuple[Path, Estate], tmp_path: Path, day: date
) -> None:
    import sqlite3

    path, _ = lab
    with Ledger() as ledger:  # created (migrated) before someone else locks it
        before = ledger.count()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # e.g. the sqlite3 shell in a transaction, or a backup
        conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    record = run(path, day)
    release.set()
    holder.join()
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
    with Ledger() as ledger:
        assert ledger.verify().ok
        names = [e.payload["name"] for e in ledger.entries(run_id=record.run_id, kinds=["step"])]
        assert ledger.count() > before
    assert set(names) == {s.name for s in record.steps}
