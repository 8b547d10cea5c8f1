"""``openbell approve``, ``reject`` and ``approvals``: answer the steps runs wait on."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

from openbell.deployments.cli.common import (
    AsOpt,
    CliError,
    JsonOpt,
    KeyOpt,
    as_text,
    command,
    out,
    proven,
    require_entitled,
)

# Top-level commands: the package puts them on the root app.
app = typer.Typer()

Reason = Annotated[str, typer.Option("--reason", help="your justification (kept in the ledger)")]
BindingOpt = Annotated[
    str | None,
    typer.Option(
        "--binding",
        help="the binding hash you were shown (openbell approvals prints it; 12+ characters): "
        "refused if the request open now is bound to anything else",
    ),
]
StepOpt = Annotated[str | None, typer.Option("--step", help="the step, if the run has several")]


def _decide(
    run: str,
    step: str | None,
    who: str | None,
    key: Any,
    verb: str,
    reason: str,
    binding: str | None = None,
) -> None:
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.identity import decision_statement
    from openbell.runbooks.loader import load_estate
    from openbell.settings import get_settings
    from openbell.tasks.approvals.gate import ApprovalError, decide, load_request, resume_run
    from openbell.tasks.ledger import Ledger

    claimed = who or get_settings().operator
    decision: Literal["approve", "reject"] = "reject" if verb == "reject" else "approve"
    with Ledger() as ledger:
        run_id, started = _find_run(ledger, run)
        estate = load_estate(started.get("estate_source"))
        runbook, region = started["runbook"], started["region"]
        try:
            asked = load_request(ledger, run_id, step).request
        except ApprovalError as exc:
            raise CliError(str(exc)) from None
        statement = decision_statement(
            run_id=run_id,
            step=asked.step,
            binding=asked.binding_hash,
            decision=decision,
            person=claimed or "(key owner)",
            reason=reason,
        )
        proof = proven(
            estate, claimed, key, "approve", runbook, region, run_id=run_id, statement=statement
        )
        approver = claimed or proof.person
        require_entitled(estate, approver, "approve", runbook, region, run_id=run_id)
        if not reason.strip():
            ledger.record_refusal(
                who=approver,
                action=verb,
                runbook=runbook,
                region=region,
                reason=f"{verb} with a blank reason: a decision needs a justification",
                run_id=run_id,
            )
            raise CliError(f"to {verb}, give a justification: --reason '...' (not blank)")
        seen = asked.binding_hash
        if binding is not None:
            given = binding.strip().lower()
            if len(given) < 12 or not asked.binding_hash.startswith(given):
                seen = given  # decide() refuses it (and records why): not what is open now
        decided = decide(
            ledger,
            estate,
            entitlements_for(estate),
            run_id=run_id,
            approver=approver,
            decision=decision,
            justification=reason,
            proof=proof,
            binding_seen=seen,
            step=step,
            via="cli",
        )
        req = decided.request.request
        done = {"approve": "approved", "reject": "rejected"}[verb]
        said = (
            f"{runbook} {region.upper()} {started['trade_date']} step {req.step} "
            f"(run {run_id}) as {approver}: {decided.verdict.status}: {decided.verdict.reason}"
        )
        out.print(f"[green]{done}[/] {as_text(said)}")
        out.print(
            f"identity: {as_text(proof.describe())}"
        )  # names and reasons are text, not markup
        flow_run_id = started.get("flow_run_id")
        if flow_run_id:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from openbell.deployments.prefect_server import ensure_server

            with temporary_settings({PREFECT_API_URL: ensure_server()}):
                out.print(resume_run(flow_run_id, decided, approver, verb, ledger=ledger))


def _find_run(ledger: Any, ref: str) -> tuple[str, dict[str, Any]]:
    """A run by id, unique id prefix, or name (``sod-emea-2026-11-27``: the latest)."""
    starts = ledger.entries(kinds=["run_started"])
    exact = [e for e in starts if e.run_id == ref]
    if not exact:
        exact = (
            [e for e in starts if e.run_id and e.run_id.startswith(ref)] if len(ref) >= 6 else []
        )
    if not exact:
        named = [
            e
            for e in starts
            if f"{e.payload['runbook']}-{e.payload['region']}-{e.payload['trade_date']}" == ref
        ]
        exact = named[-1:]
    ids = {e.run_id for e in exact}
    if not ids:
        raise CliError(
            f"no run {ref!r} in the ledger; give a run id (or 6+ characters of it) or a "
            "run name such as sod-emea-2026-11-27 (`openbell approvals` lists waiting runs)"
        )
    if len(ids) > 1:
        raise CliError(f"{ref!r} matches {len(ids)} runs: {', '.join(sorted(map(str, ids)))}")
    entry = exact[-1]
    return str(entry.run_id), dict(entry.payload)


@command(app)
def approve(
    run: Annotated[str, typer.Argument(help="run id, id prefix, or name like sod-emea-2026-11-27")],
    reason: Reason,
    step: StepOpt = None,
    who: AsOpt = None,
    key: KeyOpt = None,
    binding: BindingOpt = None,
) -> None:
    """Approve a step a run is waiting on (four-eyes: never your own run)."""
    _decide(run, step, who, key, "approve", reason, binding)


@command(app)
def reject(
    run: Annotated[str, typer.Argument(help="run id, id prefix, or name like sod-emea-2026-11-27")],
    reason: Reason,
    step: StepOpt = None,
    who: AsOpt = None,
    key: KeyOpt = None,
    binding: BindingOpt = None,
) -> None:
    """Reject a step a run is waiting on; the run then changes nothing there."""
    _decide(run, step, who, key, "reject", reason, binding)


@command(app)
def approvals(as_json: JsonOpt = False) -> None:
    """List the approval requests that are waiting, with the command to answer each."""
    from openbell.tasks.approvals.gate import pending_requests
    from openbell.tasks.ledger import Ledger

    with Ledger() as ledger:
        waiting = pending_requests(ledger)
    rows = [
        {
            "run_id": r.request.run_id,
            "runbook": r.request.runbook,
            "region": r.request.region,
            "step": r.request.step,
            "requester": r.request.requester,
            "approver_group": r.request.approver_group,
            "required": r.request.required_approvers,
            "decisions": len(r.decisions),
            "expires_at": r.request.expires_at.isoformat(),
            "binding_hash": r.request.binding_hash,
            "summary": r.summary,
        }
        for r in waiting
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no approval requests waiting")
    for row in rows:
        out.print(
            f"{row['runbook']} {str(row['region']).upper()} step {row['step']}: {row['summary']} "
            f"(requested by {row['requester']}, {row['required']} from {row['approver_group']}, "
            f"expires {row['expires_at']})\n  openbell approve {row['run_id']} "
            f"--step {row['step']} --binding {str(row['binding_hash'])[:16]} --as <you> "
            "--reason '...'"
        )
