"""The record of one runbook run: steps, their outcomes, and the summary."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openbell.outcome import Outcome, Status, utcnow, worst


class StepResult(BaseModel):
    """One runbook step and what it found on each target."""

    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    outcomes: list[Outcome] = Field(default_factory=list)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)
    note: str = ""

    @property
    def status(self) -> Status:
        if not self.outcomes:
            return Status.SKIPPED
        return worst([o.status for o in self.outcomes])

    @property
    def passed(self) -> bool:
        return self.status.passed

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status.value] = out.get(o.status.value, 0) + 1
        return out

    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    def summary(self) -> str:
        """One line: the note, or the first problem, or the counts."""
        probs = self.problems()
        if probs:
            first = probs[0]
            more = f" (+{len(probs) - 1} more)" if len(probs) > 1 else ""
            return f"{first.target}: {first.detail}{more}"
        if self.note:
            return self.note
        changed = [o for o in self.outcomes if o.status == Status.CHANGED]
        if len(self.outcomes) == 1 or changed:
            first = (changed or self.outcomes)[0]
            more = f" (+{len(self.outcomes) - 1} more)" if len(self.outcomes) > 1 else ""
            return f"{first.target}: {first.detail}{more}"
        return ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "nothing to do"


ApprovalStatus = Literal["approved", "rejected", "pending", "expired"]


class DecisionRecord(BaseModel):
    """One answer to an approval request, as the ledger recorded it.

    Attributes:
        approver: the identity that answered.
        decision: ``approve``, ``reject`` or ``override``.
        decided_at: when.
        via: where it was given: ``cli``, ``prefect-ui`` or ``slack``.
        justification: why (required for a reject or an override).
        binding_hash: the binding the approver was shown.
        effect: ``counted`` or ``refused`` by the verdict recorded after it, ``pending``
            while no verdict has looked at it.
        why: why it was refused.
        seq: its ledger entry.
    """

    model_config = ConfigDict(frozen=True)

    approver: str
    decision: str
    decided_at: datetime
    via: str = ""
    justification: str = ""
    binding_hash: str = ""
    effect: Literal["counted", "refused", "pending"] = "pending"
    why: str = ""
    seq: int | None = None


class RefusedDecision(BaseModel):
    """A decision that does not count, and why (from the verdict)."""

    model_config = ConfigDict(frozen=True)

    approver: str
    decision: str
    why: str


class ApprovalRecord(BaseModel):
    """One approval request of a run, its decisions and its verdict.

    Attributes:
        step: the step that needed approval.
        requester: who started the run (and may not approve it).
        approver_group: the group approvers had to belong to.
        required_approvers: distinct persons needed.
        binding_hash: what the approval is bound to (runbook version, parameters,
            targets, artifact checksum).
        created_at: when the request was opened.
        expires_at: decisions after this do not count.
        emergency: an emergency change.
        summary: what will run, in one line.
        changes: each change it approves (``start emea-oms@emea-app1``).
        decisions: every answer on record, in ledger order.
        status: the last verdict's status; ``pending`` while there is none.
        counted: the persons whose approvals count.
        rejected_by: the persons whose rejects count.
        refused: the decisions that do not count, and why.
        flagged_for_review: approved by override, or an emergency change.
        reason: the verdict in one paragraph.
        resolved_at: when the wait ended: the decision that made the verdict (the
            N-th counted approval, the first counted reject), or the expiry.
        requested: False for decisions the ledger holds without any request.
        seq: the request's ledger entry.
        verdict_seq: the last verdict's ledger entry.
    """

    model_config = ConfigDict(frozen=True)

    step: str
    requester: str
    approver_group: str
    required_approvers: int
    binding_hash: str
    created_at: datetime
    expires_at: datetime
    emergency: bool = False
    summary: str = ""
    changes: list[str] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    status: ApprovalStatus = "pending"
    counted: list[str] = Field(default_factory=list)
    rejected_by: list[str] = Field(default_factory=list)
    refused: list[RefusedDecision] = Field(default_factory=list)
    flagged_for_review: bool = False
    reason: str = ""
    resolved_at: datetime | None = None
    requested: bool = True
    seq: int | None = None
    verdict_seq: int | None = None


class EvidenceRecord(BaseModel):
    """A file kept as evidence, with its checksum."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    sha256: str
    size: int | None = None
    step: str | None = None
    seq: int | None = None


class RefusalRecord(BaseModel):
    """An action refused (entitlements, approvals): who tried what, and why not."""

    model_config = ConfigDict(frozen=True)

    who: str
    action: str
    runbook: str = ""
    region: str = ""
    reason: str
    rule: str | None = None
    at: datetime | None = None
    seq: int | None = None


class LedgerAnchor(BaseModel):
    """Where a run sits in the ledger, so a reader can check a report against the chain.

    Attributes:
        first_seq: the run's first entry (its ``run_started``).
        last_seq: the last entry the report covers (report entries are not covered: a
            report cannot contain its own checksum).
        last_hash: that entry's hash; it commits to every entry before it.
        entries: how many of the run's entries the report covers.
        finished_seq: the run's ``run_finished`` entry, if it has one.
        finished_hash: that entry's hash.
    """

    model_config = ConfigDict(frozen=True)

    first_seq: int
    last_seq: int
    last_hash: str
    entries: int
    finished_seq: int | None = None
    finished_hash: str | None = None


class RunRecord(BaseModel):
    """Everything a report needs about one run.

    The fields after ``reports`` are filled when the record is rebuilt from the ledger
    (``tasks.ledger.runs.run_record``); a record built in a flow leaves them empty.
    """

    run_id: str
    runbook: str
    region: str
    trade_date: date
    dry_run: bool = False
    operator: str
    #: How the requester was proven (an identity Proof as JSON; method ``none`` for a
    #: flow run started through Prefect, whose operator parameter is only a claim).
    requester_proof: dict[str, Any] | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    calendar: dict[str, Any] = Field(default_factory=dict)
    skipped_reason: str | None = None
    steps: list[StepResult] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = Field(default_factory=list)
    estate_source: str | None = None
    flow_run_id: str | None = None
    reports: dict[str, str] = Field(default_factory=dict)
    runbook_version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    finished_status: str | None = None
    finished_summary: str = ""
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    evidence: list[EvidenceRecord] = Field(default_factory=list)
    refusals: list[RefusalRecord] = Field(default_factory=list)
    ledger_anchor: LedgerAnchor | None = None

    @property
    def status(self) -> Status:
        if self.skipped_reason:
            return Status.SKIPPED
        statuses = [s.status for s in self.steps]
        return worst(statuses) if statuses else Status.SKIPPED

    @property
    def passed(self) -> bool:
        return self.status.passed

    @property
    def requested_by(self) -> str:
        """Who asked for the run and how that was proven, for reports."""
        if not self.requester_proof:
            return f"{self.operator} (how this was proven is not recorded)"
        from openbell.runbooks.identity import Proof

        try:
            return Proof.model_validate(self.requester_proof).describe()
        except ValueError:
            return f"{self.operator} (proof not readable)"

    @property
    def title(self) -> str:
        from openbell import catalog

        name = catalog.title(self.runbook)
        return f"{name[:1].upper()}{name[1:]} {self.region.upper()} {self.trade_date}"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            for k, v in s.counts().items():
                out[k] = out.get(k, 0) + v
        return out
