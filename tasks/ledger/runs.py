"""What a run writes to the ledger, and how a ``RunRecord`` is rebuilt from it alone.

A run is a sequence of entries sharing its ``run_id``::

    run_started    who asked for what: runbook, region, trade date, parameters,
                   requester, Prefect flow-run id, runbook version, calendar facts
    plan           the plan it printed before acting
    outcome ...    one per target, as each step learns them
    step           closes a step: title, times, note (its outcomes are those before it)
    approval_requested   a step waits: {"request": ApprovalRequest, "summary", "changes"}
    approval_decided     an answer: {"decision": ApprovalDecision, "via"}
    approval_verdict     what the answers add up to: {"step", "binding_hash", "status",
                         "counted", "rejected_by", "refused", "flagged_for_review", "reason"}
    notification   each Slack (or console) message and its fate
    evidence       a file and its sha256
    refusal        an action refused (who, what, why)
    run_finished   status and time
    report         each report written, with its sha256 (after run_finished)

``run_record`` folds those entries back into the ``RunRecord`` that reports render, so
a report regenerated from the ledger is the report that was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from openbell.outcome import Outcome
from openbell.run import RunRecord, StepResult
from openbell.tasks.ledger.chain import canonical_json, parse_ts
from openbell.tasks.ledger.errors import LedgerError


class CompletionKey(NamedTuple):
    """The identity of one piece of work: re-running it for the same key re-does nothing.

    Example:
        >>> key = CompletionKey("sod", "emea", date(2026, 11, 27), "start_apps", "emea-oms1")
        >>> key.digest()[:12]
        '6a157a643472'
    """

    runbook: str
    region: str
    trade_date: date
    step: str
    target: str
    version: str | None = None

    def digest(self) -> str:
        """sha256 of the key's canonical JSON (the entry's ``ref``)."""
        return hashlib.sha256(canonical_json(list(self)).encode("utf-8")).hexdigest()


def run_started_payload(
    *,
    run_id: str,
    runbook: str,
    region: str,
    trade_date: date,
    requester: str,
    parameters: Mapping[str, Any] | None,
    flow_run_id: str | None,
    runbook_version: str | None,
    dry_run: bool,
    started_at: Any,
    calendar: Mapping[str, Any] | None,
    skipped_reason: str | None,
    estate_source: str | None,
) -> dict[str, Any]:
    """The payload of a ``run_started`` entry."""
    return {
        "run_id": run_id,
        "runbook": runbook,
        "region": region,
        "trade_date": trade_date,
        "requester": requester,
        "parameters": dict(parameters or {}),
        "flow_run_id": None if flow_run_id is None else str(flow_run_id),
        "runbook_version": runbook_version,
        "dry_run": dry_run,
        "started_at": started_at,
        "calendar": dict(calendar or {}),
        "skipped_reason": skipped_reason,
        "estate_source": estate_source,
    }


def outcome_payload(step: str, outcome: Outcome) -> dict[str, Any]:
    """The payload of an ``outcome`` entry: the step it belongs to, and the outcome."""
    return {"step": step, "outcome": outcome.model_dump(mode="python")}


def step_payload(step: StepResult) -> dict[str, Any]:
    """The payload of a ``step`` entry (its outcomes are separate entries)."""
    return {
        "name": step.name,
        "title": step.title,
        "status": step.status.value,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "note": step.note,
        "counts": step.counts(),
    }


def file_facts(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot hash the file for the ledger: {exc}") from exc
    return digest.hexdigest(), size


def run_record(run_id: str, entries: Iterable[Any]) -> RunRecord:
    """Rebuild a run's ``RunRecord`` from its entries (in seq order).

    Approvals: a decision belongs to the latest request for its step; a verdict to the
    latest request for its step and binding hash (else for its step). Entries of kind
    ``report`` fill ``reports`` but are left out of ``ledger_anchor``, so a report
    rendered from the record does not change when it is itself recorded.

    Args:
        run_id: the run.
        entries: ``Entry`` objects of that run (anything with ``kind`` and ``payload``;
            ``seq``, ``ts`` and ``hash`` are used when present).

    Raises:
        LedgerError: the run has no ``run_started`` entry.
    """
    fields: dict[str, Any] | None = None
    steps: list[StepResult] = []
    pending: dict[str, list[Any]] = {}
    notifications: list[dict[str, Any]] = []
    reports: dict[str, str] = {}
    approvals: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    anchor = _Anchor()
    for e in entries:
        p = e.payload
        seq = getattr(e, "seq", None)
        if e.kind != "report":
            anchor.add(e)
        if e.kind == "run_started" and fields is None:
            fields = {
                "run_id": run_id,
                "runbook": p["runbook"],
                "region": p["region"],
                "trade_date": p["trade_date"],
                "dry_run": p.get("dry_run", False),
                "operator": p["requester"],
                "requester_proof": p.get("requester_proof"),
                "started_at": p["started_at"],
                "calendar": p.get("calendar") or {},
                "skipped_reason": p.get("skipped_reason"),
                "estate_source": p.get("estate_source"),
                "flow_run_id": p.get("flow_run_id"),
                "runbook_version": p.get("runbook_version"),
                "parameters": p.get("parameters") or {},
            }
        elif e.kind == "plan":
            if fields is not None:
                fields["plan"] = p.get("plan")
        elif e.kind == "outcome":
            pending.setdefault(p["step"], []).append(p["outcome"])
        elif e.kind == "step":
            steps.append(
                StepResult.model_validate(
                    {
                        "name": p["name"],
                        "title": p["title"],
                        "outcomes": pending.pop(p["name"], []),
                        "started_at": p["started_at"],
                        "finished_at": p["finished_at"],
                        "note": p.get("note", ""),
                    }
                )
            )
        elif e.kind == "notification":
            notifications.append(dict(p))
        elif e.kind == "approval_requested":
            approvals.append(_approval_requested(p, seq))
        elif e.kind == "approval_decided":
            _approval_decided(approvals, p, seq)
        elif e.kind == "approval_verdict":
            _approval_verdict(approvals, p, seq, getattr(e, "ts", None))
        elif e.kind == "evidence":
            evidence.append({**p, "seq": seq})
        elif e.kind == "refusal":
            refusals.append({**p, "at": getattr(e, "ts", None), "seq": seq})
        elif e.kind == "report":
            reports[p["format"]] = p["path"]
        elif e.kind == "run_finished" and fields is not None:
            fields["finished_at"] = p.get("finished_at")
            fields["finished_status"] = p.get("status")
            fields["finished_summary"] = p.get("summary") or ""
            anchor.finished(e)
    if fields is None:
        raise LedgerError(f"run {run_id!r} has no run_started entry in the ledger")
    steps = in_plan_order(steps, fields.get("plan"))
    return RunRecord.model_validate(
        {
            **fields,
            "steps": steps,
            "notifications": notifications,
            "reports": reports,
            "approvals": approvals,
            "evidence": evidence,
            "refusals": refusals,
            "ledger_anchor": anchor.value(),
        }
    )


class _Anchor:
    """Collects a run's position in the chain while its entries are folded."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.last_hash = ""
        self.count = 0
        self.finished_seq: int | None = None
        self.finished_hash: str | None = None

    def add(self, e: Any) -> None:
        seq, h = getattr(e, "seq", None), getattr(e, "hash", None)
        if seq is None or h is None:
            return
        self.first = seq if self.first is None else self.first
        self.last, self.last_hash = seq, h
        self.count += 1

    def finished(self, e: Any) -> None:
        self.finished_seq = getattr(e, "seq", None)
        self.finished_hash = getattr(e, "hash", None)

    def value(self) -> dict[str, Any] | None:
        if self.first is None or self.last is None:
            return None
        return {
            "first_seq": self.first,
            "last_seq": self.last,
            "last_hash": self.last_hash,
            "entries": self.count,
            "finished_seq": self.finished_seq,
            "finished_hash": self.finished_hash,
        }


def _approval_requested(p: Mapping[str, Any], seq: int | None) -> dict[str, Any]:
    """An ``approval_requested`` payload as the fields of an ``ApprovalRecord``."""
    req = p["request"]
    return {
        "step": req["step"],
        "requester": req["requester"],
        "approver_group": req["approver_group"],
        "required_approvers": req.get("required_approvers", 1),
        "binding_hash": req["binding_hash"],
        "created_at": req["created_at"],
        "expires_at": req["expires_at"],
        "emergency": req.get("emergency", False),
        "summary": p.get("summary") or "",
        "changes": list(p.get("changes") or []),
        "decisions": [],
        "seq": seq,
    }


def _latest(
    approvals: list[dict[str, Any]], step: str, binding: str | None = None
) -> dict[str, Any] | None:
    for a in reversed(approvals):
        if a["step"] == step and (binding is None or a["binding_hash"] == binding):
            return a
    return None


def _unrequested(
    approvals: list[dict[str, Any]], step: str, binding: str, at: Any
) -> dict[str, Any]:
    """A placeholder for a decision or verdict whose request is not on record.

    Kept, not dropped: the report shows it as a deviation.
    """
    target: dict[str, Any] = {
        "step": step,
        "requester": "",
        "approver_group": "",
        "required_approvers": 0,
        "binding_hash": binding,
        "created_at": at,
        "expires_at": at,
        "decisions": [],
        "requested": False,
    }
    approvals.append(target)
    return target


def _approval_decided(
    approvals: list[dict[str, Any]], p: Mapping[str, Any], seq: int | None
) -> None:
    d = p["decision"]
    decision = {
        "approver": d["approver"],
        "decision": d["decision"],
        "decided_at": d["decided_at"],
        "via": p.get("via") or "",
        "justification": d.get("justification") or "",
        "binding_hash": d.get("binding_hash") or "",
        "seq": seq,
    }
    target = _latest(approvals, d["step"]) or _unrequested(
        approvals, d["step"], decision["binding_hash"], d["decided_at"]
    )
    target["decisions"].append(decision)


def _approval_verdict(
    approvals: list[dict[str, Any]], p: Mapping[str, Any], seq: int | None, ts: Any
) -> None:
    target = (
        _latest(approvals, p["step"], p.get("binding_hash"))
        or _latest(approvals, p["step"])
        or _unrequested(approvals, p["step"], p.get("binding_hash") or "", ts)
    )
    status = p["status"]
    refused = [dict(r) for r in p.get("refused") or []]
    # The verdict judged the decisions recorded before it: mark each counted or refused.
    unmatched = list(refused)
    for d in target["decisions"]:
        match = next(
            (
                r
                for r in unmatched
                if (r["approver"], r["decision"]) == (d["approver"], d["decision"])
            ),
            None,
        )
        if match is not None:
            unmatched.remove(match)
        d["effect"] = "refused" if match is not None else "counted"
        d["why"] = match["why"] if match is not None else ""
    target.update(
        {
            "status": status,
            "counted": list(p.get("counted") or []),
            "rejected_by": list(p.get("rejected_by") or []),
            "refused": refused,
            "flagged_for_review": bool(p.get("flagged_for_review", False)),
            "reason": p.get("reason") or "",
            "resolved_at": _resolved_at(target, status, ts),
            "verdict_seq": seq,
        }
    )


def _resolved_at(approval: dict[str, Any], status: str, ts: Any) -> Any:
    """When the wait ended, from the decisions' own times (the entry's time as a fallback)."""
    if status == "pending":
        return None
    if status == "expired":
        return approval["expires_at"]
    counted = [d for d in approval["decisions"] if d["effect"] == "counted"]
    if status == "rejected":
        times = sorted(parse_ts(str(d["decided_at"])) for d in counted if d["decision"] == "reject")
        return times[0] if times else ts
    times = sorted(parse_ts(str(d["decided_at"])) for d in counted if d["decision"] != "reject")
    if not times:
        return ts
    return times[min(len(times), max(int(approval["required_approvers"]), 1)) - 1]


def in_plan_order(steps: list[StepResult], plan: Mapping[str, Any] | None) -> list[StepResult]:
    """Steps in the order the run's plan lists them (the runbook's order), not the order
    they happened to finish in; steps the plan does not name keep their place at the end.
    """
    names = [s.get("name") if isinstance(s, Mapping) else s for s in (plan or {}).get("steps", [])]
    rank = {name: i for i, name in enumerate(names)}
    return sorted(steps, key=lambda s: rank.get(s.name, len(rank)))
