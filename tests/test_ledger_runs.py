"""A run rebuilt from the ledger alone: approvals, evidence, refusals, its place in the chain.

Every test writes entries exactly as the flows do (``Ledger.append`` with the payloads of
``tasks.ledger.runs``) and reads them back with ``Ledger.load_run`` and ``find_runs``, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from openbell.outcome import Status
from openbell.runbooks.identity import Proof
from openbell.tasks.approvals.rules import ApprovalDecision, ApprovalRequest
from openbell.tasks.ledger import Ledger
from tests.fixtures.report_sample import DAY, at, record_sample_run, record_simple_run

H1, H2 = "1" * 64, "2" * 64


def test_an_approval_is_rebuilt_with_its_decisions_and_verdict(
    ledger: Ledger, tmp_path: Path
) -> None:
    run_id = record_sample_run(ledger, tmp_path)

    (approval,) = ledger.load_run(run_id).approvals

    assert (approval.step, approval.requester, approval.approver_group) == (
        "apps",
        "bob",
        "emea-approvers",
    )
    assert approval.required_approvers == 1 and len(approval.binding_hash) == 64
    assert approval.changes == ["start emea-oms@emea-app1", "start emea-gw@emea-gw1"]
    bob, carol = approval.decisions
    assert (bob.approver, bob.via, bob.effect) == ("bob", "cli", "refused")
    assert "cannot decide on their own change" in bob.why
    assert (carol.approver, carol.via, carol.effect, carol.why) == (
        "carol",
        "prefect-ui",
        "counted",
        "",
    )
    assert carol.justification == "release notes checked; ticket CHG-1234"
    assert approval.status == "approved" and approval.counted == ["carol"]
    assert approval.reason.startswith("approved by carol (1 of 1 from emea-approvers)")
    # The wait ends when the approval that satisfied the rules was given.
    assert approval.resolved_at == carol.decided_at == at(262)
    assert approval.created_at == at(40)
    assert approval.seq is not None and approval.verdict_seq is not None
    assert approval.seq < carol.seq < approval.verdict_seq  # type: ignore[operator]


def test_evidence_refusals_and_the_run_finished_facts_are_rebuilt(
    ledger: Ledger, tmp_path: Path
) -> None:
    run_id = record_sample_run(ledger, tmp_path)

    record = ledger.load_run(run_id)

    (evidence,) = record.evidence
    content = (tmp_path / "emea-oms-start.log").read_bytes()
    assert evidence.sha256 == hashlib.sha256(content).hexdigest()
    assert (evidence.name, evidence.step, evidence.size) == ("emea-oms start log", "apps", 26)
    assert [(r.who, r.action, r.region) for r in record.refusals] == [
        ("bob", "approve", "emea"),  # his self-approval, as the approval gate records it
        ("erin", "cancel", "emea"),
    ]
    assert all(r.at is not None and r.seq is not None for r in record.refusals)
    assert record.finished_status == "failed" and record.finished_summary == "1 failed, 1 unknown"
    assert record.runbook_version == "1.4.2"
    assert record.parameters["trade_date"] == "2026-11-24"
    assert [s.status for s in record.steps] == [
        Status.OK,
        Status.CHANGED,
        Status.UNKNOWN,
        Status.FAILED,
        Status.SKIPPED,
    ]


def test_the_anchor_is_the_run_finished_entry_and_ignores_later_report_entries(
    ledger: Ledger, tmp_path: Path
) -> None:
    ledger.append("note", None, {"text": "someone else's entry first"})
    run_id = record_sample_run(ledger, tmp_path)
    entries = ledger.run_entries(run_id)
    finished = entries[-1]

    anchor = ledger.load_run(run_id).ledger_anchor
    report = tmp_path / "r.html"
    report.write_text("<p>report</p>")
    ledger.record_report(run_id, "html", report)

    assert anchor is not None
    assert (anchor.first_seq, anchor.last_seq, anchor.entries) == (2, finished.seq, len(entries))
    assert anchor.finished_seq == finished.seq and finished.kind == "run_finished"
    assert anchor.finished_hash == anchor.last_hash == finished.hash
    assert ledger.load_run(run_id).ledger_anchor == anchor


def _request(run_id: str, binding: str, opened: float) -> dict[str, Any]:
    req = ApprovalRequest(
        run_id=run_id,
        runbook="sod",
        region="emea",
        step="apps",
        requester="bob",
        approver_group="emea-approvers",
        binding_hash=binding,
        created_at=at(opened),
        expires_at=at(opened + 60),
    )
    return {"request": req.model_dump(mode="json"), "summary": "", "changes": []}


def _decision(run_id: str, who: str, verb: str, binding: str, when: float) -> dict[str, Any]:
    d = ApprovalDecision(
        run_id=run_id,
        step="apps",
        approver=who,
        decision=verb,  # type: ignore[arg-type]
        justification="because" if verb != "approve" else "",
        binding_hash=binding,
        decided_at=at(when),
        proof=Proof(person=who, method="os-account", account=who),
    )
    return {"decision": d.model_dump(mode="json"), "via": "cli"}


def _verdict(binding: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "step": "apps",
        "binding_hash": binding,
        "status": status,
        "counted": [],
        "rejected_by": [],
        "refused": [],
        "flagged_for_review": False,
        "reason": status,
        **extra,
    }


def test_a_reopened_request_gets_the_later_decisions_and_its_own_verdict(
    ledger: Ledger,
) -> None:
    run_id = ledger.start_run(
        runbook="sod", region="emea", trade_date=DAY, requester="bob", started_at=at(0)
    )
    ledger.append("approval_requested", run_id, _request(run_id, H1, 10))
    ledger.append("approval_verdict", run_id, _verdict(H1, "expired"))
    # The parameters changed: a new request, a new binding.
    ledger.append("approval_requested", run_id, _request(run_id, H2, 100))
    ledger.append("approval_decided", run_id, _decision(run_id, "carol", "override", H2, 110))
    ledger.append(
        "approval_verdict",
        run_id,
        _verdict(H2, "approved", counted=["carol"], flagged_for_review=True),
    )

    first, second = ledger.load_run(run_id).approvals

    assert (first.binding_hash, first.status, first.decisions) == (H1, "expired", [])
    assert first.resolved_at == first.expires_at == at(70)
    assert second.binding_hash == H2 and second.status == "approved"
    assert [(d.approver, d.decision, d.effect) for d in second.decisions] == [
        ("carol", "override", "counted")
    ]
    assert second.flagged_for_review and second.resolved_at == at(110)


def test_a_decision_with_no_request_is_kept_not_dropped(ledger: Ledger) -> None:
    run_id = ledger.start_run(
        runbook="sod", region="emea", trade_date=DAY, requester="bob", started_at=at(0)
    )
    ledger.append("approval_decided", run_id, _decision(run_id, "carol", "approve", H1, 5))

    (orphan,) = ledger.load_run(run_id).approvals

    assert not orphan.requested and orphan.status == "pending"
    assert [(d.approver, d.effect) for d in orphan.decisions] == [("carol", "pending")]


def test_find_runs_selects_by_region_trade_date_and_runbook(ledger: Ledger) -> None:
    other_day = DAY + timedelta(days=1)
    record_simple_run(ledger, region="emea", day=DAY, run_id="e1", status=Status.OK)
    record_simple_run(ledger, region="amer", day=DAY, run_id="a1", status=Status.OK)
    record_simple_run(ledger, region="emea", day=other_day, run_id="e2", status=Status.OK)
    # A run elsewhere whose parameters mention emea and the day must not match.
    ledger.start_run(
        runbook="eod",
        region="apac",
        trade_date=date(2026, 11, 25),
        requester="frank",
        parameters={"region": "emea", "trade_date": "2026-11-24"},
        run_id="p1",
    )
    record_simple_run(ledger, region="emea", day=DAY, run_id="e3", status=Status.FAILED)

    def ids(**kw: Any) -> list[str | None]:
        return [e.run_id for e in ledger.find_runs(**kw)]

    assert ids(region="emea", trade_date=DAY) == ["e1", "e3"]
    assert ids(region="EMEA", trade_date=DAY) == ["e1", "e3"]
    assert ids(region="emea") == ["e1", "e2", "e3"]
    assert ids(trade_date=DAY) == ["e1", "a1", "e3"]
    assert ids(runbook="eod") == ["p1"]
    assert ids(region="emea", trade_date=DAY, runbook="eod") == []
    assert ids() == ["e1", "a1", "e2", "p1", "e3"]
