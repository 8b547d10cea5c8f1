"""The Slack app against signed requests built the way Slack signs them (no Slack).

The real slack-bolt ``App`` (``deployments/slack_app.py``) gets ``BoltRequest``s signed
with the test secret, as bolt's own tests build them; its Web API calls go to the local
Slack server (``tests/fixtures/slack.py``) through the real slack-sdk client. The estate
is the lab's: workspace T0LAB, users mapped in ``slack.users``, emea's channel
C0EMEAONCALL. Approval requests are written to a ledger of the test's own, as the gate
writes them; ``decide()`` is the CLI's.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import BoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from openbell.deployments.slack_app import APPROVE, MODAL, REJECT, build_app
from openbell.runbooks.loader import load_estate
from openbell.tasks.approvals.rules import ApprovalRequest, binding_hash
from openbell.tasks.ledger import Ledger
from tests.fixtures.slack import SlackApi

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
SECRET = "test-signing-secret"
EMEA = "C0EMEAONCALL"
RUN, STEP = "run-slack-1", "apps"


def signed(
    body: str, *, ts: int | None = None, secret: str = SECRET, sig: str | None = None
) -> BoltRequest:
    stamp = str(int(time.time()) if ts is None else ts)
    signature = sig or SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    headers = {
        "content-type": ["application/x-www-form-urlencoded"],
        "x-slack-request-timestamp": [stamp],
        "x-slack-signature": [signature],
    }
    return BoltRequest(body=body, headers=headers)


def slash(text: str, *, user: str = "UCAROL", team: str = "T0LAB", channel: str = EMEA,
          app_id: str = "A0OPENBELL") -> str:  # fmt: skip
    return urllib.parse.urlencode(
        {
            "command": "/openbell",
            "text": text,
            "user_id": user,
            "user_name": "alice",  # never read: who acts is the mapping of user_id
            "team_id": team,
            "channel_id": channel,
            "api_app_id": app_id,
            "response_url": "http://127.0.0.1:9/hooks/never-called",
            "trigger_id": f"{time.time_ns()}.1.x",
        }
    )


def interaction(payload: dict[str, Any]) -> str:
    return "payload=" + urllib.parse.quote(json.dumps(payload))


def click(value: str, *, user: str = "UCAROL", user_team: str = "T0LAB", channel: str = EMEA,
          message_ts: str = "1700000000.000101", action: str = APPROVE) -> str:  # fmt: skip
    return interaction(
        {
            "type": "block_actions",
            "api_app_id": "A0OPENBELL",
            "user": {"id": user, "username": "alice", "name": "alice", "team_id": user_team},
            "team": {"id": "T0LAB"},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "channel": {"id": channel},
            "trigger_id": f"{time.time_ns()}.2.y",
            "actions": [
                {"action_id": action, "block_id": "decision", "type": "button", "value": value,
                 "action_ts": f"{time.time():.6f}"},
            ],
        }
    )  # fmt: skip


def submission(meta: dict[str, Any], reason: str, *, user: str = "UCAROL") -> str:
    return interaction(
        {
            "type": "view_submission",
            "api_app_id": "A0OPENBELL",
            "user": {"id": user, "team_id": "T0LAB"},
            "team": {"id": "T0LAB"},
            "view": {
                "type": "modal",
                "callback_id": MODAL,
                "private_metadata": json.dumps(meta),
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input",
                                                           "value": reason}}}},
            },
        }
    )  # fmt: skip


def bound(*targets: str) -> str:
    params = {"region": "emea", "trade_date": date(2026, 12, 4), "dry_run": False}
    return binding_hash("1.0.0", params, list(targets))


class Harness:
    def __init__(self, slack_api: SlackApi, url: str) -> None:
        self.api, self.url = slack_api, url
        self.resumed: list[tuple[str, str, str]] = []
        client = WebClient(token=slack_api.token, base_url=slack_api.base_url)
        self.app = build_app(
            LAB,
            client=client,
            signing_secret=SECRET,
            ledger_url=url,
            resume=lambda fr, decided, who, verb: self.resumed.append((fr, who, verb)),
            process_before_response=True,
        )
        self.estate = load_estate(LAB)
        # the channel message a gate would have posted, so chat.update finds it
        self.message = client.chat_postMessage(channel=EMEA, text="approval needed")

    def send(self, body: str, **kw: Any) -> Any:
        return self.app.dispatch(signed(body, **kw))

    def entries(self, *kinds: str) -> list[Any]:
        with Ledger(self.url) as led:
            return led.entries(kinds=list(kinds))

    def open_request(self, binding: str, requester: str = "bob") -> str:
        req = ApprovalRequest.for_step(
            self.estate,
            run_id=RUN,
            runbook="sod",
            region="emea",
            step=STEP,
            requester=requester,
            binding_hash=binding,
            now=datetime.now(UTC),
            ttl=timedelta(minutes=30),
        )
        with Ledger(self.url) as led:
            if not led.entries(run_id=RUN, kinds=["run_started"]):
                started = {"runbook": "sod", "region": "emea", "trade_date": "2026-12-04",
                           "flow_run_id": "fr-1"}  # fmt: skip
                led.append("run_started", RUN, started)
            payload = {"request": req.model_dump(mode="json"), "summary": "start emea-oms",
                       "changes": ["start emea-oms@emea-app1"]}  # fmt: skip
            led.append("approval_requested", RUN, payload)
        return f"{RUN}|{STEP}|{binding}"


@pytest.fixture
def slack(slack_api: SlackApi, tmp_path: Path) -> Harness:
    return Harness(slack_api, f"sqlite:///{tmp_path / 'ledger.db'}")


# ---- requests that are not Slack's (SLACK.md checklist 1-3) --------------------------------
def test_only_requests_signed_now_with_our_secret_reach_a_handler(slack: Harness) -> None:
    body = slash("help")
    assert slack.send(body).status == 200
    assert slack.app.dispatch(BoltRequest(body=body, headers={})).status == 401  # unsigned
    assert slack.send(slash("help"), secret="another-secret").status == 401
    flipped = signed(slash("help"))
    flipped.raw_body = flipped.raw_body.replace("help", "helq")
    assert slack.app.dispatch(flipped).status == 401  # one body byte changed
    assert slack.send(slash("help"), ts=int(time.time()) - 301).status == 401
    assert slack.send(slash("help"), ts=int(time.time()) - 299).status == 200
    # malformed headers: an error answer, never a crash and never a handler
    bad = BoltRequest(
        body=slash("help"),
        headers={"x-slack-request-timestamp": ["abc"], "x-slack-signature": ["v0=\xff"]},
    )
    assert slack.app.dispatch(bad).status in (401, 500)
    seen = slack.entries("slack_request")
    assert len(seen) == 2  # only the two that verified got as far as the guard


def test_a_replayed_request_is_a_no_op(slack: Harness) -> None:
    request = signed(slash("help"))
    first = slack.app.dispatch(request)
    again = slack.app.dispatch(request)  # the same signed bytes, inside the window
    assert first.status == again.status == 200
    assert "usage: /openbell" in first.body and again.body == ""
    assert len(slack.entries("slack_request")) == 1


def test_who_acts_is_the_estates_mapping_of_the_user_id_never_a_name(slack: Harness) -> None:
    # user_name says alice; UCAROL is carol: the plan is answered, as carol
    ok = slack.send(slash("plan sod emea 2026-12-04"))
    assert ok.status == 200 and "Plan: start of day EMEA 2026-12-04" in ok.body
    for body, why in [
        (slash("help", user="UMALLORY"), "is nobody in the estate"),
        (slash("help", team="T0OTHER"), "workspace 'T0OTHER' is not one of the firm's"),
        (slash("help", app_id="A0SOMEONEELSE"), "not this one"),
    ]:
        answer = slack.send(body)
        assert answer.status == 200 and why in answer.body, answer.body
    refusals = [e.payload["reason"] for e in slack.entries("refusal")]
    assert len(refusals) == 3 and "UMALLORY" in refusals[0]


def test_commands_are_strict_words_from_closed_sets(slack: Harness) -> None:
    for text in ["sod emea; rm -rf /", "plan sod {{7*7}}", "plan 'sod", "run sod emea", "nonsense"]:
        answer = slack.send(slash(text))
        assert answer.status == 200
        assert "usage: /openbell" in answer.body or "error:" in answer.body, (text, answer.body)
    unknown = slack.send(slash("plan sod mars"))
    assert "apac" in unknown.body and "emea" in unknown.body  # the valid regions
    assert slack.entries("run_started") == []  # nothing ran


# ---- approvals with buttons (checklist 4, 5, 7, 8, 10, 12) ---------------------------------
def test_approve_by_button_and_reason_goes_through_decide_and_updates_the_message(
    slack: Harness,
) -> None:
    value = slack.open_request(bound("emea-oms@emea-app1"))
    listed = json.loads(slack.send(slash("approvals")).body)
    buttons = [e for b in listed["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["value"] for b in buttons] == [value, value]
    assert {b["action_id"] for b in buttons} == {APPROVE, REJECT}
    ts = slack.message["ts"]
    assert slack.send(click(value, message_ts=ts)).status == 200
    (modal,) = slack.api.views
    meta = json.loads(modal["private_metadata"])
    assert meta == {"run_id": RUN, "step": STEP, "binding": value.split("|")[2],
                    "verb": "approve", "channel": EMEA, "ts": ts}  # fmt: skip
    blank = slack.send(submission(meta, "   "))
    assert json.loads(blank.body)["response_action"] == "errors"
    assert slack.entries("approval_decided") == []
    done = slack.send(submission(meta, "plan checked in Slack"))
    assert done.status == 200 and done.body == ""
    (decided,) = slack.entries("approval_decided")
    assert decided.payload["via"] == "slack"
    d = decided.payload["decision"]
    assert (d["approver"], d["decision"], d["justification"]) == (
        "carol", "approve", "plan checked in Slack",
    )  # fmt: skip
    assert d["proof"]["method"] == "slack" and d["proof"]["account"] == "slack:T0LAB/UCAROL"
    deadline = time.monotonic() + 10
    while not (slack.api.updates and slack.resumed) and time.monotonic() < deadline:
        time.sleep(0.05)
    update = slack.api.updates[-1]
    assert update["ts"] == ts and "approved by carol" in json.dumps(update["blocks"])
    assert all(b["type"] != "actions" for b in update["blocks"])  # the buttons are gone
    assert slack.resumed == [("fr-1", "carol", "approve")]


def test_clicks_that_must_not_count_are_refused_and_recorded(slack: Harness) -> None:
    old = slack.open_request(bound("emea-oms@emea-app1"))
    current = slack.open_request(bound("emea-oms@emea-app1", "emea-risk@emea-app1"))
    cases = [
        (click(old), "the plan changed"),  # an old message: its request was replaced
        (click(current, user="UBOB"), "four eyes, not your own"),  # bob requested it
        (click(current, user="UDAVE"), "may not approve"),  # dave: not emea's approver
        (click(current, channel="C0APACONCALL"), "decisions are taken in its channel"),
        (click(current, user_team="T0EXTERNAL"), "not the firm's"),  # Slack Connect
        (click("run-x|apps|" + "0" * 64), "no approval"),  # a value naming no request
    ]
    for body, why in cases:
        assert slack.send(body).status == 200
        assert why in slack.entries("refusal")[-1].payload["reason"], why
    assert slack.api.views == []  # no modal opened for any of them
    assert slack.entries("approval_decided") == []
    told = [m["text"] for m in slack.api.ephemeral]
    assert any("the plan changed" in t for t in told)
    # a modal opened on the current request, then the plan changes before the submit
    slack.send(click(current))
    meta = json.loads(slack.api.views[-1]["private_metadata"])
    slack.open_request(bound("emea-oms@emea-app1", "emea-risk@emea-app1", "emea-fixgw@emea-gw1"))
    late = json.loads(slack.send(submission(meta, "checked")).body)
    assert late["response_action"] == "errors" and "plan changed" in late["errors"]["reason"]
    assert slack.entries("approval_decided") == []


def test_openbell_slack_names_the_secrets_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from openbell.deployments.cli import app
    from openbell.settings import get_settings

    for name in (
        "OPENBELL_SLACK_TOKEN",
        "OPENBELL_SLACK_SIGNING_SECRET",
        "OPENBELL_SLACK_APP_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["slack", "--estate", str(LAB)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "OPENBELL_SLACK_TOKEN, OPENBELL_SLACK_SIGNING_SECRET, OPENBELL_SLACK_APP_TOKEN" in (
        result.output
    )
