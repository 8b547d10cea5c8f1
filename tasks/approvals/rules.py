"""Four-eyes approval rules: do these decisions approve this step? Pure functions, no I/O.

A step that needs approval opens an :class:`ApprovalRequest`; people answer with
:class:`ApprovalDecision` s; :func:`check_approvals` says whether the decisions on record
satisfy the rules, which ones count, and why each of the others does not:

* The requester never decides on their own run: not as themselves, not under another of
  their identities (``Person.identities``).
* An approver must be in the request's approver group (the region's ``approver_group``
  unless the runbook names another) **and** entitled to ``approve`` that runbook in that
  region (``runbooks/entitlements.yaml``).
* ``required_approvers`` distinct **persons** must approve (an emergency change needs two);
  two identities of one person, or a double click, count once.
* A decision counts only for the binding it was given for: :func:`binding_hash` over the
  runbook version, parameters, targets and artifact checksum. Change any of them after the
  approval and the approval no longer counts.
* A decision counts only between the request's ``created_at`` and ``expires_at`` (default
  60 minutes after it) and not later than ``now``. An unanswered request that has expired
  is ``expired``, which a flow treats as rejected.
* A reject or an override needs a non-empty justification, else it is refused. An
  override counts as an approval and flags the change for review.
* Any reject that counts makes the verdict ``rejected``, whatever else was approved.

Who wires this into a flow: record the request and the decisions in the ledger, then call
:func:`check_approvals` (or :func:`require_approvals` after resuming from a pause) with the
decisions read back from the ledger, so that resuming a run through Prefect's API cannot
bypass the rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, model_validator

from openbell import catalog
from openbell.errors import ApprovalRuleError, UnknownNameError
from openbell.runbooks.entitlements import Entitlements, identity_index
from openbell.runbooks.identity import Proof
from openbell.runbooks.schema import Estate, Model

#: How long a request stays open unless the caller says otherwise.
DEFAULT_TTL = timedelta(minutes=60)
#: Distinct approvers an emergency change needs, at least.
EMERGENCY_APPROVERS = 2

Verb = Literal["approve", "reject", "override"]
Status = Literal["approved", "rejected", "pending", "expired"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256_hex(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256.fullmatch(value):
        raise ValueError(f"expected a sha256 as 64 hex digits, got {value!r}")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256_hex)]


class ApprovalRequest(Model):
    """A step waiting for approval. Build one with :meth:`for_step`.

    Attributes:
        run_id: the run (e.g. its Prefect flow-run id).
        runbook: e.g. ``sod``.
        region: e.g. ``emea``.
        step: the step that needs approval.
        requester: the identity that started the run.
        required_approvers: distinct persons needed (at least 2 for an emergency change).
        approver_group: the group approvers must belong to.
        binding_hash: :func:`binding_hash` of what will run.
        created_at: when the request was opened (timezone-aware).
        expires_at: decisions after this do not count.
        emergency: an emergency change (flagged for review).
    """

    run_id: str = Field(min_length=1)
    runbook: str = Field(min_length=1)
    region: str = Field(min_length=1)
    step: str = Field(min_length=1)
    requester: str = Field(min_length=1)
    required_approvers: int = Field(default=1, ge=1)
    approver_group: str = Field(min_length=1)
    binding_hash: Sha256
    created_at: AwareDatetime
    expires_at: AwareDatetime
    emergency: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ApprovalRequest:
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.emergency and self.required_approvers < EMERGENCY_APPROVERS:
            raise ValueError(
                f"an emergency change needs at least {EMERGENCY_APPROVERS} approvers, "
                f"not {self.required_approvers}"
            )
        return self

    @classmethod
    def for_step(
        cls,
        estate: Estate,
        *,
        run_id: str,
        runbook: str,
        region: str,
        step: str,
        requester: str,
        binding_hash: str,
        now: datetime,
        required_approvers: int = 1,
        emergency: bool = False,
        approver_group: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
    ) -> ApprovalRequest:
        """Open a request with the estate's defaults.

        Args:
            estate: gives the region's approver group.
            run_id: the run.
            runbook: a runbook key (``sod``, ``eod``...).
            region: a region of the estate.
            step: the step that needs approval.
            requester: the identity that started the run.
            binding_hash: :func:`binding_hash` of what will run.
            now: when the request opens (timezone-aware).
            required_approvers: distinct persons needed; raised to 2 for an emergency.
            emergency: an emergency change.
            approver_group: the runbook's own approver group, if it names one.
            ttl: how long the request stays open.

        Raises:
            UnknownNameError: unknown runbook or region.

        Example:
            >>> req = ApprovalRequest.for_step(  # doctest: +SKIP
            ...     estate, run_id="r1", runbook="sod", region="emea", step="start_apps",
            ...     requester="bob", binding_hash=h, now=now)
            >>> req.approver_group, req.expires_at - req.created_at  # doctest: +SKIP
            ('emea-approvers', datetime.timedelta(seconds=3600))
        """
        if runbook not in catalog.runbooks():
            raise UnknownNameError("runbook", runbook, catalog.names())
        key = region.lower()
        group = approver_group or estate.region(key).approver_group
        required = max(required_approvers, EMERGENCY_APPROVERS) if emergency else required_approvers
        return cls(
            run_id=run_id,
            runbook=runbook,
            region=key,
            step=step,
            requester=requester,
            required_approvers=required,
            approver_group=group,
            binding_hash=binding_hash,
            created_at=now,
            expires_at=now + ttl,
            emergency=emergency,
        )


class ApprovalDecision(Model):
    """One person's answer to a request.

    Attributes:
        run_id: the run it answers.
        step: the step it answers.
        approver: the identity that answered.
        decision: ``approve``, ``reject`` or ``override``.
        justification: why; required for ``reject`` and ``override``.
        binding_hash: the binding the approver was shown.
        decided_at: when (timezone-aware).
        proof: how the approver's identity was proven; a decision without a proof that
            may carry a decision (their own OS account, their key, a signed Slack request)
            does not count.
    """

    run_id: str
    step: str
    approver: str
    decision: Verb
    justification: str = ""
    binding_hash: Sha256
    decided_at: AwareDatetime
    proof: Proof | None = None


class ApprovalVerdict(Model):
    """What the decisions on record add up to.

    Attributes:
        satisfied: the step may go ahead.
        status: ``approved``, ``rejected``, ``pending`` (still open) or ``expired``
            (timed out: treat as rejected).
        counted: the persons whose approvals count, sorted.
        rejected_by: the persons whose rejects count, sorted.
        refused: every decision that does not count, with a reason naming who and why.
        eligible: the persons who could still approve (in the group, entitled, not the
            requester, not yet counted), sorted.
        flagged_for_review: an emergency change, or approved by override.
        reason: one paragraph for the operator and the ledger.
    """

    satisfied: bool
    status: Status
    counted: list[str]
    rejected_by: list[str] = Field(default_factory=list)
    refused: list[tuple[ApprovalDecision, str]] = Field(default_factory=list)
    eligible: list[str] = Field(default_factory=list)
    flagged_for_review: bool = False
    reason: str


def binding_hash(
    runbook_version: str,
    parameters: Mapping[str, Any],
    targets: Iterable[str],
    artifact_sha256: str | None = None,
) -> str:
    """The sha256 an approval is bound to, over canonical JSON of what will run.

    Canonical: keys sorted at every level, parameters' order does not matter, targets are
    sorted and de-duplicated, dates and datetimes are ISO strings (so a parameter read back
    from JSON hashes the same), the artifact checksum is lower-cased.

    Args:
        runbook_version: the version of the runbook code or definition.
        parameters: the run's parameters (str keys; JSON-like values, dates, Decimals,
            enums, paths and pydantic models are accepted).
        targets: the hosts, apps or sessions the step will touch.
        artifact_sha256: the checksum of the artifact being deployed, if there is one.

    Returns:
        64 lower-case hex digits.

    Raises:
        TypeError: a value that has no canonical form (a set, NaN, a non-str key...).
        ValueError: ``artifact_sha256`` is not 64 hex digits.

    Example:
        >>> a = binding_hash("1.4.0", {"region": "emea", "dry_run": False}, ["b", "a"])
        >>> a == binding_hash("1.4.0", {"dry_run": False, "region": "emea"}, ["a", "b"])
        True
    """
    if isinstance(targets, str):
        raise TypeError("targets must be a list of names, not one string")
    body = {
        "kind": "openbell.approval-binding/1",
        "runbook_version": runbook_version,
        "parameters": _canonical(parameters),
        "targets": sorted(set(_canonical(list(targets)))),
        "artifact_sha256": None if artifact_sha256 is None else _sha256_hex(artifact_sha256),
    }
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_approvals(
    request: ApprovalRequest,
    decisions: Sequence[ApprovalDecision],
    *,
    estate: Estate,
    entitlements: Entitlements,
    now: datetime,
) -> ApprovalVerdict:
    """Apply the four-eyes rules (see the module docstring) to the decisions on record.

    Decisions are considered in the order they were made; the first approval of a person
    counts and any later one by the same person (under any identity) is refused.

    Args:
        request: the open request.
        decisions: every decision recorded for it (from the ledger).
        estate: people, their identities, and the approver groups.
        entitlements: who may ``approve`` which runbook where.
        now: the current time (timezone-aware).

    Returns:
        The verdict; ``refused`` explains every decision that does not count.

    Raises:
        UnknownNameError: the request's approver group does not exist.
        ValueError: ``now`` is naive.

    Example:
        >>> v = check_approvals(  # doctest: +SKIP
        ...     req, [carol_ok], estate=estate, entitlements=ents, now=now)
        >>> v.satisfied, v.counted, v.reason  # doctest: +SKIP
        (True, ['carol'], 'approved by carol (1 of 1 from emea-approvers)')
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    group = _members(request.approver_group, estate, entitlements)
    entitled = set(entitlements.people_allowed("approve", request.runbook, request.region))
    persons = identity_index(estate)
    requester = persons.get(request.requester)
    counted: dict[str, ApprovalDecision] = {}
    rejects: dict[str, ApprovalDecision] = {}
    refused: list[tuple[ApprovalDecision, str]] = []
    for d in sorted(decisions, key=lambda d: d.decided_at):
        person = persons.get(d.approver)
        who = _who(d.approver, person)
        problems = _problems(request, d, person, requester, group, entitlements, now)
        if problems or person is None:
            refused.append((d, f"{d.decision} by {who}: " + "; ".join(problems)))
            continue
        seen = rejects if d.decision == "reject" else counted
        if person in seen:
            first = seen[person]
            done = "rejected" if d.decision == "reject" else "approved"
            refused.append(
                (
                    d,
                    f"{d.decision} by {who}: already {done} at {_at(first.decided_at)} as "
                    f"{first.approver!r}; one person counts once",
                )
            )
        else:
            seen[person] = d
    eligible = sorted((group & entitled) - {requester} - set(counted))
    return _verdict(request, counted, rejects, refused, eligible, now)


def require_approvals(
    request: ApprovalRequest,
    decisions: Sequence[ApprovalDecision],
    *,
    estate: Estate,
    entitlements: Entitlements,
    now: datetime,
) -> ApprovalVerdict:
    """Like :func:`check_approvals`, but a verdict that is not satisfied raises.

    Raises:
        ApprovalRuleError: with the verdict's status and reason.
    """
    verdict = check_approvals(request, decisions, estate=estate, entitlements=entitlements, now=now)
    if not verdict.satisfied:
        raise ApprovalRuleError(
            verdict.reason, run_id=request.run_id, step=request.step, status=verdict.status
        )
    return verdict


# ---- the rules ---------------------------------------------------------------------------


def _problems(
    request: ApprovalRequest,
    d: ApprovalDecision,
    person: str | None,
    requester: str | None,
    group: frozenset[str],
    entitlements: Entitlements,
    now: datetime,
) -> list[str]:
    """Every reason this decision does not count (empty when it counts)."""
    out: list[str] = []
    if (d.run_id, d.step) != (request.run_id, request.step):
        out.append(
            f"answers run {d.run_id} step {d.step}, not run {request.run_id} step {request.step}"
        )
    if d.proof is None or not d.proof.counts_for_decision:
        how = "no proof at all" if d.proof is None else d.proof.describe()
        out.append(
            f"not a proven identity ({how}): a decision counts only from the approver's own "
            "OS account, their key (--key) or a signed Slack request"
        )
    elif person is not None and entitlements.person_of(d.proof.person) != person:
        out.append(f"proven to be {d.proof.person}, not {d.approver}")
    if person is None:
        out.append(f"{d.approver!r} is not a person or identity in the estate")
    else:
        if person == requester or d.approver == request.requester:
            out.append(
                f"{_who(request.requester, requester)} requested this run and cannot decide "
                "on their own change"
            )
        if person not in group:
            out.append(
                f"{person} is not in {request.approver_group} "
                f"(members: {', '.join(sorted(group)) or 'none'})"
            )
        else:
            decision = entitlements.decide(person, "approve", request.runbook, request.region)
            if not decision.allowed:
                out.append(f"not entitled ({decision.reason})")
    if d.decision in ("reject", "override") and not d.justification.strip():
        article = "an" if d.decision == "override" else "a"
        out.append(f"{article} {d.decision} needs a justification and none was given")
    if d.binding_hash != request.binding_hash:
        out.append(
            f"given for binding {d.binding_hash[:12]}, but the step is now bound to "
            f"{request.binding_hash[:12]} (runbook version, parameters, targets or "
            "artifact changed since)"
        )
    if d.decided_at > request.expires_at:
        out.append(
            f"decided at {_at(d.decided_at)}, after the request expired at "
            f"{_at(request.expires_at)}"
        )
    if d.decided_at < request.created_at:
        out.append(
            f"decided at {_at(d.decided_at)}, before the request was opened at "
            f"{_at(request.created_at)}"
        )
    if d.decided_at > now:
        out.append(f"decided at {_at(d.decided_at)}, later than now ({_at(now)})")
    return out


def _verdict(
    request: ApprovalRequest,
    counted: dict[str, ApprovalDecision],
    rejects: dict[str, ApprovalDecision],
    refused: list[tuple[ApprovalDecision, str]],
    eligible: list[str],
    now: datetime,
) -> ApprovalVerdict:
    need, have = request.required_approvers, len(counted)
    names = ", ".join(sorted(counted)) or "nobody"
    overrides = sorted(p for p, d in counted.items() if d.decision == "override")
    status: Status
    if rejects:
        status = "rejected"
        reason = "rejected by " + "; ".join(
            f"{_who(d.approver, p)} at {_at(d.decided_at)}: {d.justification.strip()}"
            for p, d in sorted(rejects.items())
        )
    elif have >= need:
        status = "approved"
        reason = f"approved by {names} ({have} of {need} from {request.approver_group})"
        if overrides:
            reason += "; override by " + "; ".join(
                f"{p}: {counted[p].justification.strip()}" for p in overrides
            )
    elif now > request.expires_at:
        status = "expired"
        reason = (
            f"expired at {_at(request.expires_at)} with {have} of {need} approvals ({names}); "
            "an unanswered request counts as rejected"
        )
    else:
        status = "pending"
        missing = need - have
        reason = (
            f"{have} of {need} approvals ({names}); waiting for {missing} more from "
            f"{request.approver_group} (eligible: {', '.join(eligible) or 'nobody'})"
        )
        if len(eligible) < missing:
            reason += f"; cannot be met: only {len(eligible)} eligible approver(s) left"
    flagged = status == "approved" and (request.emergency or bool(overrides))
    if flagged:
        reason += "; flagged for review" + (" (emergency change)" if request.emergency else "")
    if refused:
        reason += ". Not counted: " + "; ".join(why for _, why in refused)
    return ApprovalVerdict(
        satisfied=status == "approved",
        status=status,
        counted=sorted(counted),
        rejected_by=sorted(rejects),
        refused=refused,
        eligible=eligible,
        flagged_for_review=flagged,
        reason=reason,
    )


# ---- helpers -----------------------------------------------------------------------------


def _members(group: str, estate: Estate, entitlements: Entitlements) -> frozenset[str]:
    """An estate group's members, else a group of the entitlements file."""
    if group in estate.groups:
        return frozenset(estate.groups[group].members)
    return entitlements.members(group)


def _who(identity: str, person: str | None) -> str:
    if person is None:
        return repr(identity)
    return person if identity == person else f"{person} (as {identity!r})"


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _canonical(value: Any) -> Any:
    """A JSON-ready form with one spelling per value (see :func:`binding_hash`)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"cannot hash a non-finite number: {value!r}")
        return value
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot hash a mapping with non-string keys: {bad!r}")
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    raise TypeError(
        f"cannot hash a {type(value).__name__} canonically (use a list, sorted if order "
        "does not matter)"
    )
