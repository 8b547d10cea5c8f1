"""What a run writes to the ledger, and how a ``RunRecord`` is rebuilt from it alone.

A run is a sequence of entries sharing its ``run_id``::

    run_started    who asked for what: runbook, region, trade date, parameters,
                   requester, Prefect flow-run id, runbook version, calendar facts
    plan           the plan it printed before acting
    outcome ...    one per target, as each step learns them
    step           closes a step: title, times, note (its outcomes are those before it)
    approval_*     requests and decisions (payloads from ``tasks.approvals``)
    notification   each Slack (or console) message and its fate
    evidence       a file and its sha256
    report         each report written, with its sha256
    run_finished   status and time

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
from tasks.ledger.chain import canonical_json
from tasks.ledger.errors import LedgerError


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

    Args:
        run_id: the run.
        entries: ``Entry`` objects of that run (anything with ``kind`` and ``payload``).

    Raises:
        LedgerError: the run has no ``run_started`` entry.
    """
    fields: dict[str, Any] | None = None
    steps: list[StepResult] = []
    pending: dict[str, list[Any]] = {}
    notifications: list[dict[str, Any]] = []
    reports: dict[str, str] = {}
    for e in entries:
        p = e.payload
        if e.kind == "run_started" and fields is None:
            fields = {
                "run_id": run_id,
                "runbook": p["runbook"],
                "region": p["region"],
                "trade_date": p["trade_date"],
                "dry_run": p.get("dry_run", False),
                "operator": p["requester"],
                "started_at": p["started_at"],
                "calendar": p.get("calendar") or {},
                "skipped_reason": p.get("skipped_reason"),
                "estate_source": p.get("estate_source"),
                "flow_run_id": p.get("flow_run_id"),
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
        elif e.kind == "report":
            reports[p["format"]] = p["path"]
        elif e.kind == "run_finished" and fields is not None:
            fields["finished_at"] = p.get("finished_at")
    if fields is None:
        raise LedgerError(f"run {run_id!r} has no run_started entry in the ledger")
    steps = in_plan_order(steps, fields.get("plan"))
    return RunRecord.model_validate(
        {**fields, "steps": steps, "notifications": notifications, "reports": reports}
    )


def in_plan_order(steps: list[StepResult], plan: Mapping[str, Any] | None) -> list[StepResult]:
    """Steps in the order the run's plan lists them (the runbook's order), not the order
    they happened to finish in; steps the plan does not name keep their place at the end.
    """
    names = [s.get("name") for s in (plan or {}).get("steps", [])]
    rank = {name: i for i, name in enumerate(names)}
    return sorted(steps, key=lambda s: rank.get(s.name, len(rank)))
