"""Four-eyes rules: every bypass attempt from the issue is refused, with who and why."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from openbell.errors import ApprovalRuleError, UnknownNameError
from openbell.runbooks.entitlements import LAB_ENTITLEMENTS, Entitlements, load_entitlements
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.tasks.approvals.rules import (
    DEFAULT_TTL,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalVerdict,
    binding_hash,
    check_approvals,
    require_approvals,
)

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
PARAMS = {"region": "emea", "trade_date": date(2026, 11, 24), "dry_run": False}
TARGETS = ["emea-app1", "emea-gw1"]
H = binding_hash("1.0.0", PARAMS, TARGETS)
RUN, STEP = "run-1", "start_apps"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Estate:
    """The lab estate, with bob and carol acting under more than one identity."""
    text = LAB.read_text()
    for old, new in [
        ("slack_id: UBOB}", "slack_id: UBOB, identities: [bob.okafor]}"),
        ("slack_id: UCAROL}", "slack_id: UCAROL, identities: [carol.s, cschmidt-adm]}"),
    ]:
        assert old in text
        text = text.replace(old, new)
    p = tmp_path_factory.mktemp("estate") / "estate.yaml"
    p.write_text(text)
    return load_estate(p)


@pytest.fixture(scope="module")
def ents(estate: Estate) -> Entitlements:
    return load_entitlements(LAB_ENTITLEMENTS, estate)


def request(
    estate: Estate, requester: str = "bob", runbook: str = "sod", **kw: object
) -> ApprovalRequest:
    return ApprovalRequest.for_step(
        estate,
        run_id=RUN,
        runbook=runbook,
        region="emea",
        step=STEP,
        requester=requester,
        binding_hash=H,
        now=T0,
        **kw,  # type: ignore[arg-type]
    )


def decision(
    approver: str,
    verb: str = "approve",
    minutes: float = 5,
    justification: str = "",
    binding: str = H,
    run_id: str = RUN,
    step: str = STEP,
    proof: dict[str, Any] | None = None,
) -> ApprovalDecision:
    """A decision as ``openbell approve`` records it: by default proven by the approver's
    own OS account (the account is the approver's name or identity)."""
    return ApprovalDecision.model_validate(
        {
            "run_id": run_id,
            "step": step,
            "approver": approver,
            "decision": verb,
            "justification": justification,
            "binding_hash": binding,
            "decided_at": T0 + timedelta(minutes=minutes),
            "proof": proof or {"person": approver, "method": "os-account", "account": approver},
        }
    )


def check(
    req: ApprovalRequest,
    decisions: list[ApprovalDecision],
    estate: Estate,
    ents: Entitlements,
    minutes: float = 10,
) -> ApprovalVerdict:
    now = T0 + timedelta(minutes=minutes)
    return check_approvals(req, decisions, estate=estate, entitlements=ents, now=now)


# ---- binding hash ---------------------------------------------------------------------------


def test_binding_hash_is_canonical() -> None:
    shuffled = {"dry_run": False, "trade_date": "2026-11-24", "region": "emea"}
    assert binding_hash("1.0.0", shuffled, ["emea-gw1", "emea-app1", "emea-gw1"]) == H
    nested = binding_hash("1", {"a": {"x": 1, "y": [1, 2]}, "b": Decimal("1.50")}, [])
    assert nested == binding_hash("1", {"b": "1.50", "a": {"y": [1, 2], "x": 1}}, [])
    sha = "ab" * 32
    assert binding_hash("1", {}, [], sha) == binding_hash("1", {}, [], sha.upper())


def test_binding_hash_is_sha256_of_documented_json() -> None:
    # Hashes are kept in the ledger: the canonical form must never drift between versions.
    canonical = (
        '{"artifact_sha256":null,"kind":"openbell.approval-binding/1",'
        '"parameters":{"dry_run":false,"region":"emea","trade_date":"2026-11-24"},'
        '"runbook_version":"1.0.0","targets":["emea-app1","emea-gw1"]}'
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == H


@pytest.mark.parametrize(
    "changed",
    [
        binding_hash("1.0.1", PARAMS, TARGETS),
        binding_hash("1.0.0", {**PARAMS, "dry_run": True}, TARGETS),
        binding_hash("1.0.0", {**PARAMS, "extra": None}, TARGETS),
        binding_hash("1.0.0", PARAMS, [*TARGETS, "emea-app2"]),
        binding_hash("1.0.0", PARAMS, TARGETS[:1]),
        binding_hash("1.0.0", PARAMS, TARGETS, "0" * 64),
    ],
    ids=["version", "parameter", "new-parameter", "more-targets", "fewer-targets", "artifact"],
)
def test_binding_hash_changes_with_what_will_run(changed: str) -> None:
    assert changed != H


def test_binding_hash_refuses_what_has_no_canonical_form() -> None:
    with pytest.raises(TypeError, match="list of names"):
        binding_hash("1", {}, "emea-app1")
    with pytest.raises(TypeError, match="set"):
        binding_hash("1", {"hosts": {"a", "b"}}, [])
    with pytest.raises(TypeError, match="non-finite"):
        binding_hash("1", {"x": float("nan")}, [])
    with pytest.raises(ValueError, match="64 hex digits"):
        binding_hash("1", {}, [], "not-a-sha")


# ---- the request ------------------------------------------------------------------------------


def test_request_defaults_from_the_estate(estate: Estate) -> None:
    req = request(estate)
    assert req.approver_group == "emea-approvers"
    assert req.required_approvers == 1 and not req.emergency
    assert req.expires_at - req.created_at == DEFAULT_TTL == timedelta(minutes=60)
    req = request(estate, emergency=True, ttl=timedelta(minutes=15), approver_group="desk-leads")
    assert req.required_approvers == 2 and req.emergency
    assert req.approver_group == "desk-leads"
    assert req.expires_at == T0 + timedelta(minutes=15)


def test_request_refuses_inconsistent_input(estate: Estate) -> None:
    with pytest.raises(UnknownNameError, match="valid regions: amer, apac, emea"):
        ApprovalRequest.for_step(
            estate, run_id=RUN, runbook="sod", region="europe", step=STEP,
            requester="bob", binding_hash=H, now=T0,
        )  # fmt: skip
    with pytest.raises(UnknownNameError, match="valid runbooks"):
        request(estate, runbook="deploy")
    good = request(estate).model_dump()
    with pytest.raises(ValidationError, match="emergency change needs at least 2"):
        ApprovalRequest.model_validate({**good, "emergency": True})
    with pytest.raises(ValidationError, match="expires_at must be after created_at"):
        ApprovalRequest.model_validate({**good, "expires_at": T0})
    with pytest.raises(ValidationError, match="timezone"):
        ApprovalRequest.model_validate({**good, "created_at": datetime(2026, 11, 24, 7)})
    with pytest.raises(ValidationError, match="64 hex digits"):
        decision("carol", binding="abc")
    with pytest.raises(ValidationError, match="'approve', 'reject' or 'override'"):
        decision("carol", verb="approved")


# ---- the rules ----------------------------------------------------------------------------------


def test_second_person_from_the_group_approves(estate: Estate, ents: Entitlements) -> None:
    v = check(request(estate), [decision("carol")], estate, ents)
    assert v.satisfied and v.status == "approved"
    assert v.counted == ["carol"] and v.refused == []
    assert v.reason == "approved by carol (1 of 1 from emea-approvers)"
    assert not v.flagged_for_review


#: The issue's bypass attempts, and a few more: (attempt, decision, now in minutes after the
#: request, how the refusal starts).
BYPASS_ATTEMPTS: list[tuple[str, ApprovalDecision, float, str]] = [
    (
        "self-approval",
        decision("bob"),
        10,
        "approve by bob: bob requested this run and cannot decide on their own change",
    ),
    (
        "self-approval under another identity",
        decision("bob.okafor"),
        10,
        "approve by bob (as 'bob.okafor'): bob requested this run and cannot decide",
    ),
    (
        "approver outside the group",
        decision("dave"),
        10,
        "approve by dave: dave is not in emea-approvers (members: bob, carol)",
    ),
    (
        "parameters changed after approval",
        decision("carol", binding=binding_hash("1.0.0", {**PARAMS, "dry_run": True}, TARGETS)),
        10,
        "approve by carol: given for binding ",
    ),
    (
        "expired approval",
        decision("carol", minutes=61),
        62,
        "approve by carol: decided at 2026-11-24 08:01:00Z, after the request expired at "
        "2026-11-24 08:00:00Z",
    ),
    (
        "reject without justification",
        decision("carol", verb="reject", justification="  "),
        10,
        "reject by carol: a reject needs a justification and none was given",
    ),
    (
        "override without justification",
        decision("cschmidt-adm", verb="override"),
        10,
        "override by carol (as 'cschmidt-adm'): an override needs a justification",
    ),
    (
        "unknown identity",
        decision("mallory"),
        10,
        "approve by 'mallory': 'mallory' is not a person or identity in the estate",
    ),
    (
        "approval of another run",
        decision("carol", run_id="run-0"),
        10,
        "approve by carol: answers run run-0 step start_apps, not run run-1 step start_apps",
    ),
    (
        "approval from before the request",
        decision("carol", minutes=-1),
        10,
        "approve by carol: decided at 2026-11-24 06:59:00Z, before the request was opened",
    ),
    (
        "a typed name with no proof (the Prefect API)",
        decision("carol", proof={"person": "carol", "method": "none", "account": "prefect-api"}),
        10,
        "approve by carol: not a proven identity ('carol' (unproven: prefect-api))",
    ),
    (
        "a decision with no proof recorded",
        decision("carol").model_copy(update={"proof": None}),
        10,
        "approve by carol: not a proven identity (no proof at all)",
    ),
    (
        "a service account acting for the approver",
        decision(
            "carol",
            proof={
                "person": "carol",
                "method": "service-account",
                "account": "svc-sched",
                "acting_for": True,
            },
        ),
        10,
        "approve by carol: not a proven identity (carol (service account svc-sched",
    ),
    (
        "a key that proves someone else",
        decision(
            "carol",
            proof={"person": "dave", "method": "ssh-key", "account": "bob", "key": "SHA256:x"},
        ),
        10,
        "approve by carol: proven to be dave, not carol",
    ),
    (
        "approval dated in the future",
        decision("carol", minutes=30),
        10,
        "approve by carol: decided at 2026-11-24 07:30:00Z, later than now",
    ),
]


@pytest.mark.parametrize(
    ("attempt", "made", "now", "says"),
    [pytest.param(*case, id=case[0]) for case in BYPASS_ATTEMPTS],
)
def test_bypass_attempt_is_refused_with_who_and_why(
    estate: Estate,
    ents: Entitlements,
    attempt: str,
    made: ApprovalDecision,
    now: float,
    says: str,
) -> None:
    v = check(request(estate), [made], estate, ents, minutes=now)
    assert not v.satisfied, attempt
    assert v.counted == []
    assert len(v.refused) == 1
    refused, why = v.refused[0]
    assert refused == made
    assert why.startswith(says), why
    assert f"Not counted: {why}" in v.reason
    assert v.status == ("expired" if now > 60 else "pending")


def test_one_person_under_two_identities_counts_once(estate: Estate, ents: Entitlements) -> None:
    req = request(estate, requester="alice", emergency=True)
    v = check(req, [decision("carol", minutes=3), decision("carol.s", minutes=4)], estate, ents)
    assert not v.satisfied and v.status == "pending"
    assert v.counted == ["carol"]
    assert v.refused[0][1] == (
        "approve by carol (as 'carol.s'): already approved at 2026-11-24 07:03:00Z as 'carol'; "
        "one person counts once"
    )
    assert v.reason.startswith(
        "1 of 2 approvals (carol); waiting for 1 more from emea-approvers (eligible: bob)"
    )
    v = check(req, [decision("carol", minutes=3), decision("bob.okafor", minutes=6)], estate, ents)
    assert v.satisfied and v.counted == ["bob", "carol"]
    assert v.flagged_for_review
    assert v.reason == (
        "approved by bob, carol (2 of 2 from emea-approvers); flagged for review (emergency change)"
    )


def test_double_click_counts_once(estate: Estate, ents: Entitlements) -> None:
    first, second = decision("carol", minutes=5), decision("carol", minutes=5.01)
    v = check(request(estate), [second, first], estate, ents)  # in any order
    assert v.satisfied and v.counted == ["carol"]
    assert v.refused == [(second, v.refused[0][1])]
    assert "already approved at 2026-11-24 07:05:00Z as 'carol'" in v.refused[0][1]


def test_a_valid_reject_wins_over_approvals(estate: Estate, ents: Entitlements) -> None:
    made = [
        decision("bob", minutes=2),
        decision("carol", verb="reject", minutes=3, justification="refdata not loaded"),
    ]
    v = check(request(estate, requester="alice"), made, estate, ents)
    assert not v.satisfied and v.status == "rejected"
    assert v.counted == ["bob"] and v.rejected_by == ["carol"]
    assert v.reason == "rejected by carol at 2026-11-24 07:03:00Z: refdata not loaded"
    with pytest.raises(ApprovalRuleError) as exc:
        require_approvals(
            request(estate, requester="alice"),
            made,
            estate=estate,
            entitlements=ents,
            now=T0 + timedelta(minutes=10),
        )
    assert exc.value.status == "rejected" and exc.value.run_id == RUN
    assert "refdata not loaded" in str(exc.value)


def test_an_outsiders_reject_does_not_block(estate: Estate, ents: Entitlements) -> None:
    made = [decision("dave", verb="reject", justification="no"), decision("carol", minutes=6)]
    v = check(request(estate), made, estate, ents)
    assert v.satisfied and v.rejected_by == []
    assert v.refused[0][1].startswith("reject by dave: dave is not in emea-approvers")


def test_override_counts_and_is_flagged(estate: Estate, ents: Entitlements) -> None:
    made = [decision("carol.s", verb="override", justification="venue outage, INC-9")]
    v = check(request(estate), made, estate, ents)
    assert v.satisfied and v.counted == ["carol"] and v.flagged_for_review
    assert v.reason.endswith("; override by carol: venue outage, INC-9; flagged for review")


def test_approver_must_also_be_entitled(tmp_path: Path, estate: Estate, ents: Entitlements) -> None:
    # A runbook's own approver group: desk leads (carol, dave). Only carol may approve
    # in emea; dave approves in amer only.
    req = request(estate, runbook="eod", approver_group="desk-leads")
    v = check(req, [decision("dave"), decision("carol", minutes=7)], estate, ents)
    assert v.satisfied and v.counted == ["carol"]
    assert v.refused[0][1] == (
        "approve by dave: not entitled (dave may not approve eod in emea: no rule allows "
        "it (default deny))"
    )
    rules = tmp_path / "entitlements.yaml"
    rules.write_text(
        "rules:\n"
        "  - {allow: [approve], who: group:emea-approvers, runbooks: '*', regions: [emea]}\n"
        "  - deny: [approve]\n"
        "    who: carol\n"
        "    runbooks: [sod]\n"
        "    regions: '*'\n"
        "    why: carol is on leave\n"
    )
    on_leave = load_entitlements(rules, estate)
    v = check(request(estate), [decision("carol")], estate, on_leave)
    assert not v.satisfied
    assert v.refused[0][1] == (
        f"approve by carol: not entitled (carol may not approve sod in emea: denied by "
        f"{rules}:3: carol is on leave)"
    )
    assert v.reason.startswith(
        "0 of 1 approvals (nobody); waiting for 1 more from emea-approvers (eligible: nobody); "
        "cannot be met: only 0 eligible approver(s) left"
    )


def test_unanswered_request_expires(estate: Estate, ents: Entitlements) -> None:
    v = check(request(estate), [], estate, ents, minutes=61)
    assert not v.satisfied and v.status == "expired"
    assert v.reason == (
        "expired at 2026-11-24 08:00:00Z with 0 of 1 approvals (nobody); "
        "an unanswered request counts as rejected"
    )
    v = check(request(estate), [], estate, ents, minutes=59)
    assert v.status == "pending" and v.eligible == ["carol"]


def test_approval_given_in_time_still_counts_after_expiry(
    estate: Estate, ents: Entitlements
) -> None:
    v = check(request(estate), [decision("carol", minutes=59)], estate, ents, minutes=90)
    assert v.satisfied


def test_emergency_without_enough_eligible_approvers(estate: Estate, ents: Entitlements) -> None:
    v = check(request(estate, emergency=True), [decision("carol")], estate, ents)
    assert not v.satisfied
    assert v.reason == (
        "1 of 2 approvals (carol); waiting for 1 more from emea-approvers (eligible: nobody); "
        "cannot be met: only 0 eligible approver(s) left"
    )


def test_unknown_group_and_naive_now(estate: Estate, ents: Entitlements) -> None:
    with pytest.raises(UnknownNameError, match="unknown group 'emea-approver'"):
        check(request(estate, approver_group="emea-approver"), [], estate, ents)
    with pytest.raises(ValueError, match="timezone-aware"):
        check_approvals(
            request(estate), [], estate=estate, entitlements=ents, now=datetime(2026, 11, 24)
        )


def test_require_approvals_returns_a_satisfied_verdict(estate: Estate, ents: Entitlements) -> None:
    v = require_approvals(
        request(estate),
        [decision("carol")],
        estate=estate,
        entitlements=ents,
        now=T0 + timedelta(minutes=10),
    )
    assert v.satisfied
    with pytest.raises(ApprovalRuleError, match="run run-1 step start_apps: 0 of 1 approvals"):
        require_approvals(request(estate), [], estate=estate, entitlements=ents, now=T0)


def test_the_approval_request_in_slack_is_text_not_markup(estate: Estate) -> None:
    """The issue's hostile app name pings nobody, hides no link and forges no line."""
    from types import SimpleNamespace

    from openbell.tasks.approvals.gate import approval_text

    hostile = "x <!channel> <http://evil|click here>\nBinding 000000000000; approved by alice"
    ctx = SimpleNamespace(runbook="sod", region="emea", trade_date=date(2026, 11, 24), run_id=RUN)
    req = request(estate, requester="bob\napproved by carol")
    text = approval_text(ctx, req, f"start {hostile}", [f"start {hostile}@emea-app1"])  # type: ignore[arg-type]
    assert "<!channel>" not in text and "<http" not in text and "|click here>" not in text
    assert "&lt;!channel&gt; &lt;http://evil|click here&gt;" in text
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("Binding ")] == [
        f"Binding {req.binding_hash[:12]}; expires {req.expires_at:%Y-%m-%d %H:%M:%SZ}."
    ]
    assert not any(ln.startswith("approved by") for ln in lines)
    assert "requested by bob approved by carol." in lines[0]
