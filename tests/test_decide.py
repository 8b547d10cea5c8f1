"""``decide()`` judges the request the approver was shown, never whatever is open now.

A decision carries the binding hash its approver saw (``openbell approve --binding``, the
value of a Slack button). When the open request is bound to anything else (the plan was
made again, a newer request replaced the one on screen), nothing is decided and the
refusal is in the ledger. Ledger only: no flow, no Prefect.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from openbell.runbooks.entitlements import entitlements_for
from openbell.runbooks.identity import decision_statement, prove
from openbell.runbooks.loader import load_estate
from openbell.tasks.approvals.gate import ApprovalError, decide, load_request
from openbell.tasks.approvals.rules import ApprovalRequest, binding_hash
from openbell.tasks.ledger import Ledger
from tests.fixtures.people import key_of

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
RUN, STEP = "run-decide-1", "apps"


def bound(*targets: str) -> str:
    params = {"region": "emea", "trade_date": date(2026, 12, 4), "dry_run": False}
    return binding_hash("1.0.0", params, list(targets))


def open_request(ledger: Ledger, estate: object, binding: str) -> ApprovalRequest:
    """An approval request as the gate records it: bob's start of day waits for emea's approvers."""
    req = ApprovalRequest.for_step(
        estate,  # type: ignore[arg-type]
        run_id=RUN,
        runbook="sod",
        region="emea",
        step=STEP,
        requester="bob",
        binding_hash=binding,
        now=datetime.now(UTC),
        ttl=timedelta(minutes=30),
    )
    payload = {"request": req.model_dump(mode="json"), "summary": "start apps", "changes": []}
    ledger.append("approval_requested", RUN, payload)
    return req


def carol_decides(ledger: Ledger, estate: object, seen: str) -> object:
    ents = entitlements_for(estate)  # type: ignore[arg-type]
    why = "checked the plan"
    statement = decision_statement(
        run_id=RUN, step=STEP, binding=seen, decision="approve", person="carol", reason=why
    )
    proof = prove(ents, claimed="carol", action="approve", key=key_of("carol"), statement=statement)
    return decide(
        ledger,
        estate,  # type: ignore[arg-type]
        ents,
        run_id=RUN,
        approver="carol",
        decision="approve",
        justification=why,
        proof=proof,
        binding_seen=seen,
        step=STEP,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as led:
        yield led  # type: ignore[misc]


def test_a_decision_on_a_request_that_was_replaced_is_refused_and_recorded(ledger: Ledger) -> None:
    estate = load_estate(LAB)
    first, second = bound("emea-oms@emea-app1"), bound("emea-oms@emea-app1", "emea-risk@emea-app1")
    open_request(ledger, estate, first)
    open_request(ledger, estate, second)  # the plan was made again: more to start
    with pytest.raises(ApprovalError, match="the plan changed since") as refused:
        carol_decides(ledger, estate, first)
    assert refused.value.refused
    assert ledger.entries(run_id=RUN, kinds=["approval_decided"]) == []
    reasons = [e.payload["reason"] for e in ledger.entries(run_id=RUN, kinds=["refusal"])]
    assert len(reasons) == 1 and f"you were shown binding {first[:12]}" in reasons[0]
    # decided on what is open now, it counts
    decided = carol_decides(ledger, estate, second)
    assert decided.verdict.status == "approved"  # type: ignore[attr-defined]
    assert load_request(ledger, RUN, STEP).decisions[0].binding_hash == second


def test_openbell_approve_with_a_binding_it_was_not_shown_decides_nothing(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from openbell.deployments.cli import app
    from tests.fixtures.people import as_

    estate = load_estate(LAB)
    open_request(ledger, estate, bound("emea-oms@emea-app1"))
    ledger.append(
        "run_started",
        RUN,
        {"runbook": "sod", "region": "emea", "trade_date": "2026-12-04", "estate_source": str(LAB)},
    )
    monkeypatch.setenv("OPENBELL_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    args = ["approve", RUN, "--step", STEP, "--reason", "looked", *as_("carol")]
    result = CliRunner().invoke(app, [*args, "--binding", "0" * 16])
    assert result.exit_code == 1, result.output
    assert "the plan changed since" in result.output
    assert ledger.entries(run_id=RUN, kinds=["approval_decided"]) == []
