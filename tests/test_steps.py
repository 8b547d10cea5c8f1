"""Runbook steps against fakes: parsing, judging, and ensure_apps_running applied twice."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from openbell.outcome import Status
from openbell.runbooks.loader import load_estate
from openbell.tasks.connectors.ssh import CommandResult, FakeSshRunner
from openbell.tasks.context import RunContext
from openbell.tasks.feeds import judge_feed
from openbell.tasks.hosts import parse_chronyc, parse_df
from tests.fixtures.steps import run_declared

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"


def test_parse_df_and_chronyc() -> None:
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 100 93 7 93% /\n"
    assert parse_df(df) == 93
    with pytest.raises(ValueError, match="no capacity column"):
        parse_df("garbage\n")
    out = (
        "Reference ID : A\n"
        "System time     : 0.000250000 seconds fast of NTP time\n"
        "Leap status     : Normal\n"
    )
    assert parse_chronyc(out) == (250.0, "Normal")
    with pytest.raises(ValueError, match="System time"):
        parse_chronyc("506 Cannot talk to daemon")


def test_judge_feed() -> None:
    now = datetime(2026, 11, 24, 8, 0, 10, tzinfo=UTC)
    fresh = {"last_update": "2026-11-24T08:00:09Z", "sequence": 5, "gaps": []}
    assert judge_feed("f", fresh, 5, now)[0] == Status.OK
    gap = {"last_update": "2026-11-24T08:00:09Z", "sequence": 5, "gaps": [[10, 20]]}
    status, detail = judge_feed("f", gap, 5, now)
    assert status == Status.FAILED and "1 unrecovered gap" in detail
    assert judge_feed("f", {}, 5, now) == (Status.FAILED, "status document has no last_update")


@dataclass
class FakeHttp:
    """Answers every health URL with the version the fake host says is running."""

    versions: dict[str, str] = field(default_factory=dict)

    async def __aenter__(self) -> FakeHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get(self, url: str, *, target: str, timeout: float, retries: int) -> Any:
        @dataclass
        class Answer:
            status: int
            json: dict[str, str]

        return Answer(200, {"version": self.versions.get(target.split("@")[0], "?")})


class FakeHost:
    """A host whose apps are down until started: status reads state, start changes it."""

    def __init__(self, estate: Any) -> None:
        self.running: set[str] = set()
        self.estate = estate

    def __call__(self, host: str, argv: tuple[str, ...]) -> CommandResult:
        verb, app = argv[1], argv[2]
        if verb == "status":
            return CommandResult(host, argv, "", 0 if app in self.running else 3)
        if verb == "start":
            self.running.add(app)
            return CommandResult(host, argv, "", 0, stdout=f"{app} started")
        return CommandResult(host, argv, "", 2, stderr="unknown verb")


def make_ctx(ssh: Any, http: Any) -> RunContext:
    estate = load_estate(LAB)
    return RunContext(
        estate=estate,
        region="emea",
        trade_date=date(2026, 11, 24),
        prev_trade_date=date(2026, 11, 23),
        ssh=ssh,
        http=lambda: http,
        notifier=None,
    )


def _ensure_all(ctx: RunContext) -> list[Status]:
    async def go() -> list[Status]:
        result = await run_declared(ctx, "sod", "apps")
        await ctx.close()
        return [o.status for o in result.outcomes]

    return asyncio.run(go())


def test_ensure_apps_running_twice_changes_then_not() -> None:
    estate = load_estate(LAB)
    host = FakeHost(estate)
    versions = {n: a.expected_version or "" for n, a in estate.apps_in("emea").items()}
    first = _ensure_all(make_ctx(FakeSshRunner(host), FakeHttp(versions)))
    assert first == [Status.CHANGED] * 5
    second = _ensure_all(make_ctx(FakeSshRunner(host), FakeHttp(versions)))
    assert second == [Status.OK] * 5


def test_a_start_failure_skips_dependents_and_never_starts_them() -> None:
    estate = load_estate(LAB)
    host = FakeHost(estate)
    runner = FakeSshRunner(
        {
            ("*", ("bin/appctl", "start", "emea-risk")): CommandResult(
                "", (), "", 1, stderr="emea-risk: refused to start: config error"
            ),
            ("*", ("bin/appctl",)): host,
        }
    )
    versions = {n: a.expected_version or "" for n, a in estate.apps_in("emea").items()}
    statuses = _ensure_all(make_ctx(runner, FakeHttp(versions)))
    assert statuses == [
        Status.CHANGED,
        Status.FAILED,
        Status.SKIPPED,
        Status.SKIPPED,
        Status.SKIPPED,
    ]
    started = [argv[2] for _, argv in runner.calls if argv[1] == "start"]
    assert started == ["emea-refdata", "emea-risk"]


def test_clock_outside_tier_fails_with_the_numbers() -> None:
    out = "System time     : 0.002000000 seconds slow of NTP time\nLeap status     : Normal\n"
    runner = FakeSshRunner({("*", ("chronyc",)): CommandResult("", (), "", 0, stdout=out)})
    ctx = make_ctx(runner, FakeHttp())

    async def go() -> Any:
        try:
            return await run_declared(ctx, "sod", "clock")
        finally:
            await ctx.close()

    result = asyncio.run(go())
    assert {o.status for o in result.outcomes} == {Status.FAILED}
    assert "offset -2000.0 µs exceeds algo tier ±1000 µs" in result.outcomes[0].detail
