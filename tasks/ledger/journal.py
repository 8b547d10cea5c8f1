"""The run journal: what a run writes to the ledger and how it is read back.

``RunJournal`` is mixed into ``Ledger`` (``store.py``): the store keeps the chain (append
under the write lock, read, verify, export, checkpoint, run locks); the journal gives the
entries of a run their names and shapes (``run_started``, ``plan``, ``outcome``, ``step``,
``notification``, ``evidence``, ``report``, ``refusal``, ``run_finished``, ``completion``)
and finds them again (``find_runs``, ``load_run``, ``completion``). Payload shapes are in
``runs.py``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import Connection, select

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import RunRecord, StepResult
from openbell.tasks.ledger import runs
from openbell.tasks.ledger.chain import canonical_json, to_json_value
from openbell.tasks.ledger.entry import COLUMNS, Entry, NewEntry, entry_of
from openbell.tasks.ledger.models import entries as T


class RunJournal:
    """The run-level records of the ledger (mixed into ``Ledger``)."""

    if TYPE_CHECKING:  # what the store (``Ledger``) provides
        append: Callable[..., Entry]
        append_many: Callable[[Iterable[NewEntry]], list[Entry]]
        entries: Callable[..., list[Entry]]
        _read: Callable[[], contextlib.AbstractContextManager[Connection]]

    def start_run(
        self,
        *,
        runbook: str,
        region: str,
        trade_date: date,
        requester: str,
        parameters: Mapping[str, Any] | BaseModel | None = None,
        flow_run_id: str | uuid.UUID | None = None,
        runbook_version: str | None = None,
        run_id: str | None = None,
        dry_run: bool = False,
        started_at: datetime | None = None,
        calendar: Mapping[str, Any] | None = None,
        skipped_reason: str | None = None,
        estate_source: str | None = None,
        requester_proof: Mapping[str, Any] | None = None,
    ) -> str:
        """Record who started what (a ``run_started`` entry) and return the run's id.

        Args:
            runbook: e.g. ``sod``.
            region: e.g. ``emea``.
            trade_date: the session the run is for.
            requester: who asked for it.
            parameters: the flow's parameters (a mapping or the parameter model).
            flow_run_id: Prefect's flow-run id.
            runbook_version: the version of the runbook (estate) that ran.
            run_id: the run's id; a new UUID if None.
            dry_run: planned only.
            started_at: default now.
            calendar: the calendar facts the gate used.
            skipped_reason: why the run does nothing (not a session, ...).
            estate_source: where the estate was loaded from.
            requester_proof: how ``requester`` was proven (a Proof as JSON).
        """
        rid = run_id or str(uuid.uuid4())
        params = (
            parameters.model_dump(mode="python")
            if isinstance(parameters, BaseModel)
            else parameters
        )
        payload = runs.run_started_payload(
            run_id=rid,
            runbook=runbook,
            region=region,
            trade_date=trade_date,
            requester=requester,
            parameters=params,
            flow_run_id=None if flow_run_id is None else str(flow_run_id),
            runbook_version=runbook_version,
            dry_run=dry_run,
            started_at=started_at or utcnow(),
            calendar=calendar,
            skipped_reason=skipped_reason,
            estate_source=estate_source,
        )
        if requester_proof is not None:
            payload["requester_proof"] = dict(requester_proof)
        self.append("run_started", rid, payload)
        return rid

    def start_run_from_record(
        self,
        record: RunRecord,
        *,
        parameters: Mapping[str, Any] | BaseModel | None = None,
        runbook_version: str | None = None,
    ) -> str:
        """``start_run`` with the fields of a freshly opened ``RunRecord``."""
        return self.start_run(
            runbook=record.runbook,
            region=record.region,
            trade_date=record.trade_date,
            requester=record.operator,
            parameters=parameters,
            flow_run_id=record.flow_run_id,
            runbook_version=runbook_version,
            run_id=record.run_id,
            dry_run=record.dry_run,
            started_at=record.started_at,
            calendar=record.calendar,
            skipped_reason=record.skipped_reason,
            estate_source=record.estate_source,
            requester_proof=record.requester_proof,
        )

    def record_plan(self, run_id: str, plan: Mapping[str, Any]) -> Entry:
        """Record the plan the run printed before acting."""
        return self.append("plan", run_id, {"plan": dict(plan)})

    def record_outcomes(self, run_id: str, step: str, outcomes: Sequence[Outcome]) -> list[Entry]:
        """Record outcomes of a step still in progress (close it with ``record_step``).

        Args:
            run_id: the run.
            step: the ``StepResult.name`` they belong to.
            outcomes: one per target.
        """
        return self.append_many(
            [NewEntry("outcome", run_id, runs.outcome_payload(step, o)) for o in outcomes]
        )

    def record_step(
        self, run_id: str, step: StepResult, *, outcomes_recorded: bool = False
    ) -> list[Entry]:
        """Record a finished step: its outcomes (one entry per target), then the step.

        Args:
            run_id: the run.
            step: the step's result.
            outcomes_recorded: its outcomes were already recorded with
                ``record_outcomes``; write only the step entry.

        Returns:
            The entries written, the step entry last.
        """
        items = (
            []
            if outcomes_recorded
            else [
                NewEntry("outcome", run_id, runs.outcome_payload(step.name, o))
                for o in step.outcomes
            ]
        )
        items.append(NewEntry("step", run_id, runs.step_payload(step)))
        return self.append_many(items)

    def record_notification(self, run_id: str, delivery: Mapping[str, Any] | Any) -> Entry:
        """Record a message sent about the run and its fate (a ``notify.Delivery`` or dict)."""
        payload = delivery if isinstance(delivery, Mapping) else to_json_value(delivery)
        return self.append("notification", run_id, payload)

    def record_evidence(
        self,
        run_id: str,
        path: str | Path,
        *,
        sha256: str | None = None,
        size: int | None = None,
        step: str | None = None,
        name: str | None = None,
    ) -> Entry:
        """Record a file kept as evidence, with its sha256.

        Args:
            run_id: the run.
            path: where the file is; hashed here unless ``sha256`` is given (a remote file
                whose checksum was taken where it lives).
            sha256: the file's checksum, if already known.
            size: its size in bytes, if known.
            step: the step it is evidence for.
            name: a short name (default the file name).
        """
        p = Path(path)
        if sha256 is None:
            sha256, size = runs.file_facts(p)
        return self.append(
            "evidence",
            run_id,
            {"path": str(p), "name": name or p.name, "sha256": sha256, "size": size, "step": step},
        )

    def record_report(self, run_id: str, fmt: str, path: str | Path) -> Entry:
        """Record a report written for the run (``html``, ``md``, ``json``) with its sha256."""
        sha256, size = runs.file_facts(Path(path))
        return self.append(
            "report", run_id, {"format": fmt, "path": str(path), "sha256": sha256, "size": size}
        )

    def record_refusal(
        self,
        *,
        who: str,
        action: str,
        runbook: str,
        region: str,
        reason: str,
        rule: str | None = None,
        run_id: str | None = None,
    ) -> Entry:
        """Record a refused action (entitlements, approvals): who tried what, and why not."""
        return self.append(
            "refusal",
            run_id,
            {
                "who": who,
                "action": action,
                "runbook": runbook,
                "region": region,
                "reason": reason,
                "rule": rule,
            },
        )

    def finish_run(
        self,
        run_id: str,
        status: Status | str,
        *,
        finished_at: datetime | None = None,
        summary: str = "",
    ) -> Entry:
        """Record the end of a run (checkpoint the head afterwards: ``checkpoint()``)."""
        return self.append(
            "run_finished",
            run_id,
            {
                "status": str(status),
                "finished_at": finished_at or utcnow(),
                "summary": summary,
            },
        )

    def run_entries(self, run_id: str) -> list[Entry]:
        """Every entry of one run, in order."""
        return self.entries(run_id=run_id)

    def find_runs(
        self,
        *,
        region: str | None = None,
        trade_date: date | None = None,
        runbook: str | None = None,
    ) -> list[Entry]:
        """The ``run_started`` entries of the runs for a region and trade date, in order.

        Args:
            region: only runs in this region (case-insensitive).
            trade_date: only runs for this session.
            runbook: only runs of this runbook.

        Example:
            >>> day = date(2026, 11, 24)
            >>> runs = ledger.find_runs(region="emea", trade_date=day)  # doctest: +SKIP
            >>> [e.run_id for e in runs]  # doctest: +SKIP
            ['4f1c2d3e-...', '9a0b1c2d-...']
        """
        want: dict[str, str] = {}
        if region is not None:
            want["region"] = region.lower()
        if trade_date is not None:
            want["trade_date"] = trade_date.isoformat()
        if runbook is not None:
            want["runbook"] = runbook
        q = select(*COLUMNS).where(T.c.kind == "run_started").order_by(T.c.seq)
        for key, value in want.items():
            # The payload is canonical JSON: a cheap, portable prefilter in SQL; the exact
            # test on the parsed payload below decides.
            q = q.where(T.c.payload.icontains(canonical_json({key: value})[1:-1], autoescape=True))
        with self._read() as conn:
            found = [entry_of(r) for r in conn.execute(q)]
        return [
            e
            for e in found
            if all(str(e.payload.get(k, "")).lower() == v.lower() for k, v in want.items())
        ]

    def load_run(self, run_id: str) -> RunRecord:
        """Rebuild a run's ``RunRecord`` from the ledger alone (for reports).

        Raises:
            LedgerError: the ledger has no such run.
        """
        return runs.run_record(run_id, self.entries(run_id=run_id))

    # ---- idempotency -------------------------------------------------------------------

    def completed(self, key: runs.CompletionKey) -> bool:
        """Whether the work ``key`` names was recorded as done."""
        return self.completion(key) is not None

    def completion(self, key: runs.CompletionKey) -> Entry | None:
        """The ``completion`` entry of the work ``key`` names (the first), or None."""
        q = (
            select(*COLUMNS)
            .where(T.c.ref == key.digest(), T.c.kind == "completion")
            .order_by(T.c.seq)
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(q).first()
        return entry_of(row) if row else None

    def record_completion(
        self, key: runs.CompletionKey, *, run_id: str | None, detail: str = ""
    ) -> Entry:
        """Record that the work ``key`` names succeeded (so a re-run skips it)."""
        return self.append(
            "completion",
            run_id,
            {"key": key._asdict(), "detail": detail},
            ref=key.digest(),
        )
