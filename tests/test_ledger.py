"""The ledger on SQLite and PostgreSQL: append, verify, redaction, guards, export, runs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel, SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from openbell import secrets
from openbell.outcome import Outcome, Status
from openbell.run import LedgerAnchor, RunRecord, StepResult
from openbell.tasks.ledger import (
    GENESIS,
    CompletionKey,
    Ledger,
    LedgerError,
    NewEntry,
    RunLockedError,
    VerifyResult,
    canonical_json,
    entry_hash,
    ledger_url,
    verify_bundle,
)

if TYPE_CHECKING:
    from tests.fixtures.ledger import Attacker

# Until tests/conftest.py lists it.

CANARY = "s3cr3t+++$\\"
T0 = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def _fill(ledger: Ledger, n: int, run_id: str = "run-1") -> None:
    ledger.append_many([NewEntry("note", run_id, {"i": i, "text": f"entry {i}"}) for i in range(n)])


# ---- canonical JSON and hashes ---------------------------------------------------------


class Colour(StrEnum):
    RED = "red"


class Params(BaseModel):
    region: str
    when: datetime
    token: SecretStr


def test_canonical_json_is_stable_whatever_the_key_order_and_timezone() -> None:
    a = {
        "b": {"y": 1, "x": [1, 2.5, None]},
        "a": "é ü",
        "t": datetime(2026, 11, 27, 9, 30, tzinfo=timezone(timedelta(hours=2))),
    }
    b = {
        "t": datetime(2026, 11, 27, 7, 30, tzinfo=UTC),
        "a": "é ü",
        "b": {"x": [1, 2.5, None], "y": 1},
    }

    text_a = canonical_json(a)

    assert text_a == canonical_json(b)
    assert text_a == '{"a":"é ü","b":{"x":[1,2.5,null],"y":1},"t":"2026-11-27T07:30:00.000000Z"}'
    assert canonical_json(json.loads(text_a)) == text_a  # stable through a round trip
    assert " " not in canonical_json({"k": [1, 2]})


def test_canonical_json_knows_the_types_a_payload_carries() -> None:
    value = {
        "d": date(2026, 11, 27),
        "c": Colour.RED,
        "m": Decimal("1.10"),
        "p": Path("/var/log/oms.log"),
        "model": Params(region="emea", when=T0, token=SecretStr("hunter2")),
        "s": {"b", "a"},
    }

    assert canonical_json(value) == (
        '{"c":"red","d":"2026-11-27","m":"1.10","model":{"region":"emea","token":"***",'
        '"when":"2026-11-27T07:00:00.000000Z"},"p":"/var/log/oms.log","s":["a","b"]}'
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), b"bytes", object()])
def test_canonical_json_refuses_what_has_no_stable_form(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json({"x": bad})


def test_entry_hash_is_sha256_of_prev_hash_and_canonical_entry() -> None:
    payload = {"z": 1, "a": "é"}
    ts = "2026-11-27T07:00:00.000000Z"
    fields = {
        "seq": 7,
        "kind": "note",
        "run_id": "r1",
        "ref": None,
        "ts": ts,
        "payload": payload,
        "prev_hash": "ab" * 32,
    }
    expected = hashlib.sha256(("ab" * 32 + canonical_json(fields)).encode()).hexdigest()

    got = entry_hash("ab" * 32, 7, "note", "r1", None, ts, canonical_json(payload))

    assert got == expected


# ---- append and verify -----------------------------------------------------------------


def test_an_empty_ledger_verifies_and_its_head_is_genesis(ledger: Ledger) -> None:
    result = ledger.verify()

    assert ledger.head() == (0, GENESIS)
    assert result.ok and result.count == 0
    assert result.describe() == "OK: 0 entries (empty ledger)"


def test_appended_entries_chain_and_verify(ledger: Ledger) -> None:
    first = ledger.append("note", "run-1", {"text": "hello"})
    second = ledger.append("note", "run-1", {"text": "again"})

    result = ledger.verify()

    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert ledger.head() == (2, second.hash)
    assert result.ok and result.count == 2 and result.head_hash == second.hash
    assert result.describe() == f"OK: 2 entries, head {second.hash[:12]}…"


def test_append_many_is_consecutive_and_reads_back_equal(ledger: Ledger) -> None:
    written = ledger.append_many(
        [NewEntry("note", "r", {"i": i}) for i in range(5)] + [NewEntry("other", None, {})]
    )

    read = ledger.entries()

    assert [e.seq for e in written] == [1, 2, 3, 4, 5, 6]
    assert read == written
    assert [e.payload for e in read[:2]] == [{"i": 0}, {"i": 1}]


def test_time_never_goes_backwards_along_the_chain(ledger: Ledger) -> None:
    _fill(ledger, 50)

    stamps = [e.ts for e in ledger.entries()]

    assert stamps == sorted(stamps)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in stamps)


@pytest.mark.parametrize("kind", ["", "Run Started", "x" * 65, "drop;table"])
def test_a_malformed_kind_is_refused(ledger: Ledger, kind: str) -> None:
    with pytest.raises(LedgerError, match="kind"):
        ledger.append(kind, None, {})


def test_a_payload_that_cannot_be_canonical_is_refused_and_nothing_is_written(
    ledger: Ledger,
) -> None:
    with pytest.raises(LedgerError, match="cannot be stored"):
        ledger.append_many([NewEntry("note", None, {"ok": 1}), NewEntry("note", None, {"x": b"?"})])

    assert ledger.count() == 0


def test_entries_filter_by_run_kind_time_and_ref(ledger: Ledger) -> None:
    ledger.append("run_started", "a", {"n": 1})
    ledger.append("step", "a", {"n": 2})
    ledger.append("step", "b", {"n": 3}, ref="k1")
    now = datetime.now(UTC)

    assert [e.payload["n"] for e in ledger.entries(run_id="a")] == [1, 2]
    assert [e.payload["n"] for e in ledger.entries(kinds=["step"])] == [2, 3]
    assert [e.payload["n"] for e in ledger.entries(ref="k1")] == [3]
    assert [e.payload["n"] for e in ledger.entries(after_seq=1, limit=1)] == [2]
    assert ledger.entries(since=now + timedelta(minutes=1)) == []
    assert len(ledger.entries(since=now - timedelta(minutes=5), until=now + timedelta(1))) == 3


def test_concurrent_threads_in_one_process_never_fork(ledger: Ledger) -> None:
    def write(k: int) -> None:
        for i in range(25):
            ledger.append("note", f"t{k}", {"i": i})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    result = ledger.verify()
    got = ledger.entries()

    assert result.ok and result.count == 150
    assert len({e.prev_hash for e in got}) == 150
    assert {(e.run_id, e.payload["i"]) for e in got} == {
        (f"t{k}", i) for k in range(6) for i in range(25)
    }


# ---- secrets ---------------------------------------------------------------------------


def test_a_registered_secret_never_reaches_the_database(ledger_url: str, tmp_path: Path) -> None:
    secrets.register(CANARY)
    with Ledger(ledger_url) as ledger:
        ledger.append(
            "outcome",
            "run-1",
            {
                "detail": f"login with password={CANARY} failed",
                CANARY: "as a key",
                "nested": [{"argv": ["psql", f"postgresql://oms:{CANARY}@db/oms"]}],
                "token": SecretStr("not-a-registered-value"),
            },
        )
        bundle = ledger.export(tmp_path / "bundle.json")
        stored = [e.payload for e in ledger.entries()]
        views_text = _all_text(ledger_url)

    assert CANARY not in json.dumps(stored) and CANARY not in json.dumps(stored, ensure_ascii=False)
    assert stored[0]["detail"] == "login with password=*** failed"
    assert stored[0]["token"] == "***"
    assert CANARY not in views_text
    assert CANARY.encode() not in bundle.read_bytes()
    assert json.dumps(CANARY)[1:-1].encode() not in bundle.read_bytes()  # nor JSON-escaped
    if ledger_url.startswith("sqlite"):
        db = Path(ledger_url.removeprefix("sqlite:///"))
        for f in db.parent.glob(db.name + "*"):  # the database, its WAL and shm files
            data = f.read_bytes()
            assert CANARY.encode() not in data and b"s3cr3t" not in data, f


def _all_text(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            rows = [
                *c.execute(text("SELECT * FROM entries")),
                *c.execute(text("SELECT * FROM ledger_outcomes")),
            ]
    finally:
        engine.dispose()
    return repr(rows)


# ---- the database refuses changes ------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET payload = '{}' WHERE seq = 1",
        "UPDATE entries SET hash = hash",
        "DELETE FROM entries WHERE seq = 2",
        "DELETE FROM entries",
    ],
)
def test_the_database_refuses_updates_and_deletes(
    ledger: Ledger, ledger_url: str, statement: str
) -> None:
    _fill(ledger, 3)
    engine = create_engine(ledger_url)
    try:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(text(statement))
    finally:
        engine.dispose()

    assert ledger.verify().ok and ledger.count() == 3


@pytest.mark.integration
def test_postgresql_refuses_truncate(pg_ledger_url: str) -> None:
    with Ledger(pg_ledger_url) as ledger:
        _fill(ledger, 2)
        engine = create_engine(pg_ledger_url)
        try:
            with pytest.raises(DBAPIError, match="append-only: TRUNCATE"), engine.begin() as c:
                c.exec_driver_sql("TRUNCATE entries")
        finally:
            engine.dispose()
        assert ledger.count() == 2


def test_sqlite_ledger_runs_in_wal_with_full_sync(sqlite_ledger_url: str) -> None:
    with Ledger(sqlite_ledger_url) as ledger:
        ledger.append("note", None, {})
        with ledger._engine.connect() as c:  # the pragmas of the ledger's own connections
            sync = c.exec_driver_sql("PRAGMA synchronous").scalar()
            busy = c.exec_driver_sql("PRAGMA busy_timeout").scalar()
    path = sqlite_ledger_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]

    assert mode == "wal"
    assert sync == 2  # FULL
    assert busy == 30_000


def test_an_altered_row_fails_verify_at_that_row(ledger: Ledger, attacker: Attacker) -> None:
    _fill(ledger, 20)
    attacker.disarm()
    attacker.alter(13)

    result = ledger.verify()

    assert not result.ok
    assert (result.first_bad_seq, result.problem, result.count) == (13, "altered", 12)
    assert result.describe() == (
        "BROKEN at entry 13: altered (its content does not match its hash)"
    )


def test_reopening_migrates_nothing_and_keeps_the_chain(ledger_url: str) -> None:
    with Ledger(ledger_url) as first:
        _fill(first, 3)
    with Ledger(ledger_url) as again:
        assert again.verify().count == 3
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as c:
            version = c.exec_driver_sql("SELECT version_num FROM ledger_alembic_version").all()
    finally:
        engine.dispose()

    assert version == [("0002_approvals_view",)]


# ---- export bundles --------------------------------------------------------------------


def test_an_export_verifies_offline(ledger: Ledger, tmp_path: Path) -> None:
    _fill(ledger, 30)

    path = ledger.export(tmp_path / "all.json")
    doc = json.loads(path.read_text())
    result = verify_bundle(path)

    assert result.ok and result.count == 30
    assert doc["anchor"] == {"seq": 0, "hash": GENESIS}
    assert doc["head"] == {"seq": 30, "hash": ledger.head()[1]}
    assert "sha256" in doc["algorithm"]["entry_hash"]


def test_an_export_of_a_time_range_starts_from_the_hash_before_it(
    ledger: Ledger, tmp_path: Path
) -> None:
    _fill(ledger, 5)
    middle = datetime.now(UTC) + timedelta(microseconds=1)
    # The next entries carry a later time, whatever the clock's resolution.
    while datetime.now(UTC) <= middle:
        pass
    _fill(ledger, 4, run_id="run-2")
    fifth = ledger.entries()[4]

    path = ledger.export(tmp_path / "later.json", from_ts=middle)
    doc = json.loads(path.read_text())

    assert verify_bundle(path).ok
    assert [e["seq"] for e in doc["entries"]] == [6, 7, 8, 9]
    assert doc["anchor"] == {"seq": 5, "hash": fifth.hash}
    empty = ledger.export(tmp_path / "none.json", from_ts=middle + timedelta(days=1))
    assert verify_bundle(empty).ok and json.loads(empty.read_text())["count"] == 0


def _tamper_bundle(path: Path, change: str) -> None:
    doc = json.loads(path.read_text())
    items = doc["entries"]
    if change == "altered":
        items[3]["payload"]["text"] = "something else"
    elif change == "deleted":
        del items[3]
    elif change == "reordered":
        items[3], items[4] = items[4], items[3]
    elif change == "inserted":
        items.insert(3, dict(items[3], payload={"forged": True}))
    elif change == "truncated":
        del items[-1]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "problem", "at"),
    [
        ("altered", "altered", 4),
        ("deleted", "deleted", 4),
        ("reordered", "reordered", 4),
        ("inserted", "inserted", 4),
        ("truncated", "deleted", 10),
    ],
)
def test_a_tampered_bundle_fails_offline_at_the_change(
    sqlite_ledger_url: str, tmp_path: Path, change: str, problem: str, at: int
) -> None:
    with Ledger(sqlite_ledger_url) as ledger:
        _fill(ledger, 10)
        path = ledger.export(tmp_path / "b.json")
    _tamper_bundle(path, change)

    result = verify_bundle(path)

    assert (result.ok, result.problem, result.first_bad_seq) == (False, problem, at)


def test_something_that_is_not_a_bundle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')

    with pytest.raises(LedgerError, match="not a ledger bundle"):
        verify_bundle(path)


# ---- checkpoints -----------------------------------------------------------------------


def test_checkpoint_writes_the_head_beside_the_reports(ledger: Ledger, openbell_home: Path) -> None:
    _fill(ledger, 4)
    reports = openbell_home / "reports"
    lines_before = _lines(reports / "ledger-checkpoints.jsonl")

    cp = ledger.checkpoint()

    assert json.loads((reports / "ledger-head.json").read_text()) == cp
    assert (cp["seq"], cp["hash"]) == ledger.head()
    assert _lines(reports / "ledger-checkpoints.jsonl") == [*lines_before, cp]
    assert ledger.verify(checkpoint=reports / "ledger-head.json").ok


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_checkpoint_catches_entries_removed_from_the_end(
    ledger: Ledger, attacker: Attacker, tmp_path: Path
) -> None:
    _fill(ledger, 10)
    ledger.checkpoint(tmp_path / "head.json")
    attacker.disarm()
    attacker.delete(10)
    attacker.delete(9)

    plain = ledger.verify()
    checked = ledger.verify(checkpoint=tmp_path / "ledger-checkpoints.jsonl")

    assert plain.ok and plain.count == 8  # a walk alone cannot see it
    assert (checked.ok, checked.problem, checked.first_bad_seq) == (False, "deleted", 9)
    assert "checkpoint" in checked.detail


def test_a_checkpoint_catches_a_rewritten_last_entry(
    ledger: Ledger, attacker: Attacker, tmp_path: Path
) -> None:
    _fill(ledger, 10)
    cp = ledger.checkpoint(tmp_path / "head.json")
    attacker.disarm()
    attacker.rewrite(10)

    result = ledger.verify(checkpoint=cp)

    assert (result.problem, result.first_bad_seq) == ("altered", 10)


def test_a_file_that_is_not_a_checkpoint_is_an_error(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "cp.json").write_text('{"time": "now"}')

    with pytest.raises(LedgerError, match="not a ledger checkpoint"):
        ledger.verify(checkpoint=tmp_path / "cp.json")


# ---- runs ------------------------------------------------------------------------------


def _record() -> RunRecord:
    t = T0
    disk = StepResult(
        name="disk",
        title="Disk use under 80%",
        outcomes=[
            Outcome(
                step="disk",
                target="emea-app1",
                status=Status.OK,
                detail="42% used",
                evidence={"used_pct": 42},
                started_at=t,
                finished_at=t + timedelta(seconds=1),
            ),
            Outcome(
                step="disk",
                target="emea-app2",
                status=Status.FAILED,
                detail="91% used",
                started_at=t,
                finished_at=t + timedelta(seconds=2),
            ),
        ],
        started_at=t,
        finished_at=t + timedelta(seconds=2),
    )
    apps = StepResult(
        name="apps",
        title="Applications started",
        outcomes=[
            Outcome(
                step="apps",
                target="oms",
                status=Status.CHANGED,
                detail="started",
                started_at=t,
                finished_at=t + timedelta(seconds=5),
            )
        ],
        started_at=t + timedelta(seconds=2),
        finished_at=t + timedelta(seconds=7),
        note="in dependency order",
    )
    return RunRecord(
        run_id="4f1c2d3e-0000-4000-8000-000000000001",
        runbook="sod",
        region="emea",
        trade_date=date(2026, 11, 27),
        operator="alice",
        started_at=t,
        finished_at=t + timedelta(seconds=8),
        calendar={"XLON": {"open": "08:00", "close": "16:30", "half_day": False}},
        steps=[disk, apps],
        plan={"steps": ["disk", "apps"], "targets": 3},
        notifications=[
            {
                "ok": True,
                "kind": "summary",
                "channel": "#emea-oncall",
                "ts": "1.2",
                "thread_ts": None,
                "step": None,
                "error": None,
            }
        ],
        estate_source="runbooks/lab.yaml",
        flow_run_id="7d0e2b9c-0000-4000-8000-000000000002",
        reports={"html": "/reports/sod.html", "md": "/reports/sod.md"},
    )


def test_a_run_record_is_rebuilt_from_the_ledger_alone(ledger: Ledger, tmp_path: Path) -> None:
    record = _record()

    run_id = ledger.start_run_from_record(
        record, parameters={"region": "emea", "dry_run": False}, runbook_version="1.4.2"
    )
    ledger.record_plan(run_id, record.plan or {})
    ledger.record_step(run_id, record.steps[0])
    ledger.record_outcomes(run_id, "apps", record.steps[1].outcomes)
    ledger.record_step(run_id, record.steps[1], outcomes_recorded=True)
    ledger.record_notification(run_id, record.notifications[0])
    for fmt, path in record.reports.items():
        report = tmp_path / Path(path).name
        report.write_text(f"{fmt} report")
        ledger.record_report(run_id, fmt, path=report)
    ledger.finish_run(run_id, record.status, finished_at=record.finished_at)

    loaded = ledger.load_run(run_id)

    entries = ledger.run_entries(run_id)
    finished = entries[-1]
    expected = record.model_copy(
        update={
            "reports": {k: str(tmp_path / Path(v).name) for k, v in record.reports.items()},
            # What only the ledger knows: run_started's and run_finished's own facts, and
            # where the run sits in the chain (report entries are not counted).
            "runbook_version": "1.4.2",
            "parameters": {"region": "emea", "dry_run": False},
            "finished_status": "failed",
            "ledger_anchor": LedgerAnchor(
                first_seq=entries[0].seq,
                last_seq=finished.seq,
                last_hash=finished.hash,
                entries=len([e for e in entries if e.kind != "report"]),
                finished_seq=finished.seq,
                finished_hash=finished.hash,
            ),
        }
    )
    assert loaded == expected
    assert loaded.status == Status.FAILED
    started = ledger.run_entries(run_id)[0]
    assert started.payload["runbook_version"] == "1.4.2"
    assert started.payload["parameters"] == {"region": "emea", "dry_run": False}


def test_start_run_makes_an_id_and_records_who_asked(ledger: Ledger) -> None:
    run_id = ledger.start_run(
        runbook="eod",
        region="amer",
        trade_date=date(2026, 11, 27),
        requester="bob",
        flow_run_id=None,
        parameters=Params(region="amer", when=T0, token=SecretStr("x" * 8)),
    )

    started = ledger.run_entries(run_id)

    assert len(run_id) == 36 and [e.kind for e in started] == ["run_started"]
    assert started[0].payload["requester"] == "bob"
    assert started[0].payload["parameters"]["token"] == "***"
    assert ledger.load_run(run_id).operator == "bob"


def test_loading_an_unknown_run_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no run_started"):
        ledger.load_run("nope")


def test_evidence_and_reports_carry_the_file_sha256(ledger: Ledger, tmp_path: Path) -> None:
    evidence = tmp_path / "chrony.txt"
    evidence.write_bytes(b"Leap status : Normal\n")

    entry = ledger.record_evidence("r1", evidence, step="clock")
    remote = ledger.record_evidence("r1", "/archive/fix.tgz", sha256="ab" * 32, size=10)

    assert entry.payload == {
        "path": str(evidence),
        "name": "chrony.txt",
        "sha256": hashlib.sha256(b"Leap status : Normal\n").hexdigest(),
        "size": 21,
        "step": "clock",
    }
    assert remote.payload["sha256"] == "ab" * 32
    with pytest.raises(LedgerError, match="cannot hash"):
        ledger.record_evidence("r1", tmp_path / "missing.txt")


def test_the_views_project_entries_into_columns(ledger: Ledger, ledger_url: str) -> None:
    record = _record()
    run_id = ledger.start_run_from_record(record, runbook_version="1.4.2")
    ledger.record_step(run_id, record.steps[0])
    ledger.append(
        "approval_decided",
        run_id,
        {
            "step": "apps",
            "approver": "carol",
            "decision": "approve",
            "justification": "ok",
            "binding_hash": "cd" * 32,
            "decided_at": T0,
        },
    )
    ledger.record_refusal(
        who="mallory",
        action="approve",
        runbook="sod",
        region="emea",
        reason="not in group",
        run_id=run_id,
    )
    ledger.finish_run(run_id, "failed")
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as c:
            runs = c.execute(text("SELECT runbook, region, requester, status FROM ledger_runs"))
            outcomes = c.execute(
                text("SELECT target, status FROM ledger_outcomes ORDER BY seq")
            ).all()
            approvals = c.execute(text("SELECT approver, decision FROM ledger_approvals")).all()
            runs_rows = runs.all()
    finally:
        engine.dispose()

    assert runs_rows == [("sod", "emea", "alice", "failed")]
    assert outcomes == [("emea-app1", "ok"), ("emea-app2", "failed")]
    assert approvals == [("carol", "approve")]


def test_the_approvals_view_reads_what_the_approval_gate_writes(ledger_url: str) -> None:
    """The flows nest requests and decisions in their payloads; the view flattens them."""
    with Ledger(ledger_url) as ledger:
        ledger.append(
            "approval_requested",
            "r1",
            {
                "request": {
                    "step": "apps",
                    "requester": "carol",
                    "binding_hash": "ab" * 32,
                    "approver_group": "emea-approvers",
                    "required_approvers": 1,
                },
                "summary": "start 2 apps",
                "changes": ["start a@h"],
            },
        )
        ledger.append(
            "approval_decided",
            "r1",
            {
                "decision": {
                    "step": "apps",
                    "approver": "bob",
                    "decision": "approve",
                    "justification": "ok",
                    "binding_hash": "ab" * 32,
                },
                "via": "cli",
            },
        )
        ledger.append(
            "approval_verdict",
            "r1",
            {"step": "apps", "status": "approved", "reason": "approved by bob"},
        )
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT kind, step, requester, approver, decision, via, status "
                    "FROM ledger_approvals ORDER BY seq"
                )
            ).all()
    finally:
        engine.dispose()
    assert rows == [
        ("approval_requested", "apps", "carol", None, None, None, None),
        ("approval_decided", "apps", None, "bob", "approve", "cli", None),
        ("approval_verdict", "apps", None, None, None, None, "approved"),
    ]


def test_completion_keys_make_reruns_skip_done_work(ledger: Ledger) -> None:
    key = CompletionKey("sod", "emea", date(2026, 11, 27), "start_apps", "emea-oms1", "1.4.2")
    other = key._replace(version="1.4.3")

    assert not ledger.completed(key)
    ledger.record_completion(key, run_id="r1", detail="started")

    assert ledger.completed(key)
    assert not ledger.completed(other)
    assert key.digest() != other.digest()


def test_the_run_lock_admits_one_run_per_runbook_region_and_date(ledger_url: str) -> None:
    with Ledger(ledger_url) as one, Ledger(ledger_url) as two:
        with one.run_lock("sod", "emea", date(2026, 11, 27)):
            with (
                pytest.raises(RunLockedError, match="sod emea 2026-11-27"),
                two.run_lock("sod", "emea", date(2026, 11, 27), timeout_s=0.2),
            ):
                pass
            with two.run_lock("sod", "apac", date(2026, 11, 27)):
                pass
        with two.run_lock("sod", "emea", date(2026, 11, 27)):
            pass


# ---- configuration and describe ----------------------------------------------------------


def test_the_default_ledger_is_a_sqlite_file_under_openbell_home(
    openbell_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENBELL_LEDGER_URL", raising=False)

    assert ledger_url() == f"sqlite:///{openbell_home / 'ledger.db'}"
    with Ledger() as ledger:
        assert str(ledger) == f"sqlite:///{openbell_home / 'ledger.db'}"
    assert (openbell_home / "ledger.db").exists()


def test_openbell_ledger_url_selects_another_database(
    sqlite_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBELL_LEDGER_URL", sqlite_ledger_url)

    with Ledger() as ledger:
        assert str(ledger) == sqlite_ledger_url


def test_a_password_in_the_url_is_never_shown() -> None:
    with pytest.raises(LedgerError) as err:
        Ledger("postgresql://ledger:pa55+word$@127.0.0.1:9/none?connect_timeout=1")

    assert "pa55+word$" not in str(err.value)
    assert secrets.redact("pa55+word$") == "***"


def test_an_unsupported_database_is_refused() -> None:
    with pytest.raises(LedgerError, match="SQLite or PostgreSQL"):
        Ledger("mysql://x@localhost/ledger")


def test_describe_says_where_the_chain_broke() -> None:
    ok = VerifyResult(ok=True, count=10_000, head_seq=10_000, head_hash="1a2b3c4d5e6f7a8b" * 4)
    bad = VerifyResult(
        ok=False,
        count=4_511,
        first_bad_seq=4_512,
        problem="deleted",
        detail="entry 4,512 is missing: entry 4,513 follows entry 4,511",
    )

    assert ok.describe() == "OK: 10,000 entries, head 1a2b3c4d5e6f…"
    assert bad.describe() == (
        "BROKEN at entry 4,512: deleted (entry 4,512 is missing: entry 4,513 follows entry 4,511)"
    )
    assert bad.as_dict()["problem"] == "deleted"


def test_a_database_from_a_newer_openbell_is_refused(sqlite_ledger_url: str) -> None:
    with Ledger(sqlite_ledger_url):
        pass
    engine = create_engine(sqlite_ledger_url)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE ledger_alembic_version SET version_num = '9999_future'")
    finally:
        engine.dispose()

    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(sqlite_ledger_url)
