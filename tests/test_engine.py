"""One engine runs every declared runbook: a runbook declared here, and nowhere else, gets
the plan, a run, ``--from-step``, the approval gate, idempotency on a re-run, the report
and a schedule entry, on the lab and a real Prefect server.

``tidy`` has three steps over the region's hosts (SSH to the lab): a check, a change with
side effects that the estate makes wait for a second person, and a check after it.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openbell import catalog
from openbell.deployments.cli import app
from openbell.flows.runbook import Runbook, Step
from openbell.outcome import Outcome, Status
from openbell.plan import PlannedAction
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate, RunbookPolicy
from openbell.tasks.approvals.gate import pending_requests
from openbell.tasks.connectors import calendar
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, fan_out, in_thread
from openbell.tasks.ledger import Ledger
from tests.fixtures.people import as_

REGION = "emea"
REQUESTER = "emea-oncall"
APPROVER = "emea-lead"
cli = CliRunner()


# ---- the runbook, declared in this module only -------------------------------------------------
class TidyPolicy(RunbookPolicy):
    """tidy's own policy field, beside the ones every runbook has."""

    mark_dir: str = "var/run"


def mark_argv(ctx_policy: RunbookPolicy, day: date) -> list[str]:
    assert isinstance(ctx_policy, TidyPolicy)
    return ["touch", "--", f"{ctx_policy.mark_dir}/tidy-{day.isoformat()}"]


def mark_exists_argv(ctx_policy: RunbookPolicy, day: date) -> list[str]:
    assert isinstance(ctx_policy, TidyPolicy)
    return ["test", "-e", f"{ctx_policy.mark_dir}/tidy-{day.isoformat()}"]


def _hosts(ctx: RunContext) -> list[tuple[str, Any]]:
    return sorted(ctx.estate.hosts_in(ctx.region).items())


def plan_reachable(p: PlanContext) -> list[PlannedAction]:
    return [PlannedAction(target=n, action=p.ssh(n, ["test", "-d", "var"])) for n, _ in p.hosts()]


async def check_reachable(ctx: RunContext, step: StepRun) -> list[Outcome]:
    async def probe(host: str, _: Any) -> Outcome:
        res = await in_thread(ctx, ctx.ssh.run, host, ["test", "-d", "var"])
        status = Status.OK if res.ok else Status.FAILED
        return Outcome(step=step.name, target=host, status=status, detail="var/ is there")

    return await step.fan_out(ctx, _hosts(ctx), probe)


def plan_marked(p: PlanContext) -> list[PlannedAction]:
    return [
        PlannedAction(target=n, action="if missing: " + p.ssh(n, mark_argv(p.policy, p.trade_date)))
        for n, _ in p.hosts()
    ]


async def hosts_unmarked(ctx: RunContext, step: StepRun) -> Changes:
    policy = ctx.estate.policy(ctx.runbook)

    async def probe(host: str, _: Any) -> Outcome:
        res = await in_thread(ctx, ctx.ssh.run, host, mark_exists_argv(policy, ctx.trade_date))
        return Outcome(step=step.name, target=host, status=Status.OK if res.ok else Status.CHANGED)

    found = await fan_out(step.name, _hosts(ctx), probe)
    todo = [o.target for o in found if o.status == Status.CHANGED]
    return Changes(todo, [f"mark {h}" for h in todo], f"mark {len(todo)} host(s)")


async def ensure_marked(ctx: RunContext, step: StepRun) -> list[Outcome]:
    policy = ctx.estate.policy(ctx.runbook)

    async def probe(host: str, _: Any) -> Outcome:
        if (await in_thread(ctx, ctx.ssh.run, host, mark_exists_argv(policy, ctx.trade_date))).ok:
            return Outcome(step=step.name, target=host, status=Status.OK, detail="marked")
        res = await in_thread(ctx, ctx.ssh.run, host, mark_argv(policy, ctx.trade_date))
        status = Status.CHANGED if res.ok else Status.FAILED
        return Outcome(step=step.name, target=host, status=status, detail="marked now")

    return await step.fan_out(ctx, _hosts(ctx), probe)


def plan_present(p: PlanContext) -> list[PlannedAction]:
    return [
        PlannedAction(target=n, action=p.ssh(n, mark_exists_argv(p.policy, p.trade_date)))
        for n, _ in p.hosts()
    ]


async def check_present(ctx: RunContext, step: StepRun) -> list[Outcome]:
    policy = ctx.estate.policy(ctx.runbook)

    async def probe(host: str, _: Any) -> Outcome:
        res = await in_thread(ctx, ctx.ssh.run, host, mark_exists_argv(policy, ctx.trade_date))
        status = Status.OK if res.ok else Status.FAILED
        return Outcome(step=step.name, target=host, status=status, detail="mark present")

    return await step.fan_out(ctx, _hosts(ctx), probe)


TIDY = Runbook(
    key="tidy",
    title="tidy up",
    flow_name="tidy-up",
    policy=TidyPolicy,
    lock=True,
    steps=(
        Step("reachable", "Hosts reachable", check_reachable, plan=plan_reachable),
        Step(
            "marked",
            "Hosts marked for the day",
            ensure_marked,
            plan=plan_marked,
            after=("reachable",),
            side_effects=True,
            changes=hosts_unmarked,
        ),
        Step("present", "Marks present", check_present, plan=plan_present, after=("marked",)),
    ),
)


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    catalog.register(TIDY)
    yield
    catalog.unregister(TIDY.key)


# ---- the estate that configures it ---------------------------------------------------------------
@pytest.fixture
def tidy_estate(prefect_server: str, lab_estate: tuple[Path, Estate], tmp_path: Path) -> Path:
    src, _ = lab_estate
    doc = yaml.safe_load(src.read_text())
    doc["runbooks"] = {
        **(doc.get("runbooks") or {}),
        "tidy": {
            "approvals": {"steps": ["marked"], "ttl_minutes": 5},
            "schedule": {"at": "open", "offset_minutes": -30},
            "mark_dir": "var/log",
        },
    }
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(src.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    return path


def _day(path: Path) -> date:
    from openbell.runbooks.loader import load_estate

    cal = load_estate(path).region(REGION).primary_calendar
    # A day of its own per test, so that the idempotency keys of one do not serve another.
    return calendar.previous_session(cal, date.today() - timedelta(days=10 * _day.n))


_day.n = 0  # type: ignore[attr-defined]


@pytest.fixture
def day(tidy_estate: Path) -> date:
    _day.n += 1  # type: ignore[attr-defined]
    return _day(tidy_estate)


def invoke(*args: str) -> Any:
    return cli.invoke(app, list(args))


class Run:
    """tidy for the region in a thread, as the requester."""

    def __init__(self, path: Path, day: date, *extra: str) -> None:
        from openbell.deployments.runner import run_runbook

        self.started = time.time()
        self.record: RunRecord | None = None
        self.error: BaseException | None = None

        def go() -> None:
            try:
                self.record = run_runbook(
                    "tidy",
                    REGION,
                    day,
                    estate=path,
                    operator=REQUESTER,
                    from_step=extra[0] if extra else None,
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def request(self, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Ledger() as ledger:
                mine = [
                    r
                    for r in pending_requests(ledger)
                    if r.request.runbook == "tidy"
                    and r.request.created_at.timestamp() >= self.started
                ]
            if mine:
                return mine[-1]
            assert self.thread.is_alive(), f"the run ended without asking: {self.error}"
            time.sleep(0.5)
        pytest.fail(f"no approval request within {timeout:g} s")

    def result(self, timeout: float = 180) -> RunRecord:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        assert self.error is None, repr(self.error)
        assert self.record is not None
        return self.record


def by_step(record: RunRecord) -> dict[str, Any]:
    return {s.name: s for s in record.steps}


# ---- the tests -----------------------------------------------------------------------------------
def test_the_estate_validates_its_policy_against_the_declaration(tidy_estate: Path) -> None:
    from openbell.runbooks.loader import load_estate

    policy = load_estate(tidy_estate).policy("tidy")
    assert isinstance(policy, TidyPolicy) and policy.mark_dir == "var/log"
    text = tidy_estate.read_text().replace("- marked", "- present", 1)
    bad = tidy_estate.with_name("bad.yaml")
    bad.write_text(text)
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    assert "runbooks.tidy.approvals.steps[0]" in result.output
    assert "step 'present' of tidy changes nothing" in result.output
    assert "steps that can wait for approval: marked" in result.output


@pytest.mark.integration
def test_plan_of_a_runbook_declared_elsewhere(tidy_estate: Path, day: date) -> None:
    result = invoke(
        "plan", "tidy", "--region", REGION, "--date", day.isoformat(),
        "--estate", str(tidy_estate), "--as", REQUESTER, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    plan = json.loads(result.stdout)
    assert [s["name"] for s in plan["steps"]] == [
        "calendar",
        "reachable",
        "marked",
        "present",
        "signoff",
    ]
    steps = {s["name"]: s for s in plan["steps"]}
    assert steps["marked"]["after"] == ["reachable"]
    assert steps["signoff"]["after"] == ["present"]
    assert all(f"touch -- var/log/tidy-{day}" in a["action"] for a in steps["marked"]["actions"])


@pytest.mark.integration
def test_run_waits_for_approval_then_a_rerun_does_nothing_twice(
    tidy_estate: Path, day: date
) -> None:
    first = Run(tidy_estate, day)
    req = first.request()
    assert req.request.step == "marked" and req.request.requester == REQUESTER
    targets = sorted(h for h in first_hosts(tidy_estate))
    assert sorted(c.split(" ", 1)[1] for c in req.changes) == targets
    # four eyes: the requester cannot approve their own run
    own = invoke("approve", req.request.run_id, *as_(REQUESTER), "--reason", "mine")
    assert own.exit_code != 0 and "cannot decide on their own change" in own.output
    ok = invoke("approve", req.request.run_id, *as_(APPROVER), "--reason", "plan checked")
    assert ok.exit_code == 0, ok.output
    record = first.result()
    steps = by_step(record)
    assert [s.name for s in record.steps] == ["reachable", "marked", "present"]
    assert {o.status for o in steps["marked"].outcomes} == {Status.CHANGED}
    assert record.passed and record.approvals[0].status == "approved"
    assert record.approvals[0].counted == [APPROVER]
    html = Path(record.reports["html"]).read_text()
    assert "Hosts marked for the day" in html and "Tidy up EMEA" in html
    # Who asked, and how that was proven: run_runbook called with a bare operator name
    # (no proof, as a flow started outside the CLI) records it as a claim.
    assert record.requester_proof is not None
    assert (record.requester_proof["person"], record.requester_proof["method"]) == (
        REQUESTER, "none",
    )  # fmt: skip
    assert f"<dd>&#39;{REQUESTER}&#39; (unproven: a flow parameter: " in html

    # Again: every mark is there (idempotency key and state), so nothing waits, nothing changes.
    second = Run(tidy_estate, day).result()
    marked = by_step(second)["marked"].outcomes
    assert {o.status for o in marked} == {Status.OK}
    assert all(f"already done by run {record.run_id[:8]}" in o.detail for o in marked)
    assert second.approvals == []

    # --from-step present: the steps before it are recorded as skipped, it runs.
    third = Run(tidy_estate, day, "present").result()
    steps = by_step(third)
    assert steps["reachable"].outcomes[0].detail == "not run: restarting from present"
    assert steps["marked"].outcomes[0].status == Status.SKIPPED
    assert {o.status for o in steps["present"].outcomes} == {Status.OK}


@pytest.mark.integration
def test_a_rejected_change_changes_nothing(tidy_estate: Path, day: date) -> None:
    run = Run(tidy_estate, day)
    req = run.request()
    no = invoke("reject", req.request.run_id, *as_(APPROVER), "--reason", "not today")
    assert no.exit_code == 0, no.output
    record = run.result()
    marked = by_step(record)["marked"].outcomes
    assert {o.status for o in marked} == {Status.FAILED}
    assert all("not changed: approval rejected" in o.detail for o in marked)
    present = by_step(record)["present"].outcomes
    assert {o.status for o in present} == {Status.FAILED}  # and nothing was marked


def test_the_schedule_and_the_deployment_come_from_the_declaration(tidy_estate: Path) -> None:
    from openbell.deployments.deploy import deployment_specs
    from openbell.deployments.schedules import calendar_days
    from openbell.runbooks.loader import load_estate

    estate = load_estate(tidy_estate)
    days = calendar_days(estate, REGION, date(2026, 11, 23), 5)
    runs = [r for d in days for r in d.runs if r.runbook == "tidy"]
    assert runs and all(r.rule == "open - 30 min" for r in runs)
    spec = next(s for s in deployment_specs(estate) if s.name == "tidy-emea")
    assert spec.entrypoint == "tests.test_engine:TIDY.flow"
    assert spec.flow_name == "tidy-up"


def first_hosts(path: Path) -> list[str]:
    from openbell.runbooks.loader import load_estate

    return list(load_estate(path).hosts_in(REGION))
