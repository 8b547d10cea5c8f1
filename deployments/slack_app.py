"""The Slack app: ``/openbell`` and approval buttons, with the CLI's rules.

Built on slack-bolt (:func:`build_app`). Bolt checks a request's signature and its
five-minute window, and nothing else (``../shared/SLACK.md``); before any handler runs,
:func:`guard` also refuses:

- a request seen before (the same signature, or for Socket Mode the same payload): every
  request is recorded in the ledger (``slack_request``, its ref the sha256 of what
  identifies it), so a replay inside the window is a no-op, across restarts too;
- a request for another app (``api_app_id``), from a workspace or org that is not the
  firm's (the team and the user's own team: a Slack Connect user from another company
  can do nothing), or from an externally shared channel;
- a user the estate does not map (``slack.users``: ``T0LAB/UALICE: alice``). Who acts is
  only ever that mapping of the user's id: display names and anything else the payload
  says about its user are never read.

Each refusal is recorded in the ledger and answered to the caller alone.

An approval is a click (Approve or Reject, the button's value naming the run, the step and
the binding hash its message showed), then a modal for the mandatory reason, then
``decide(via="slack")``, the one the CLI uses, given that binding: a click on an old
message whose request was replaced, after expiry, a second decision, the requester's own
click or a click by someone not entitled is refused with the reason (and recorded). The
channel message is then updated in place with who decided, when and why, without its
buttons; the waiting flow run is resumed off the listener thread.

Listeners never wait on Prefect or SSH: they acknowledge, write the ledger, hand off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient

from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate, SlackApp
from openbell.tasks.connectors.notify import slack_field

log = logging.getLogger(__name__)

COMMAND = "/openbell"
APPROVE, REJECT = "openbell_approve", "openbell_reject"
MODAL = "openbell_decision"
#: bigger bodies are refused before they are parsed (Slack's own stay far below)
MAX_BODY = 64 * 1024
USAGE = "usage: /openbell plan RUNBOOK REGION [YYYY-MM-DD] | approvals | status [RUN] | help"

for _name in ("slack_bolt", "slack_sdk"):
    # bolt logs a failed request's whole body (response_url included) at INFO
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class Caller:
    """Who a request is from, as the estate knows them."""

    person: str
    identity: str  # slack:<team or org>/<user>
    user: str
    channel: str | None


class Refused(OpenbellError):
    """A request the app does nothing for, and why (said to the caller, recorded)."""


# ---- who and what ------------------------------------------------------------------------
def request_key(body: dict[str, Any], headers: dict[str, Any]) -> str:
    """What identifies one delivery: its signature (HTTP), else its payload (Socket Mode
    redelivers the same payload)."""
    signature = headers.get("x-slack-signature")
    if isinstance(signature, list):
        signature = signature[0] if signature else None
    raw = signature or json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(str(raw).encode()).hexdigest()


def _user_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(user id, the user's own team id) from a slash command or an interaction."""
    user = body.get("user")
    if isinstance(user, dict):
        return user.get("id"), user.get("team_id")
    return body.get("user_id"), body.get("team_id")


def _team_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(team id, enterprise id) of the workspace the request came from."""
    team = body.get("team")
    if isinstance(team, dict):
        ent = (body.get("enterprise") or {}).get("id") if body.get("enterprise") else None
        return team.get("id"), ent or team.get("enterprise_id")
    return body.get("team_id"), body.get("enterprise_id")


def _channel_of(body: dict[str, Any]) -> str | None:
    if isinstance(body.get("channel"), dict):
        return str(body["channel"].get("id") or "") or None
    if isinstance(body.get("container"), dict) and body["container"].get("channel_id"):
        return str(body["container"]["channel_id"])
    return body.get("channel_id")


def caller_of(slack: SlackApp, entitlements: Any, body: dict[str, Any]) -> Caller:
    """The person a request is from; raises :class:`Refused` for anything not the firm's."""
    if body.get("api_app_id") != slack.app_id:
        raise Refused(f"a request for app {body.get('api_app_id')!r}, not this one")
    team, enterprise = _team_of(body)
    user, user_team = _user_of(body)
    if not user:
        raise Refused("a request without a user")
    if slack.enterprise is not None and enterprise not in (None, slack.enterprise):
        raise Refused(f"org {enterprise!r} is not the firm's")
    in_org = slack.enterprise is not None and enterprise == slack.enterprise
    if team not in slack.workspaces and not in_org:
        raise Refused(f"workspace {team!r} is not one of the firm's")
    if user_team is not None and user_team not in slack.workspaces:
        raise Refused(f"user {user} belongs to workspace {user_team!r}, not the firm's")
    channel = body.get("channel")
    shared = channel.get("is_ext_shared_channel") if isinstance(channel, dict) else None
    if shared or body.get("is_ext_shared_channel") in (True, "true"):
        raise Refused("nothing is decided in a channel shared with another organisation")
    org = enterprise if in_org else user_team or team
    identity = slack.identity(str(org), str(user))
    person = entitlements.person_of(identity)
    if person is None:
        raise Refused(
            f"Slack user {org}/{user} is nobody in the estate: ask for slack.users to map "
            "you to your openbell person"
        )
    return Caller(person=person, identity=identity, user=str(user), channel=_channel_of(body))


# ---- the app -----------------------------------------------------------------------------
def build_app(
    estate_path: Path | str | None,
    *,
    client: WebClient,
    signing_secret: str,
    ledger_url: str | None = None,
    resume: Callable[[str, Any, str, str], Any] | None = None,
    process_before_response: bool = False,
) -> App:
    """The bolt app for an estate (its ``slack`` block must be there).

    Args:
        estate_path: the estate file (re-read on every request: a changed mapping or
            entitlements file counts at once).
        client: the Web API client (``base_url`` a local server in tests and the demo).
        signing_secret: the app's signing secret (bolt refuses an empty one).
        ledger_url: the ledger (default: the settings').
        resume: how a decided run is woken (default :func:`resume_run`), called off the
            listener thread with (flow run id, decided, person, verb).
        process_before_response: run listeners before answering (HTTP tests).
    """
    from openbell.runbooks.loader import load_estate

    if not signing_secret:
        raise OpenbellError(
            "the Slack app needs its signing secret (OPENBELL_SLACK_SIGNING_SECRET)"
        )
    first = load_estate(estate_path)
    if first.slack is None:
        raise OpenbellError(
            f"{first.source}: no slack block: the app needs slack.app_id, slack.workspaces "
            "and slack.users (see runbooks/lab.yaml)"
        )
    app = App(
        client=client,
        signing_secret=signing_secret,
        token_verification_enabled=False,
        process_before_response=process_before_response,
        logger=log,
    )
    seen_lock = threading.Lock()

    def estate_now() -> Estate:
        estate = load_estate(estate_path)
        if estate.slack is None:
            raise Refused("the estate no longer has a slack block")
        return estate

    def ledger() -> Any:
        from openbell.tasks.ledger import Ledger

        return Ledger(ledger_url)

    def refuse(
        caller: str, action: str, reason: str, region: str = "*", run_id: str | None = None
    ) -> None:
        with ledger() as led:
            led.record_refusal(
                who=caller,
                action=action,
                runbook="slack",
                region=region,
                reason=reason,
                run_id=run_id,
            )

    @app.middleware
    def guard(body: dict[str, Any], request: Any, context: Any, next: Callable[[], Any]) -> Any:
        from openbell.runbooks.entitlements import entitlements_for

        if len(request.raw_body or "") > MAX_BODY:
            return BoltResponse(status=413, body="request too large")
        key = request_key(body, request.headers)
        with seen_lock, ledger() as led:
            if led.entries(kinds=["slack_request"], ref=key, limit=1):
                log.warning("a Slack request seen before (replay or redelivery): ignored")
                return BoltResponse(status=200, body="")
            user, _ = _user_of(body)
            led.append(
                "slack_request",
                None,
                {"type": body.get("type") or "command", "user": user, "channel": _channel_of(body)},
                ref=key,
            )
        try:
            estate = estate_now()
            assert estate.slack is not None
            caller = caller_of(estate.slack, entitlements_for(estate), body)
        except Refused as exc:
            user, team = _user_of(body)
            refuse(f"slack:{team}/{user}", "slack", str(exc))
            return BoltResponse(status=200, body=f"refused: {exc}")
        context["caller"] = caller
        context["estate"] = estate
        context["request_key"] = key
        return next()

    @app.command(COMMAND)
    def command(ack: Any, body: dict[str, Any], context: Any) -> None:
        caller: Caller = context["caller"]
        try:
            text, blocks = answer_command(context["estate"], caller, body.get("text") or "", ledger)
        except Refused as exc:
            refuse(caller.identity, "slack", str(exc))
            text, blocks = f"refused: {exc}", None
        except OpenbellError as exc:
            text, blocks = f"error: {slack_field(str(exc))}", None
        ack(response_type="ephemeral", text=text, **({"blocks": blocks} if blocks else {}))

    @app.action(APPROVE)
    @app.action(REJECT)
    def click(ack: Any, body: dict[str, Any], context: Any, client: WebClient) -> None:
        ack()
        caller: Caller = context["caller"]
        action = body["actions"][0]
        verb = "approve" if action["action_id"] == APPROVE else "reject"
        try:
            meta = check_click(context["estate"], caller, str(action.get("value") or ""), ledger)
        except Refused as exc:
            refuse(caller.identity, verb, str(exc))
            _tell(client, caller, f"refused: {exc}")
            return
        container = body.get("container") or {}
        meta.update(verb=verb, channel=caller.channel, ts=container.get("message_ts"))
        client.views_open(trigger_id=body["trigger_id"], view=reason_modal(meta))

    @app.view(MODAL)
    def submit(ack: Any, body: dict[str, Any], context: Any, client: WebClient) -> None:
        caller: Caller = context["caller"]
        meta = json.loads(body["view"].get("private_metadata") or "{}")
        values = body["view"].get("state", {}).get("values", {})
        reason = str((values.get("reason", {}).get("reason") or {}).get("value") or "")
        if not reason.strip():
            ack(response_action="errors", errors={"reason": "a decision needs a reason"})
            return
        try:
            decided = record_decision(
                context["estate"], caller, meta, reason, context["request_key"], ledger
            )
        except Refused as exc:
            refuse(caller.identity, str(meta.get("verb")), str(exc), run_id=meta.get("run_id"))
            ack(response_action="errors", errors={"reason": f"refused: {exc}"})
            return
        ack()
        threading.Thread(
            target=_after_decision,
            args=(client, caller, meta, reason, decided, resume),
            daemon=True,
            name="openbell-slack-resume",
        ).start()

    return app


def _tell(client: WebClient, caller: Caller, text: str) -> None:
    """A line only the caller sees (a refusal); a failure to say it is only logged."""
    if not caller.channel:
        return
    try:
        client.chat_postEphemeral(channel=caller.channel, user=caller.user, text=text)
    except Exception as exc:  # never fail the request because Slack did not take the notice
        log.warning("could not tell %s: %s", caller.person, type(exc).__name__)


# ---- commands ----------------------------------------------------------------------------
def answer_command(
    estate: Estate, caller: Caller, text: str, ledger: Callable[[], Any]
) -> tuple[str, list[dict[str, Any]] | None]:
    """The answer to ``/openbell TEXT``: strict words from closed sets, never a template or
    a shell. Raises :class:`OpenbellError` (an unknown runbook or region lists the valid ones)."""
    from openbell import catalog

    try:
        words = shlex.split(text)
    except ValueError:
        return USAGE, None
    if not words or words[0] == "help":
        return USAGE, None
    verb, args = words[0], words[1:]
    if verb == "plan":
        if len(args) not in (2, 3):
            return USAGE, None
        runbook = catalog.get(args[0])
        estate.region(args[1])  # an unknown region lists the valid ones
        try:
            day = date.fromisoformat(args[2]) if len(args) == 3 else None
        except ValueError:
            return f"{slack_field(args[2])}: expected a date YYYY-MM-DD\n{USAGE}", None
        return _plan_text(estate, runbook, args[1].lower(), day), None
    if verb == "approvals" and not args:
        return _approvals(estate, ledger)
    if verb == "status" and len(args) <= 1:
        return _status(ledger, args[0] if args else None), None
    return USAGE, None


def _plan_text(estate: Estate, runbook: Any, region: str, day: date | None) -> str:
    from openbell.flows.engine import today_in
    from openbell.flows.plan import build_plan

    plan = build_plan(runbook, estate, region, day or today_in(estate, region))
    lines = [f"Plan: {runbook.title} {region.upper()} {plan.trade_date}"]
    if not plan.runs:
        lines.append(f"does not run: {plan.skip_reason}")
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"{i}. {step.title}: {len(step.actions)} action(s)")
    text = "\n".join(slack_field(line) for line in lines)
    return text[:2900] + ("\n... (openbell plan for the whole plan)" if len(text) > 2900 else "")


def decision_value(run_id: str, step: str, binding: str) -> str:
    """A button's value: an opaque handle the server re-loads, never trusted for more."""
    return f"{run_id}|{step}|{binding}"


def approval_blocks(req: Any) -> list[dict[str, Any]]:
    """A request as Slack shows it: its text, then Approve and Reject bound to it."""
    r = req.request
    value = decision_value(r.run_id, r.step, r.binding_hash)
    text = (
        f"*{slack_field(r.runbook)} {slack_field(r.region.upper())}* step "
        f"{slack_field(r.step)}, requested by {slack_field(r.requester)}: "
        f"{slack_field(req.summary)}\nBinding {r.binding_hash[:12]}; expires "
        f"{r.expires_at:%Y-%m-%d %H:%M:%SZ}; {r.required_approvers} of "
        f"{slack_field(r.approver_group)}"
    )
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
        {
            "type": "actions",
            "block_id": f"decision-{r.binding_hash[:12]}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "style": "primary",
                    "value": value,
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": REJECT,
                    "style": "danger",
                    "value": value,
                    "text": {"type": "plain_text", "text": "Reject"},
                },
            ],
        },
    ]


def _approvals(
    estate: Estate, ledger: Callable[[], Any]
) -> tuple[str, list[dict[str, Any]] | None]:
    from openbell.tasks.approvals.gate import pending_requests

    with ledger() as led:
        waiting = pending_requests(led)
    if not waiting:
        return "no approval requests waiting", None
    blocks: list[dict[str, Any]] = []
    for req in waiting[:20]:
        blocks += approval_blocks(req)
    return f"{len(waiting)} approval request(s) waiting", blocks[:50]


def _status(ledger: Callable[[], Any], run: str | None) -> str:
    with ledger() as led:
        started = led.entries(kinds=["run_started"])
        finished = {e.run_id: e for e in led.entries(kinds=["run_finished"])}
    if run:
        started = [e for e in started if e.run_id and e.run_id.startswith(run)]
        if not started:
            return f"no run {slack_field(run)} in the ledger"
    lines = []
    for e in started[-10:]:
        done = finished.get(e.run_id)
        state = str(done.payload.get("status")) if done else "running"
        p = e.payload
        lines.append(
            f"{slack_field(p.get('runbook'))} {slack_field(str(p.get('region')).upper())} "
            f"{slack_field(p.get('trade_date'))}: {slack_field(state)} (run {e.run_id})"
        )
    return "\n".join(lines) or "no runs in the ledger"


# ---- decisions ---------------------------------------------------------------------------
def _request_for(value: str, ledger: Callable[[], Any]) -> tuple[Any, str]:
    from openbell.tasks.approvals.gate import ApprovalError, load_request

    try:
        run_id, step, binding = value.split("|")
    except ValueError:
        raise Refused("a button this app did not make") from None
    try:
        with ledger() as led:
            req = load_request(led, run_id, step)
    except ApprovalError as exc:
        raise Refused(str(exc)) from None
    return req, binding


def check_click(
    estate: Estate, caller: Caller, value: str, ledger: Callable[[], Any]
) -> dict[str, Any]:
    """The fast checks at the click (again at submit): the request is open, not expired,
    bound to what the message showed, in its region's channel; the caller may approve
    there and is not the requester. Returns what the modal carries."""
    from openbell.outcome import utcnow
    from openbell.runbooks.entitlements import entitlements_for

    req, binding = _request_for(value, ledger)
    r = req.request
    if req.closed is not None:
        raise Refused(f"run {r.run_id} step {r.step}: already {req.closed}")
    if r.expires_at <= utcnow():
        raise Refused(f"run {r.run_id} step {r.step}: expired at {r.expires_at:%H:%M:%SZ}")
    if binding != r.binding_hash:
        raise Refused(
            f"run {r.run_id} step {r.step}: this message shows binding {binding[:12]}, the open "
            f"request is bound to {r.binding_hash[:12]} (the plan changed): decide on the "
            "request as it is now (/openbell approvals)"
        )
    assert estate.slack is not None
    channel = estate.slack.channels.get(r.region)
    if channel is None or caller.channel != channel:
        raise Refused(f"{r.region} decisions are taken in its channel ({channel or 'none set'})")
    ents = entitlements_for(estate)
    allowed = ents.decide(caller.person, "approve", r.runbook, r.region)
    if not allowed.allowed:
        raise Refused(allowed.reason)
    if ents.person_of(r.requester) == caller.person:
        raise Refused(f"{caller.person} requested run {r.run_id}: four eyes, not your own")
    return {"run_id": r.run_id, "step": r.step, "binding": r.binding_hash}


def reason_modal(meta: dict[str, Any]) -> dict[str, Any]:
    verb = "Approve" if meta["verb"] == "approve" else "Reject"
    return {
        "type": "modal",
        "callback_id": MODAL,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": f"{verb} {meta['step']}"[:24]},
        "submit": {"type": "plain_text", "text": verb},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Why (kept in the ledger)"},
                "element": {"type": "plain_text_input", "action_id": "reason", "multiline": True},
            }
        ],
    }


def record_decision(
    estate: Estate,
    caller: Caller,
    meta: dict[str, Any],
    reason: str,
    request_key: str,
    ledger: Callable[[], Any],
) -> Any:
    """Everything checked again, then the one ``decide()``, as the CLI does."""
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.identity import Proof
    from openbell.tasks.approvals.gate import ApprovalError, decide

    value = decision_value(str(meta.get("run_id")), str(meta.get("step")), str(meta.get("binding")))
    # a view submission names no channel: the one the click came from, which the app put
    # in the modal's private_metadata (Slack hands it back as it was set)
    at = Caller(caller.person, caller.identity, caller.user, meta.get("channel"))
    checked = check_click(estate, at, value, ledger)
    verb = "reject" if meta.get("verb") == "reject" else "approve"
    facts = {
        "identity": caller.identity,
        "channel": caller.channel,
        "message_ts": meta.get("ts"),
        "request": request_key,
    }
    proof = Proof(
        person=caller.person,
        method="slack",
        account=caller.identity,
        host=f"slack:{caller.channel}",
        statement=json.dumps(facts, sort_keys=True),
    )
    try:
        with ledger() as led:
            return decide(
                led,
                estate,
                entitlements_for(estate),
                run_id=checked["run_id"],
                approver=caller.person,
                decision=verb,  # type: ignore[arg-type]
                justification=reason,
                proof=proof,
                binding_seen=str(meta.get("binding")),
                step=checked["step"],
                via="slack",
            )
    except ApprovalError as exc:
        raise Refused(str(exc)) from None


def decided_blocks(meta: dict[str, Any], person: str, reason: str, status: str) -> list[Any]:
    from openbell.outcome import utcnow

    verb = "approved" if meta.get("verb") == "approve" else "rejected"
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"run {slack_field(meta.get('run_id'))} step {slack_field(meta.get('step'))}: "
                    f"{verb} by {slack_field(person)} at {utcnow():%Y-%m-%d %H:%M:%SZ}: "
                    f"{slack_field(reason)} (verdict: {slack_field(status)})"
                )[:2900],
            },
        }
    ]


def _after_decision(
    client: WebClient,
    caller: Caller,
    meta: dict[str, Any],
    reason: str,
    decided: Any,
    resume: Callable[[str, Any, str, str], Any] | None,
) -> None:
    """Off the listener thread: the message updated in place (no buttons), the run woken."""
    if meta.get("channel") and meta.get("ts"):
        try:
            client.chat_update(
                channel=meta["channel"],
                ts=meta["ts"],
                text=f"{meta.get('step')}: {meta.get('verb')} by {caller.person}",
                blocks=decided_blocks(meta, caller.person, reason, decided.verdict.status),
            )
        except Exception as exc:
            log.warning("approval message not updated: %s", type(exc).__name__)
    flow_run_id = decided.request.flow_run_id
    if flow_run_id:
        from openbell.tasks.approvals.gate import resume_run

        wake = resume or resume_run
        try:
            wake(str(flow_run_id), decided, caller.person, str(meta.get("verb")))
        except Exception as exc:  # the decision is in the ledger: the run reads it there
            log.warning("run %s not resumed: %s", meta.get("run_id"), exc)
