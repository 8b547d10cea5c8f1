"""Four-eyes approval of a step: the flow waits, a second person decides, the ledger keeps it.

``tasks.approvals`` holds the rules (pure functions); this module wires them to a running
flow, the ledger and the people who answer::

    flow (gate)                              ledger                  approver
    ─────────────────────────────────────    ─────────────────────   ──────────────────────
    open the request, bound to a hash   ──►  approval_requested
    announce it (Slack or console)      ──►  notification
    pause (Prefect, typed input)                                     openbell approve RUN
                                             approval_decided   ◄──  decide()  (+ refusal
                                                                     when it does not count)
    resumed  ◄────────────────────────────────────────────────────── resume the flow run
    re-read every decision from the ledger,
    re-check the binding, apply the rules ──► approval_verdict

Both ways of answering go through :func:`decide`: ``openbell approve/reject`` calls it and
then resumes the flow run; an answer typed into the Prefect UI's form resumes the flow,
which calls :func:`decide` with what the form said (``via="prefect-ui"``). Either way
the flow then trusts only the ledger: a run resumed through Prefect's API with no
approval that counts in the ledger is stopped, and that attempt is recorded as a refusal.

An unanswered request expires (``runbooks.<name>.approvals.ttl_minutes``, default 60):
the step is then treated as rejected, and the run ends normally with that recorded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import Field

from openbell.errors import OpenbellError
from openbell.outcome import utcnow
from openbell.runbooks.entitlements import Entitlements, entitlements_for
from openbell.runbooks.identity import (
    IdentityError,
    Proof,
    decision_statement,
    unproven,
    verify,
)
from openbell.runbooks.loader import estate_version
from openbell.runbooks.schema import ApprovalPolicy, Estate
from openbell.secrets import redact
from openbell.tasks.approvals.rules import (
    ApprovalDecision,
    ApprovalRequest,
    ApprovalVerdict,
    binding_hash,
    check_approvals,
)
from openbell.tasks.connectors.notify import Delivery, slack_field
from openbell.tasks.context import RunContext, in_thread

log = logging.getLogger(__name__)

#: How often a paused flow asks the Prefect server whether it was resumed.
POLL_S = 2
#: Prefect's own pause deadline lies this far past the request's expiry: the flow resumes
#: itself at the expiry, because past Prefect's deadline the server would fail the run.
GRACE_S = 120
#: How long ``openbell approve`` watches a run that is not paused (yet) to resume it.
RESUME_WAIT_S = 20.0
RESUME_POLL_S = 0.5
#: What the flow resumes itself with when a request expires (not a decision: it only
#: wakes the flow, which then reads the ledger).
EXPIRY_WAKEUP = {"approver": "openbell", "decision": "reject", "ledger_seq": 0}


class ApprovalError(OpenbellError):
    """An approval could not be given: no such request, already decided, or refused.

    Attributes:
        refused: the decision was recorded but does not count (self-approval, outside the
            group, double click, ...); the message says why.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        self.refused = refused
        super().__init__(message)


class ApprovalInput(RunInput):
    """What the Prefect UI's resume form asks for. No field defaults to approved."""

    approver: str = Field(description="your login, as the estate knows it")
    decision: Literal["approve", "reject"] = Field(description="approve or reject the step")
    justification: str = Field(default="", description="why; required to reject")
    ledger_seq: int | None = Field(
        default=None,
        description="set by `openbell approve`; leave it empty in the UI",
    )
    signature: str = Field(
        default="",
        description=(
            "your SSH signature of the decision statement (ssh-keygen -Y sign -n openbell); "
            "without one this answer is recorded but does not count"
        ),
    )


@dataclass(frozen=True)
class OpenRequest:
    """An approval request read back from the ledger, with every decision since.

    Attributes:
        seq: the ledger position of its ``approval_requested`` entry.
        request: the request.
        summary: what will run, where.
        changes: each change it would make.
        decisions: the decisions recorded for it, in order.
        closed: the final verdict's status (``approved``, ``rejected``, ``expired``), or
            None while it is open.
        flow_run_id: the Prefect flow run waiting for it.
    """

    seq: int
    request: ApprovalRequest
    summary: str
    changes: list[str]
    decisions: list[ApprovalDecision]
    closed: str | None
    flow_run_id: str | None


@dataclass(frozen=True)
class Decided:
    """A decision that counted: its ledger position and the verdict it led to."""

    seq: int
    verdict: ApprovalVerdict
    request: OpenRequest


# ---- reading requests back -----------------------------------------------------------------


def load_request(ledger: Any, run_id: str, step: str | None = None) -> OpenRequest:
    """The run's latest approval request (for ``step`` if given) and its decisions.

    Raises:
        ApprovalError: the run asked for no approval (for that step).
    """
    entries = ledger.entries(
        run_id=run_id,
        kinds=["run_started", "approval_requested", "approval_decided", "approval_verdict"],
    )
    flow_run_id = next(
        (e.payload.get("flow_run_id") for e in entries if e.kind == "run_started"), None
    )
    found: OpenRequest | None = None
    for e in entries:
        p = e.payload
        if e.kind == "approval_requested":
            req = ApprovalRequest.model_validate(p["request"])
            if step is None or req.step == step:
                found = OpenRequest(
                    seq=e.seq,
                    request=req,
                    summary=p.get("summary", ""),
                    changes=list(p.get("changes", [])),
                    decisions=[],
                    closed=None,
                    flow_run_id=flow_run_id,
                )
        elif found is not None and e.kind == "approval_decided":
            d = ApprovalDecision.model_validate(p["decision"])
            if d.step == found.request.step:
                found.decisions.append(d)
        elif (
            found is not None
            and e.kind == "approval_verdict"
            and p.get("step") == found.request.step
            and p.get("status") != "pending"
        ):
            found = OpenRequest(**{**found.__dict__, "closed": p["status"]})
    if found is None:
        what = f"step {step!r}" if step else "any step"
        raise ApprovalError(f"run {run_id} has no approval request for {what}")
    return found


def pending_requests(ledger: Any) -> list[OpenRequest]:
    """Every approval request in the ledger that is still open, oldest first."""
    runs = {e.run_id for e in ledger.entries(kinds=["approval_requested"]) if e.run_id is not None}
    out = []
    for run_id in sorted(runs):
        req = load_request(ledger, run_id)
        if req.closed is None and req.request.expires_at > utcnow():
            out.append(req)
    return sorted(out, key=lambda r: r.seq)


# ---- deciding (CLI, Prefect UI, Slack) -----------------------------------------------------


def decide(
    ledger: Any,
    estate: Estate,
    entitlements: Entitlements,
    *,
    run_id: str,
    approver: str,
    decision: Literal["approve", "reject", "override"],
    justification: str = "",
    proof: Proof | None,
    binding_seen: str,
    step: str | None = None,
    via: str = "cli",
    now: datetime | None = None,
) -> Decided:
    """Record one person's decision on a run's open request, and judge it.

    The decision is always recorded (``approval_decided``). When it does not count under
    the four-eyes rules, a ``refusal`` entry says why and :class:`ApprovalError` is
    raised with that reason: the caller must then not resume the run.

    Args:
        ledger: the ledger.
        estate: people, identities and groups.
        entitlements: who may approve what.
        run_id: the run waiting.
        approver: the identity answering.
        decision: ``approve``, ``reject`` or ``override``.
        justification: why (required to reject or override).
        step: the step, when the run has several requests.
        proof: how ``approver`` was proven (:func:`openbell.runbooks.identity.prove`);
            None or an unproven one is recorded and refused.
        binding_seen: the binding hash of the request the approver was shown (the one
            ``openbell approve`` loaded, the one a Slack button carries). When the open
            request's binding is another (the plan changed, a newer request replaced it), the
            decision is refused and recorded: nobody approves a plan they did not see.
        via: ``cli``, ``prefect-ui`` or ``slack``.
        now: the time of the decision (default now).

    Raises:
        ApprovalError: no such open request, or the decision does not count.

    Example:
        >>> decide(ledger, estate, ents, run_id=rid, approver="bob",  # doctest: +SKIP
        ...        decision="approve", justification="checked the plan").verdict.status
        'approved'
    """
    req = load_request(ledger, run_id, step)

    def refuse(reason: str) -> None:  # every refused decision is on the record
        ledger.record_refusal(
            who=approver,
            action=decision,
            runbook=req.request.runbook,
            region=req.request.region,
            reason=reason,
            run_id=run_id,
        )

    if req.closed is not None:
        late = f"run {run_id} step {req.request.step}: already {req.closed}; nothing to decide"
        refuse(late)
        raise ApprovalError(late)
    if binding_seen != req.request.binding_hash:
        stale = (
            f"run {run_id} step {req.request.step}: you were shown binding "
            f"{binding_seen[:12]}, but the open request is bound to "
            f"{req.request.binding_hash[:12]} (the plan changed since): nothing decided; "
            "look at the request again (openbell approvals) and decide on what is open now"
        )
        refuse(stale)
        raise ApprovalError(stale, refused=True)
    when = now or utcnow()
    made = ApprovalDecision(
        run_id=run_id,
        step=req.request.step,
        approver=approver,
        decision=decision,
        justification=justification,
        binding_hash=req.request.binding_hash,
        decided_at=when,
        proof=proof,
    )
    entry = ledger.append(
        "approval_decided", run_id, {"decision": made.model_dump(mode="json"), "via": via}
    )
    verdict = check_approvals(
        req.request, [*req.decisions, made], estate=estate, entitlements=entitlements, now=when
    )
    why = next((w for d, w in verdict.refused if d == made), None)
    if why is not None:
        refuse(why)
        raise ApprovalError(f"not counted: {why}", refused=True)
    log.info("run %s step %s: %s by %s via %s", run_id, made.step, decision, approver, via)
    return Decided(seq=entry.seq, verdict=verdict, request=req)


def resume_run(
    flow_run_id: str,
    decided: Decided,
    approver: str,
    decision: str,
    *,
    ledger: Any = None,
    wait_s: float = RESUME_WAIT_S,
) -> str:
    """Resume the paused flow run after a decision that counted; say what happened.

    A run that is not paused yet (it is between recording its request and pausing), or
    no longer (a second click, or the other approver was first), is not an error: the
    decision is in the ledger, which is what the run reads. Such a run is watched for up
    to ``wait_s`` seconds and resumed if it pauses; with ``ledger``, the wait ends as
    soon as the run has closed the request.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    run_input = {
        "approver": approver,
        "decision": "reject" if decision == "reject" else "approve",
        "justification": "",
        "ledger_seq": decided.seq,
    }
    step = decided.request.request.step
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resume_flow_run(UUID(flow_run_id), run_input=run_input)
        except NotPausedError:
            pass
        except ObjectNotFound:
            return f"Prefect has no flow run {flow_run_id}; the decision is in the ledger"
        except FlowPauseTimeout:
            return "the run can no longer be resumed: its pause timed out"
        except RuntimeError as exc:  # Prefect answered REJECT (HTTP 200) for another reason
            return f"Prefect refused to resume the run ({exc}); the decision is in the ledger"
        else:
            return "the run was resumed"
        if ledger is not None:
            closed = load_request(ledger, decided.request.request.run_id, step).closed
            if closed is not None:
                return f"the run has already read the ledger: step {step} is {closed}"
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
        if state is not None and state.is_final():
            return f"the run has ended ({state.name}); the decision is in the ledger"
        if time.monotonic() >= deadline:
            return (
                "the run is not paused; the decision is in the ledger, "
                "which the run reads when it next pauses or resumes"
            )
        time.sleep(RESUME_POLL_S)


# ---- the flow side -------------------------------------------------------------------------


def policy_for(ctx: RunContext, step: str) -> ApprovalPolicy | None:
    """The approval policy when ``step`` of this run's runbook needs approval, else None."""
    if ctx.dry_run:
        return None
    override = ctx.approval_overrides.get(step)
    if override is not None:
        return override.policy
    policy = ctx.estate.policy(ctx.runbook).approvals
    if policy is None or step not in policy.steps:
        return None
    return policy


@dataclass(frozen=True)
class ApprovalOverride:
    """A step that asks for approval whatever ``runbooks.<key>.approvals`` says (a release):
    its own policy, and what else its approval is bound to."""

    policy: ApprovalPolicy
    emergency: bool = False
    artifact_sha256: str | None = None
    bound: dict[str, Any] | None = None


def current_binding(ctx: RunContext, targets: Sequence[str], step: str | None = None) -> str:
    """The hash an approval for ``targets`` is bound to, from the estate file as it is now."""
    # estate_version reads the file's bytes at its path now, not the estate parsed at start.
    version = estate_version(ctx.estate) if ctx.estate.source else ctx.runbook_version
    override = ctx.approval_overrides.get(step) if step else None
    if override is None:
        return binding_hash(version, ctx.parameters, list(targets))
    params = {**ctx.parameters, "bound": override.bound or {}}
    return binding_hash(version, params, list(targets), override.artifact_sha256)


@task(name="approval", cache_policy=NO_CACHE, task_run_name="approval[{step}]")
async def gate(
    ctx: RunContext, step: str, targets: list[str], changes: list[str], summary: str
) -> ApprovalVerdict:
    """Ask for approval of ``changes`` to ``targets`` and wait for the verdict.

    Args:
        ctx: the run (its ledger, notifier, requester and parameters).
        step: the step that will make the changes.
        targets: what it will touch (bound into the approval).
        changes: one line per change, shown to the approvers.
        summary: one line: what will run, where.

    Returns:
        The final verdict: ``approved`` (go ahead), ``rejected`` or ``expired`` (do not).
    """
    logger = get_run_logger()
    policy = policy_for(ctx, step)
    if policy is None:
        raise ApprovalError(f"step {step!r} of {ctx.runbook} needs no approval")
    entitlements = entitlements_for(ctx.estate)
    request = ApprovalRequest.for_step(
        ctx.estate,
        run_id=ctx.run_id,
        runbook=ctx.runbook,
        region=ctx.region,
        step=step,
        requester=ctx.operator,
        binding_hash=current_binding(ctx, targets, step),
        now=utcnow(),
        required_approvers=policy.required_approvers,
        approver_group=policy.approver_group,
        emergency=bool(getattr(ctx.approval_overrides.get(step), "emergency", False)),
        ttl=timedelta(minutes=policy.ttl_minutes),
    )
    await in_thread(
        ctx,
        ctx.ledger.append,
        "approval_requested",
        ctx.run_id,
        {"request": request.model_dump(mode="json"), "summary": summary, "changes": changes},
    )
    await _announce(ctx, request, summary, changes)
    logger.info("waiting for approval of %s: %s", step, summary)
    ctx.emit(step, "waiting", _how_to_answer(ctx, request))
    counted: set[str] = set()
    pause = 0
    while True:
        remaining = (request.expires_at - utcnow()).total_seconds()
        if remaining <= 0:
            break
        # A decision recorded before the run paused counts now: pausing first would
        # leave it unread until someone resumed the run, or until the request expired.
        early = await _judge(ctx, entitlements, request, targets)
        if early.status in ("approved", "rejected"):
            return await _close(ctx, step, request, early)
        pause += 1
        resumed, answer = await _pause(step, pause, request.expires_at)
        if answer is not None and answer.ledger_seq is None:
            await _record_ui_answer(ctx, entitlements, step, answer)
        verdict = await _judge(ctx, entitlements, request, targets)
        if verdict.status in ("approved", "rejected"):
            return await _close(ctx, step, request, verdict)
        if not resumed or utcnow() >= request.expires_at:  # the request has expired
            break
        if set(verdict.counted) == counted:
            why = (
                "the run was resumed without a new approval that counts in the ledger "
                f"({verdict.reason}); nothing was changed"
            )
            await in_thread(
                ctx,
                ctx.ledger.record_refusal,
                who="prefect-api",
                action="resume",
                runbook=ctx.runbook,
                region=ctx.region,
                reason=why,
                run_id=ctx.run_id,
            )
            stopped = verdict.model_copy(update={"status": "rejected", "reason": why})
            return await _close(ctx, step, request, stopped)
        counted = set(verdict.counted)
    final = await _judge(ctx, entitlements, request, targets, now=request.expires_at)
    if final.status == "pending":
        final = final.model_copy(
            update={
                "status": "expired",
                "reason": f"expired at {request.expires_at:%Y-%m-%d %H:%M:%SZ} unanswered: "
                f"{final.reason}; an unanswered request counts as rejected",
            }
        )
    return await _close(ctx, step, request, final)


async def _pause(step: str, n: int, until: datetime) -> tuple[bool, ApprovalInput | None]:
    """Pause the flow run until someone resumes it, or it resumes itself at ``until``.

    Returns:
        (resumed, the input it was resumed with if it was a valid one).
    """
    remaining = (until - utcnow()).total_seconds()
    alarm = asyncio.create_task(_wake_at(until))
    try:
        got = await apause_flow_run(
            wait_for_input=ApprovalInput,
            timeout=max(1, math.ceil(remaining)) + GRACE_S,
            poll_interval=POLL_S,
            # Prefect takes only lowercase letters, digits and dashes in a key (fix_eod).
            key=f"approval-{re.sub('[^a-z0-9-]', '-', step.lower())}-{n}",
        )
    except FlowPauseTimeout:
        return False, None
    except Exception as exc:  # resumed with no or malformed input: the ledger decides
        log.warning("approval of %s: resumed without a valid input: %s", step, exc)
        return True, None
    finally:
        alarm.cancel()
    return True, got if isinstance(got, ApprovalInput) else None


async def _wake_at(until: datetime) -> None:
    """Resume this flow run at ``until`` (the request's expiry) if nobody did before."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    await asyncio.sleep(max(0.0, (until - utcnow()).total_seconds()))
    async with get_client() as client:
        for _ in range(10):
            run = await client.read_flow_run(context.flow_run.id)
            if run.state is None or not run.state.is_paused():
                return
            answer = await client.resume_flow_run(context.flow_run.id, run_input=EXPIRY_WAKEUP)
            if str(answer.status.value).upper() == "ACCEPT":
                return
            # REJECT comes with HTTP 200: read the body, and try again shortly.
            log.warning("could not wake the flow at the approval's expiry: %s", answer.details)
            await asyncio.sleep(POLL_S)


def ui_proof(
    ledger: Any, entitlements: Entitlements, run_id: str, step: str, answer: ApprovalInput
) -> Proof:
    """What proves an answer typed into Prefect's UI (or posted to its API): only a
    signature of the decision statement; without one it is unproven, and does not count."""
    if not answer.signature.strip():
        return unproven(answer.approver, "prefect-api (no signature)")
    req = load_request(ledger, run_id, step)
    statement = decision_statement(
        run_id=run_id,
        step=step,
        binding=req.request.binding_hash,
        decision=answer.decision,
        person=answer.approver,
        reason=answer.justification,
    )
    try:
        person, fingerprint = verify(entitlements, statement, answer.signature)
    except IdentityError as exc:
        return unproven(answer.approver, f"prefect-api ({exc})")
    return Proof(
        person=person,
        method="ssh-key",
        account="prefect-api",
        key=fingerprint,
        statement=statement,
        signature=answer.signature,
    )


def _signed_binding(statement: str) -> str | None:
    """The binding a decision statement names (its ``binding`` line), or None."""
    for line in statement.splitlines():
        key, _, value = line.partition(" ")
        if key == "binding":
            return value.strip()
    return None


async def _record_ui_answer(
    ctx: RunContext, entitlements: Entitlements, step: str, answer: ApprovalInput
) -> None:
    try:
        proof = await in_thread(ctx, ui_proof, ctx.ledger, entitlements, ctx.run_id, step, answer)
        seen = (
            _signed_binding(proof.statement or "")
            or (
                await in_thread(ctx, load_request, ctx.ledger, ctx.run_id, step)
            ).request.binding_hash
        )
        await in_thread(
            ctx,
            decide,
            ctx.ledger,
            ctx.estate,
            entitlements,
            run_id=ctx.run_id,
            approver=answer.approver,
            decision=answer.decision,
            justification=answer.justification,
            proof=proof,
            # what the approver signed names the binding they saw; an unsigned answer is
            # refused for its proof, whatever it saw
            binding_seen=seen,
            step=step,
            via="prefect-ui",
        )
    except ApprovalError as exc:  # recorded as a refusal by decide()
        log.warning("approval of %s from the Prefect UI: %s", step, exc)


async def _judge(
    ctx: RunContext,
    entitlements: Entitlements,
    request: ApprovalRequest,
    targets: Sequence[str],
    now: datetime | None = None,
) -> ApprovalVerdict:
    """The verdict from the ledger alone, against the binding as it is now."""
    req = await in_thread(ctx, load_request, ctx.ledger, ctx.run_id, request.step)
    bound = await in_thread(ctx, current_binding, ctx, targets, request.step)
    judged = (
        request
        if bound == request.binding_hash
        else request.model_copy(update={"binding_hash": bound})
    )
    return check_approvals(
        judged, req.decisions, estate=ctx.estate, entitlements=entitlements, now=now or utcnow()
    )


async def _close(
    ctx: RunContext, step: str, request: ApprovalRequest, verdict: ApprovalVerdict
) -> ApprovalVerdict:
    payload = {
        "step": step,
        "binding_hash": request.binding_hash,
        "status": verdict.status,
        "counted": verdict.counted,
        "rejected_by": verdict.rejected_by,
        "refused": [
            {"approver": d.approver, "decision": d.decision, "why": why}
            for d, why in verdict.refused
        ],
        "flagged_for_review": verdict.flagged_for_review,
        "reason": verdict.reason,
    }
    await in_thread(ctx, ctx.ledger.append, "approval_verdict", ctx.run_id, payload)
    get_run_logger().info("approval of %s: %s: %s", step, verdict.status, verdict.reason)
    ctx.emit(step, "decided", f"{verdict.status}: {verdict.reason}")
    return verdict


def _how_to_answer(ctx: RunContext, request: ApprovalRequest) -> str:
    return (
        f"waiting for {request.required_approvers} approval(s) from {request.approver_group} "
        f"until {request.expires_at:%H:%M:%SZ}: openbell approve {ctx.run_id} "
        f"--step {request.step} --reason '...' (from your own account, or --key YOUR_KEY)"
    )


def approval_text(
    ctx: RunContext, request: ApprovalRequest, summary: str, changes: list[str]
) -> str:
    """The approval request as Slack shows it. Every field is text, not markup: an app
    named ``x <!channel> <http://evil|click>`` or holding a newline and "approved by alice"
    pings nobody, hides no link and forges no line (:func:`slack_field`)."""
    f = slack_field
    shown = changes[:20] + ([f"... and {len(changes) - 20} more"] if len(changes) > 20 else [])
    return (
        f"Approval needed: {f(ctx.runbook)} {f(ctx.region.upper())} {f(ctx.trade_date)}, step "
        f"{f(request.step)}, requested by {f(request.requester)}.\n{f(summary)}\n"
        + "\n".join(f"- {f(c)}" for c in shown)
        + f"\nBinding {request.binding_hash[:12]}; expires {request.expires_at:%Y-%m-%d %H:%M:%SZ}."
        f"\n{f(_how_to_answer(ctx, request))}"
    )


async def _announce(
    ctx: RunContext, request: ApprovalRequest, summary: str, changes: list[str]
) -> None:
    """Tell the region's channel what waits for whom; a failure is recorded, not raised."""
    channel = ctx.estate.region(ctx.region).slack_channel
    text = approval_text(ctx, request, summary, changes)
    try:
        ref = await in_thread(ctx, ctx.notifier.post, channel, text)
        delivery = Delivery(
            ok=True, kind="approval_request", channel=channel, ts=ref.ts, step=request.step
        )
    except Exception as exc:
        log.warning("approval request for %s not announced: %s", request.step, exc)
        delivery = Delivery(
            ok=False,
            kind="approval_request",
            channel=channel,
            step=request.step,
            error=redact(str(exc)),
        )
    await in_thread(ctx, ctx.ledger.record_notification, ctx.run_id, delivery)
