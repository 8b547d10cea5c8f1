"""Run notifications through the real slack-sdk client against a local Slack Web API."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from rich.console import Console
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from openbell.errors import NotifyError
from openbell.outcome import Status
from openbell.secrets import register
from openbell.settings import Settings
from openbell.tasks.connectors.notify import (
    ConsoleNotifier,
    Delivery,
    MessageRef,
    Notifier,
    RunNotice,
    SlackNotifier,
    StepNotice,
    TargetNotice,
    get_notifier,
    notify_run,
)
from tests.fixtures.services import free_port
from tests.fixtures.slack import SlackApi

CANARY = "s3cr3t+++$\\"
STARTED = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
FINISHED = datetime(2026, 11, 27, 6, 4, 12, tzinfo=UTC)


def notice(
    steps: list[Any],
    *,
    title: str = "Start of day EMEA 2026-11-27",
    status: Status = Status.FAILED,
    **kw: Any,
) -> RunNotice:
    return RunNotice(
        runbook="sod",
        region="emea",
        trade_date=date(2026, 11, 27),
        status=status,
        title=title,
        run_id=kw.pop("run_id", "run-42"),
        started=STARTED,
        finished=FINISHED,
        steps=steps,
        **kw,
    )


MIXED = [
    StepNotice("calendar", Status.OK, "XLON session 08:00-16:30"),
    StepNotice(
        "disk",
        Status.FAILED,
        "1 of 2 hosts over 90%",
        [TargetNotice("emea-app1:/", Status.FAILED, "93% used")],
    ),
    StepNotice("apps", Status.CHANGED, "started emea-refdata"),
    (
        "fix",
        Status.UNKNOWN,
        "1 session unanswered",
        [("emea-oe", Status.UNKNOWN, "connection lost after Logon")],
    ),
    (
        "feeds",
        Status.FAILED,
        "2 feeds stale",
        [
            ("emea-equities", Status.FAILED, "stale: 12.0 s"),
            ("emea-futures", Status.FAILED, "stale: 30.0 s"),
        ],
    ),
]


def slack(api: SlackApi, **kw: Any) -> SlackNotifier:
    return SlackNotifier(kw.pop("token", api.token), base_url=api.base_url, **kw)


def texts(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"])


def test_fixture_speaks_slack_to_the_real_client(slack_api: SlackApi) -> None:
    assert slack_api.base_url.endswith("/api/")
    client = WebClient(token=slack_api.token, base_url=slack_api.base_url)
    assert client.auth_test()["team_id"] == "T0LAB"
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=slack_api.base_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"
    assert slack_api.requests[0].headers["authorization"] == f"Bearer {slack_api.token}"


def test_summary_then_threaded_details(slack_api: SlackApi) -> None:
    deliveries = notify_run(
        slack(slack_api), "#emea-oncall", notice(MIXED, report_path="/reports/run-42.html")
    )
    assert [(d.kind, d.ok, d.step) for d in deliveries] == [
        ("summary", True, None),
        ("detail", True, "disk"),
        ("detail", True, "fix"),
        ("detail", True, "feeds"),
    ]
    summary, *replies = slack_api.messages
    assert summary["channel"] == "C0EMEAONCALL"
    assert "thread_ts" not in summary
    assert deliveries[0].ts == summary["ts"]
    header = summary["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == ":x: sod · EMEA · 2026-11-27 · FAILED"
    fields = next(b["fields"] for b in summary["blocks"] if "fields" in b)
    assert [f["text"] for f in fields] == [
        ":white_check_mark: *ok*\n1 step",
        ":large_blue_circle: *changed*\n1 step",
        ":x: *failed*\n2 steps",
        ":grey_question: *unknown*\n1 step",
    ]
    context = summary["blocks"][-1]["elements"][0]["text"]
    assert "run `run-42`" in context and "took 4m 12s" in context
    assert "/reports/run-42.html" in context
    assert summary["text"] == ":x: Start of day EMEA 2026-11-27: FAILED"
    assert [r["thread_ts"] for r in replies] == [summary["ts"]] * 3
    assert all(r["channel"] == "C0EMEAONCALL" for r in replies)
    assert [d.thread_ts for d in deliveries[1:]] == [summary["ts"]] * 3
    assert "emea-app1:/" in texts(replies[0]) and "93% used" in texts(replies[0])
    assert "connection lost after Logon" in texts(replies[1])
    assert "emea-futures" in texts(replies[2])


def test_a_clean_run_has_no_thread(slack_api: SlackApi) -> None:
    steps = [StepNotice("disk", Status.OK, "fine"), StepNotice("fix", Status.OK, "fine")]
    deliveries = notify_run(slack(slack_api), "#emea-oncall", notice(steps, status=Status.OK))
    assert [d.kind for d in deliveries] == ["summary"]
    assert len(slack_api.messages) == 1


def test_200_failed_targets_fit_slacks_limits(slack_api: SlackApi) -> None:
    targets = [
        TargetNotice(f"host{i:03d}", Status.FAILED, f"disk {90 + i % 10}% used") for i in range(200)
    ]
    deliveries = notify_run(
        slack(slack_api),
        "#emea-oncall",
        notice([StepNotice("disk", Status.FAILED, "200 hosts over", targets)]),
    )
    assert all(d.ok for d in deliveries), deliveries
    replies = slack_api.thread(deliveries[0].ts or "")
    assert len(replies) == 1
    sections = [b for b in replies[0]["blocks"] if b["type"] == "section"]
    assert len(sections) > 2  # the lines were split into several sections
    assert all(len(s["text"]["text"]) <= 3000 for s in sections)
    body = texts(replies[0])
    assert all(f"host{i:03d}" in body for i in range(200))


def test_long_details_are_split_across_replies(slack_api: SlackApi) -> None:
    long = "x" * 1400  # two lines no longer fit one 3000-character section
    targets = [TargetNotice(f"host{i:03d}", Status.FAILED, f"{i}: {long}") for i in range(200)]
    deliveries = notify_run(
        slack(slack_api),
        "#emea-oncall",
        notice([StepNotice("logs", Status.FAILED, "not rotated", targets)]),
    )
    assert all(d.ok for d in deliveries), [d.error for d in deliveries if not d.ok]
    replies = slack_api.thread(deliveries[0].ts or "")
    assert len(replies) == len(deliveries) - 1 >= 3
    assert all(len(r["blocks"]) <= 50 for r in replies)
    assert replies[1]["text"].endswith(f"(part 2/{len(replies)})")
    body = "".join(texts(r) for r in replies)
    assert all(body.count(f"`host{i:03d}`") == 1 for i in range(200))


def test_canary_secret_never_reaches_slack(slack_api: SlackApi) -> None:
    register(CANARY)
    steps = [
        StepNotice(
            f"step {CANARY}",
            Status.FAILED,
            f"password {CANARY} rejected",
            [TargetNotice(f"db://u:{CANARY}@h", Status.FAILED, f"auth {CANARY}")],
        )
    ]
    deliveries = notify_run(
        slack(slack_api),
        "#emea-oncall",
        notice(steps, title=f"SOD {CANARY}", run_id=CANARY, report_path=f"/r/{CANARY}"),
    )
    assert all(d.ok for d in deliveries)
    received = slack_api.raw()
    assert "***" in received
    assert CANARY not in received
    assert json.dumps(CANARY)[1:-1] not in received  # nor JSON-escaped


def test_mentions_and_links_in_names_stay_text(slack_api: SlackApi) -> None:
    steps = [
        StepNotice(
            "fix",
            Status.FAILED,
            "<!channel> wake up",
            [TargetNotice("<http://evil|click>", Status.FAILED, "a & b")],
        )
    ]
    notify_run(slack(slack_api), "#emea-oncall", notice(steps))
    received = slack_api.raw()
    assert "<!channel>" not in received and "<http://evil" not in received
    assert "&lt;!channel&gt;" in received and "a &amp; b" in received


@pytest.mark.parametrize(
    ("notifier_kw", "channel", "error"),
    [
        ({"token": "xoxb-wrong"}, "#emea-oncall", "invalid_auth"),
        ({}, "#nowhere", "channel_not_found"),
    ],
)
def test_slack_errors_become_failed_deliveries(
    slack_api: SlackApi,
    caplog: pytest.LogCaptureFixture,
    notifier_kw: dict[str, Any],
    channel: str,
    error: str,
) -> None:
    deliveries = notify_run(slack(slack_api, **notifier_kw), channel, notice(MIXED))
    assert len(deliveries) == 1  # no summary, so no thread for the details
    assert deliveries[0].ok is False
    assert error in (deliveries[0].error or "")
    assert slack_api.messages == []
    assert error in caplog.text


def test_slack_down_is_a_failed_delivery() -> None:
    notifier = SlackNotifier(
        "xoxb-any", base_url=f"http://127.0.0.1:{free_port()}/api/", timeout_s=2
    )
    deliveries = notify_run(notifier, "#emea-oncall", notice(MIXED))
    assert [(d.kind, d.ok) for d in deliveries] == [("summary", False)]
    assert "Connection refused" in (deliveries[0].error or "")


def test_short_rate_limit_is_retried_once(slack_api: SlackApi) -> None:
    slack_api.rate_limit(1, retry_after=0)
    ref = slack(slack_api).post("#ops", "hello")
    assert ref == MessageRef(channel="C0OPS", ts=slack_api.messages[0]["ts"])


def test_long_or_repeated_rate_limit_gives_up(slack_api: SlackApi) -> None:
    slack_api.rate_limit(1, retry_after=60)
    with pytest.raises(NotifyError, match="ratelimited"):
        slack(slack_api, max_rate_limit_wait_s=5).post("#ops", "hello")
    slack_api.rate_limit(3, retry_after=0)
    deliveries = notify_run(slack(slack_api), "#ops", notice(MIXED))
    assert deliveries[0].ok is False
    assert "ratelimited (HTTP 429)" in (deliveries[0].error or "")
    assert len(slack_api.requests) == 1 + 2  # one try, then one retry: bounded


def test_a_failed_detail_does_not_stop_the_others(slack_api: SlackApi) -> None:
    class Flaky:
        def __init__(self, inner: Notifier) -> None:
            self.inner, self.calls = inner, 0

        def post(
            self,
            channel: str,
            text: str,
            blocks: list[dict[str, Any]] | None = None,
            thread_ts: str | None = None,
        ) -> MessageRef:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return self.inner.post(channel, text, blocks=blocks, thread_ts=thread_ts)

    deliveries = notify_run(Flaky(slack(slack_api)), "#emea-oncall", notice(MIXED))
    assert [d.ok for d in deliveries] == [True, False, True, True]
    assert deliveries[1].error == "RuntimeError: boom"


def test_a_malformed_notice_is_a_failed_delivery(slack_api: SlackApi) -> None:
    bad = notice([("disk", "not-a-status", "?", [])])
    deliveries = notify_run(slack(slack_api), "#emea-oncall", bad)
    assert [(d.ok, d.kind) for d in deliveries] == [(False, "summary")]
    assert slack_api.messages == []


def test_console_sink_writes_jsonl(tmp_path: Path) -> None:
    register(CANARY)
    out = io.StringIO()
    notifier = ConsoleNotifier(tmp_path, console=Console(file=out, width=120))
    steps = [*MIXED, StepNotice("clock", Status.FAILED, f"key {CANARY}")]
    deliveries = notify_run(notifier, "#emea-oncall", notice(steps))
    assert all(d.ok for d in deliveries)
    jsonl = (tmp_path / "notifications.jsonl").read_text()
    lines = [json.loads(line) for line in jsonl.splitlines()]
    assert len(lines) == len(deliveries) == 5
    assert lines[0]["channel"] == "#emea-oncall" and lines[0]["thread_ts"] is None
    assert {line["thread_ts"] for line in lines[1:]} == {lines[0]["ts"]}
    assert len({line["ts"] for line in lines}) == 5
    assert CANARY not in jsonl
    printed = out.getvalue()
    assert "sod · EMEA · 2026-11-27 · FAILED" in printed
    assert CANARY not in printed


def test_get_notifier_picks_slack_only_with_a_token(tmp_path: Path, slack_api: SlackApi) -> None:
    console = get_notifier(Settings(home=tmp_path, slack_token=None))
    assert isinstance(console, ConsoleNotifier)
    real = get_notifier(
        Settings(
            home=tmp_path, slack_token=SecretStr(slack_api.token), slack_base_url=slack_api.base_url
        )
    )
    assert isinstance(real, SlackNotifier)
    assert isinstance(real, Notifier)
    assert real.post("#ops", "alert path test").channel == "C0OPS"
    assert slack_api.token not in repr(real)


def test_delivery_is_a_plain_record() -> None:
    d = Delivery(ok=False, kind="summary", channel="#ops", error="invalid_auth (HTTP 200)")
    assert d.__dict__["error"] == "invalid_auth (HTTP 200)"


@pytest.fixture(autouse=True)
def _quiet_slack_sdk(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openbell.tasks.connectors.notify")
