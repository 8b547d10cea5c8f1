"""Four-eyes approval of a running start of day, on a real Prefect server and the lab.

Each test stops the region's apps, starts start of day in a background thread (the
requester), and answers the approval request the way people would: the CLI as another
person, the Prefect UI's form, or Prefect's API directly (a bypass attempt). Whatever
happens, the ledger must say who did what, and nothing may start without an approval
that counts.
"""

from __future__ import annotations

import contextvars
import shutil
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import pytest
import yaml
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.deployments.runner import run_runbook
from openbell.lab.faults import FaultBook
from openbell.outcome import Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.tasks.approvals.gate import Decided, OpenRequest, pending_requests, resume_run
from openbell.tasks.connectors import calendar
from openbell.tasks.connectors.ssh import SshPool
from openbell.tasks.ledger import Ledger
from tests.fixtures.people import as_, key_of

pytestmark = pytest.mark.integration

REGION = "emea"
REQUESTER = "emea-oncall"
APPROVER = "emea-lead"
cli = CliRunner()


@pytest.fixture
def estate_with_approvals(
    prefect_server: str, lab_estate: tuple[Path, Estate], lab_faults: FaultBook, tmp_path: Path
) -> Callable[..., tuple[Path, Estate]]:
    """Writes a copy of the lab estate whose start of day needs approval to start apps."""
    from openbell.runbooks.loader import load_estate

    src, _ = lab_estate

    def make(required: int = 1, ttl_minutes: float = 5.0) -> tuple[Path, Estate]:
        doc = yaml.safe_load(src.read_text())
        doc["runbooks"] = {
            "sod": {
                "approvals": {
                    "steps": ["apps"],
                    "required_approvers": required,
                    "ttl_minutes": ttl_minutes,
                }
            }
        }
        doc["people"][APPROVER]["identities"] = ["emea.lead.adm"]
        path = tmp_path / "estate.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        shutil.copy(src.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
        return path, load_estate(path)

    return make


class Run:
    """Start of day for the region in a thread, as the requester."""

    def __init__(self, path: Path, estate: Estate) -> None:
        self.day = calendar.previous_session(estate.region(REGION).primary_calendar, date.today())
        self.path = path
        self.record: RunRecord | None = None
        self.error: BaseException | None = None
        self.started = time.time()
        self.thread = threading.Thread(target=self._go, daemon=True)
        self.thread.start()

    def _go(self) -> None:
        try:
            self.record = run_runbook("sod", REGION, self.day, estate=self.path, operator=REQUESTER)
        except BaseException as exc:
            self.error = exc

    def request(self, timeout: float = 120) -> OpenRequest:
        """The approval request this run opened (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Ledger() as ledger:
                mine = [
                    r
                    for r in pending_requests(ledger)
                    if r.request.region == REGION
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


def stop_apps(estate: Estate) -> list[str]:
    stopped = []
    with SshPool(estate) as pool:
        for name, app_ in sorted(estate.apps_in(REGION).items()):
            for host in app_.hosts:
                assert pool.run(host, app_.stop).ok, f"could not stop {name}"
                stopped.append(f"{name}@{host}")
    return stopped


def decide(verb: str, run_id: str, who: str, reason: str = "checked the plan") -> Any:
    args = [verb, run_id, *as_(who), "--reason", reason]
    return cli.invoke(app, args)


def entries(run_id: str, *kinds: str) -> list[Any]:
    with Ledger() as ledger:
        return ledger.entries(run_id=run_id, kinds=list(kinds) or None)


def apps_outcomes(record: RunRecord) -> dict[str, Any]:
    return {o.target: o for s in record.steps if s.name == "apps" for o in s.outcomes}


def assert_nothing_started(record: RunRecord, why: str) -> None:
    """Apps that were down failed with ``why``; their dependents were skipped."""
    assert not record.passed
    apps = apps_outcomes(record).values()
    failed = [o for o in apps if o.status == Status.FAILED]
    assert failed and {o.status for o in apps} <= {Status.FAILED, Status.SKIPPED}
    assert all(why in o.detail for o in failed), [o.detail for o in failed]


def test_a_second_person_approves_from_the_cli_and_only_then_apps_start(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    path, estate = estate_with_approvals()
    down = stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    assert sorted(req.changes) == sorted(f"start {t}" for t in down)
    assert req.request.requester == REQUESTER and req.request.approver_group == "emea-approvers"
    with SshPool(estate) as pool:  # still waiting: nothing started
        _, app_ = sorted(estate.apps_in(REGION).items())[0]
        assert not pool.run(app_.hosts[0], app_.status).ok

    answer = decide("approve", req.request.run_id, APPROVER)
    assert answer.exit_code == 0, answer.stderr
    assert "approved by emea-lead (1 of 1 from emea-approvers)" in answer.stdout

    record = run.result()
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
    assert {o.status for o in apps_outcomes(record).values()} == {Status.CHANGED}
    decided = entries(req.request.run_id, "approval_decided")
    assert [(e.payload["decision"]["approver"], e.payload["via"]) for e in decided] == [
        (APPROVER, "cli")
    ]
    (verdict,) = entries(req.request.run_id, "approval_verdict")
    assert verdict.payload["status"] == "approved"
    assert verdict.payload["counted"] == [APPROVER]
    assert verdict.payload["binding_hash"] == req.request.binding_hash


def test_bypass_attempts_are_refused_and_recorded_then_the_request_expires(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    # Two distinct approvers needed; the group has only the requester and the lead.
    path, estate = estate_with_approvals(required=2, ttl_minutes=0.75)
    stop_apps(estate)
    run = Run(path, estate)
    run_id = run.request().request.run_id

    self_approval = decide("approve", run_id, REQUESTER)
    assert self_approval.exit_code == 1
    assert "emea-oncall requested this run and cannot decide on their own change" in (
        self_approval.stderr
    )
    outsider = decide("approve", run_id, "apac-lead")
    assert outsider.exit_code == 1
    assert "apac-lead may not approve sod in emea" in outsider.stderr

    first = decide("approve", run_id, APPROVER)
    assert first.exit_code == 0, first.stderr
    assert "1 of 2 approvals (emea-lead)" in first.stdout
    alias = decide("approve", run_id, "emea.lead.adm")
    assert alias.exit_code == 1
    assert "one person counts once" in alias.stderr
    double = decide("approve", run_id, APPROVER)
    assert double.exit_code == 1
    assert "already approved" in double.stderr

    record = run.result()  # nobody else may approve: the request expires
    assert_nothing_started(record, "approval expired")
    (verdict,) = entries(run_id, "approval_verdict")
    assert verdict.payload["status"] == "expired"
    refusals = [e.payload for e in entries(run_id, "refusal")]
    assert {r["who"] for r in refusals} >= {REQUESTER, "apac-lead", "emea.lead.adm", APPROVER}

    late = decide("approve", run_id, APPROVER)  # after the verdict: too late, and recorded
    assert late.exit_code == 1 and "already expired; nothing to decide" in late.stderr
    last = entries(run_id, "refusal")[-1].payload
    assert (last["who"], last["action"]) == (APPROVER, "approve")
    assert "already expired" in last["reason"]


def test_a_reject_needs_a_reason_and_nothing_starts(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    run_id = run.request().request.run_id
    for verb in ("reject", "approve"):  # a blank reason decides nothing, and is recorded
        no_reason = decide(verb, run_id, APPROVER, reason=" ")
        assert no_reason.exit_code == 2
        assert f"to {verb}, give a justification" in no_reason.stderr
    refused = [e.payload for e in entries(run_id, "refusal")]
    assert [(r["who"], r["action"]) for r in refused][-2:] == [
        (APPROVER, "reject"),
        (APPROVER, "approve"),
    ]
    assert not entries(run_id, "approval_decided")

    # a reason is text, not terminal markup: it is recorded and shown as typed
    why = "risk limits not loaded yet [/x] [bold]"
    answer = decide("reject", run_id, APPROVER, reason=why)
    assert answer.exit_code == 0, answer.stderr
    assert answer.stdout.startswith("rejected ")
    assert_nothing_started(run.result(), why)
    (verdict,) = entries(run_id, "approval_verdict")
    assert verdict.payload["status"] == "rejected"
    assert verdict.payload["rejected_by"] == [APPROVER]


def _resume(flow_run_id: str, run_input: dict[str, Any], timeout: float = 60) -> None:
    """Resume through Prefect's API, as the UI's button does once the run shows Paused."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(UUID(flow_run_id)).state) or not state.is_paused():
            assert time.monotonic() < deadline, f"the run did not pause within {timeout:g} s"
            time.sleep(0.2)
    resume_flow_run(UUID(flow_run_id), run_input=run_input)


def test_resuming_through_prefects_api_without_an_approval_is_refused(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    assert req.flow_run_id
    # A forged resume: claims to come from `openbell approve`, but the ledger has nothing.
    _resume(
        req.flow_run_id,
        {"approver": APPROVER, "decision": "approve", "justification": "", "ledger_seq": 1},
    )
    assert_nothing_started(run.result(), "resumed without a new approval")
    refusal = entries(req.request.run_id, "refusal")[-1].payload
    assert refusal["action"] == "resume" and "nothing was changed" in refusal["reason"]


def test_an_answer_from_the_prefect_ui_or_api_is_nobodys_without_a_signature(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    """The issue's attack: anyone who reaches the Prefect server posts alice's approval."""
    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    assert req.flow_run_id
    _resume(
        req.flow_run_id,
        {"approver": APPROVER, "decision": "approve", "justification": "ok from the UI"},
    )
    assert_nothing_started(run.result(), "resumed without a new approval")
    (decided,) = entries(req.request.run_id, "approval_decided")
    assert decided.payload["via"] == "prefect-ui"
    assert decided.payload["decision"]["approver"] == APPROVER
    assert decided.payload["decision"]["proof"]["method"] == "none"
    refused = [e.payload for e in entries(req.request.run_id, "refusal")]
    assert any(r["who"] == APPROVER and "not a proven identity" in r["reason"] for r in refused), (
        refused
    )


def test_a_signed_answer_from_the_prefect_ui_form_counts(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    from openbell.runbooks.identity import decision_statement, sign

    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    assert req.flow_run_id
    why = "ok from the UI, signed"
    statement = decision_statement(
        run_id=req.request.run_id,
        step=req.request.step,
        binding=req.request.binding_hash,
        decision="approve",
        person=APPROVER,
        reason=why,
    )
    signature = sign(key_of(APPROVER), statement)
    _resume(
        req.flow_run_id,
        {"approver": APPROVER, "decision": "approve", "justification": why, "signature": signature},
    )
    record = run.result()
    assert {o.status for o in apps_outcomes(record).values()} == {Status.CHANGED}
    (decided,) = entries(req.request.run_id, "approval_decided")
    proof = decided.payload["decision"]["proof"]
    assert (proof["method"], proof["person"], proof["account"]) == (
        "ssh-key",
        APPROVER,
        "prefect-api",
    )
    assert proof["statement"] == statement


def test_a_typed_name_approves_nothing_from_the_cli(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    """The issue's first attack: the requester types `--as` the approver, with no key."""
    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    forged = cli.invoke(
        app, ["approve", req.request.run_id, "--as", APPROVER, "--reason", "trust me"]
    )
    assert forged.exit_code == 1
    assert "a typed name proves nothing" in forged.stderr
    assert not entries(req.request.run_id, "approval_decided")
    refusal = entries(req.request.run_id, "refusal")[-1].payload
    assert (refusal["who"], refusal["action"]) == (APPROVER, "approve")
    assert "identity not proven" in refusal["reason"]
    answer = decide("approve", req.request.run_id, APPROVER)  # with the approver's key
    assert answer.exit_code == 0, answer.stderr
    assert "signed with key SHA256:" in answer.stdout
    assert {o.status for o in apps_outcomes(run.result()).values()} == {Status.CHANGED}


def test_an_approval_no_longer_counts_once_the_estate_changed(
    estate_with_approvals: Callable[..., tuple[Path, Estate]],
) -> None:
    path, estate = estate_with_approvals()
    stop_apps(estate)
    run = Run(path, estate)
    req = run.request()
    path.write_text(path.read_text() + "# edited while the approval was pending\n")
    answer = decide("approve", req.request.run_id, APPROVER)
    assert answer.exit_code == 0, answer.stderr
    assert_nothing_started(run.result(), "changed since")
    (verdict,) = entries(req.request.run_id, "approval_verdict")
    assert verdict.payload["status"] == "rejected"
    assert "changed since" in verdict.payload["reason"]


def _bare_flow_run(state: Any) -> UUID:
    """A flow run in ``state`` on the test server, with no process behind it."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="approval-resume-probe")
    def probe() -> None:
        """Never runs: only its flow runs' states are moved by hand."""

    with get_client(sync_client=True) as client:
        return client.create_flow_run(probe, state=state).id


def _set_state(flow_run_id: UUID, state: Any) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, state, force=True)


def _decided(step: str = "apps") -> Decided:
    """Just what ``resume_run`` reads of a decision: its ledger seq, run and step."""
    inner = SimpleNamespace(step=step, run_id="run-without-a-ledger")
    return cast(Decided, SimpleNamespace(seq=7, request=SimpleNamespace(request=inner)))


def test_approve_resumes_a_run_that_pauses_a_moment_after_the_decision(
    prefect_server: str,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Paused, Running

    run_id = _bare_flow_run(Running())
    # The run is between recording its request and pausing when the decision lands.
    # (in this thread's context: Prefect's settings, the test server's URL, live there)
    pause = (_set_state, run_id, Paused(timeout_seconds=300))
    later = threading.Timer(1.5, contextvars.copy_context().run, pause)
    later.start()
    try:
        said = resume_run(str(run_id), _decided(), APPROVER, "approve", wait_s=30)
    finally:
        later.join()
    assert said == "the run was resumed"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None and state.is_running()


def test_approve_stops_watching_a_run_that_ended_and_says_so(prefect_server: str) -> None:
    from prefect.states import Completed

    run_id = _bare_flow_run(Completed())
    said = resume_run(str(run_id), _decided(), APPROVER, "approve", wait_s=30)
    assert said == "the run has ended (Completed); the decision is in the ledger"


def test_approve_gives_up_on_a_run_that_never_pauses_and_says_the_ledger_has_it(
    prefect_server: str,
) -> None:
    from prefect.states import Running

    run_id = _bare_flow_run(Running())
    said = resume_run(str(run_id), _decided(), APPROVER, "approve", wait_s=1)
    assert said.startswith("the run is not paused; the decision is in the ledger")
