"""Releases against the lab, on a real Prefect server: canary to rollback, exactly once.

The session lab runs ``apac-router`` on three hosts (``apac-rt001..003``) at 3.0.0, laid
out by release, and the lab's signed artifact repository. Runs start as ``apac-oncall``;
``apac-lead`` (of the app's approver group) approves through the same path as
``openbell approve`` (``tests/fixtures/approver.py``). The window is judged at a
rehearsal moment inside it (the lab estate allows one). Each test has a ledger of its own
and puts the router back on 3.0.0 afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from openbell.deployments.runner import run_runbook
from openbell.lab.effects import EffectsLog
from openbell.lab.paths import LabPaths
from openbell.outcome import Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors.ssh import SshPool
from openbell.tasks.ledger import Ledger
from openbell.tasks.release import records
from tests.fixtures import release as release_state
from tests.fixtures.approver import AutoApprover
from tests.fixtures.people import as_

pytestmark = pytest.mark.integration

REGION, APP, OLD = "apac", "apac-router", "3.0.0"
FIRST_CONFIG = "cfg-1"  # what the lab lays out (openbell.lab.artifacts)
ROOT = f"apps/{APP}"
#: a Saturday: every venue of apac closed, the window open until Monday's lead
INSIDE_WINDOW = "2026-12-05T03:00:00+00:00"


@pytest.fixture
def lab(  # type: ignore[no-untyped-def]
    prefect_server: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, Estate, Any]]:
    from openbell.settings import get_settings

    monkeypatch.setenv("OPENBELL_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPENBELL_REHEARSAL_AT", INSIDE_WINDOW)
    get_settings.cache_clear()
    path, estate = lab_estate
    hosts = estate.app(APP).hosts
    _put_back(estate, hosts)
    yield path, estate, lab_faults
    _put_back(estate, hosts)


def _put_back(estate: Estate, hosts: list[str]) -> None:
    """The router on 3.0.0 everywhere, running, with no other release and no lock."""
    app = estate.app(APP)
    script = (
        'cd -- "$1" && rm -rf .openbell.lock current.next config.next && '
        'for d in releases/*/; do d=${d%/}; [ "$d" = "releases/$2" ] || rm -rf -- "$d"; done; '
        'ln -sfn "releases/$2" current.next && mv -T -f current.next current && '
        'for d in configs/*/; do d=${d%/}; [ "$d" = "configs/$3" ] || rm -rf -- "$d"; done; '
        'ln -sfn "configs/$3" config.next && mv -T -f config.next config'
    )
    with SshPool(estate) as pool:
        for h in hosts:
            assert pool.run(h, app.stop).ok
            res = pool.run(h, ["sh", "-c", script, "sh", ROOT, OLD, FIRST_CONFIG])
            assert res.ok, res.stderr
            assert pool.run(h, app.start).ok


def release(path: Path, version: str | None = None, **extra: Any) -> RunRecord:
    params = {"app": APP, "change": "CHG-1", "reason": "test", **extra}
    if version:
        params["version"] = version
    return run_runbook(
        "release", REGION, None, estate=path, operator=f"{REGION}-oncall", extra=params
    )


def approved_release(
    estate: Estate, path: Path, version: str | None = None, **kw: Any
) -> RunRecord:
    with AutoApprover(estate, REGION, f"{REGION}-lead"):
        return release(path, version, **kw)


def outcomes(record: RunRecord, name: str) -> dict[str, Any]:
    return {o.target: o for s in record.steps if s.name == name for o in s.outcomes}


def current_versions(estate: Estate) -> dict[str, str | None]:
    return release_state.current_versions(estate, APP)


def switches(since: int) -> dict[str, int]:
    return release_state.switches(ROOT, since)


effects_now = release_state.effects_now


def test_a_good_version_rolls_out_canary_first_then_sod_checks_the_manifest(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    hosts = estate.app(APP).hosts
    mark = effects_now()
    record = approved_release(estate, path, "3.0.1")
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
    canary, rest = outcomes(record, "canary"), outcomes(record, "rollout")
    assert list(canary) == [f"{APP}@{hosts[0]}"]
    assert sorted(rest) == sorted(f"{APP}@{h}" for h in hosts[1:])
    assert all(o.status == Status.CHANGED for o in [*canary.values(), *rest.values()])
    canary_done = max(o.finished_at for o in canary.values())
    assert all(o.started_at >= canary_done for o in rest.values())  # never before the canary
    assert current_versions(estate) == dict.fromkeys(hosts, "3.0.1")
    assert switches(mark) == dict.fromkeys(hosts, 1)
    attest = outcomes(record, "attest")
    assert all("3.0.0 -> 3.0.1" in o.detail for o in attest.values()) and len(attest) == 3
    approvals = [e for e in _entries(record.run_id, "approval_verdict")]
    assert approvals and approvals[-1].payload["status"] == "approved"

    # start of day now expects the manifest's version: green for the router
    from openbell.tasks.connectors import calendar

    day = calendar.previous_session(estate.region(REGION).primary_calendar, date.today())
    sod = run_runbook("sod", REGION, day, estate=path, operator=f"{REGION}-oncall")
    router = {t: o for t, o in outcomes(sod, "apps").items() if t.startswith(APP)}
    assert router and all(o.passed and "3.0.1" in o.detail for o in router.values()), router

    # the same release again changes nothing and asks nobody
    mark = effects_now()
    again = release(path, "3.0.1")
    assert again.passed
    assert switches(mark) == {}
    assert all(o.status == Status.OK for o in outcomes(again, "canary").values())

    # --rollback returns the region to the version before, as a run of its own
    back = approved_release(estate, path, None, rollback=True)
    assert back.passed, [(s.name, s.summary()) for s in back.steps if not s.passed]
    assert current_versions(estate) == dict.fromkeys(hosts, OLD)


def test_a_version_crashing_in_its_soak_is_rolled_back_where_it_reached(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    hosts = estate.app(APP).hosts
    mark = effects_now()
    record = approved_release(estate, path, "9.0.1-crashes")
    assert not record.passed
    soak = outcomes(record, "soak")
    assert any("not running" in o.detail or "soak sample" in o.detail for o in soak.values())
    assert outcomes(record, "rollout") == {}  # the rest never switched
    back = outcomes(record, "rollback")
    assert back[f"{APP}@{hosts[0]}"].status == Status.CHANGED
    assert "rolled back" in back[f"{APP}@{hosts[0]}"].detail
    assert current_versions(estate) == dict.fromkeys(hosts, OLD)
    # the canary switched there and back; the others were never touched
    assert switches(mark) == {hosts[0]: 2}
    with SshPool(estate) as pool:
        bad = pool.run(hosts[0], ["cat", f"{ROOT}/releases/9.0.1-crashes/BAD_RELEASE"])
    assert bad.ok and record.run_id in bad.stdout
    md = Path(record.reports["md"]).read_text()
    assert "Rolled back" in md and "soak sample" in md
    # and a retry of the same version is refused before any host changes
    mark = effects_now()
    retry = approved_release(estate, path, "9.0.1-crashes")
    assert not retry.passed and "BAD_RELEASE" in str(
        [o.detail for o in outcomes(retry, "preflight").values()]
    )
    assert switches(mark) == {}


def test_a_corrupted_artifact_is_refused_before_any_host_is_touched(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, book = lab
    from openbell.lab import supervisor

    book.add("corrupt_artifact", APP)
    assert supervisor.wait_faults_applied(timeout_s=10)
    mark = effects_now()
    record = release(path, "3.1.0")  # a version no earlier test has fetched (and cached)
    assert not record.passed
    (art,) = outcomes(record, "artifact").values()
    assert art.status == Status.FAILED and "sha256 of what arrived" in art.detail
    assert [s.name for s in record.steps] == ["window", "artifact"]
    hosts = set(estate.app(APP).hosts)
    assert [
        e for e in EffectsLog(LabPaths.of().effects_file).read()[mark:] if e.target in hosts
    ] == []


def test_a_full_disk_is_refused_in_preflight_nothing_staged(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, book = lab
    from openbell.lab import supervisor

    hosts = estate.app(APP).hosts
    book.add("disk_full", hosts[1])
    assert supervisor.wait_faults_applied(timeout_s=10)
    mark = effects_now()
    record = release(path, "3.0.1")
    assert not record.passed
    pre = outcomes(record, "preflight")
    assert "not enough room" in pre[f"{APP}@{hosts[1]}"].detail
    assert "stage" not in [s.name for s in record.steps]
    assert [
        e for e in EffectsLog(LabPaths.of().effects_file).read()[mark:] if e.target in hosts
    ] == []


def _entries(run_id: str, *kinds: str) -> list[Any]:
    from openbell.tasks.ledger import Ledger

    with Ledger() as ledger:
        return ledger.entries(run_id=run_id, kinds=list(kinds))


@pytest.mark.parametrize(
    ("version", "point", "end"),
    [
        # the canary's app stopped, its link not moved yet
        ("3.0.1", "canary:{0}:stopped#1", "3.0.1"),
        # a rollout host's link moved, its app not started again
        ("3.0.1", "rollout:{1}:linked#1", "3.0.1"),
        # the rollback of a crashing version, mid-way on the canary
        ("9.0.1-crashes", "rollback:{0}:stopped#1", OLD),
    ],
    ids=["canary-stopped", "rollout-linked", "rollback-stopped"],
)
def test_killed_mid_switch_then_rerun_ends_on_one_version_switching_no_host_twice(  # type: ignore[no-untyped-def]
    lab, tmp_path: Path, version: str, point: str, end: str
) -> None:
    """The bounded CI share of ``benchmarks/release_faults.py``: SIGKILL at a kill point
    inside a host's switch, then the same release again, undisturbed."""
    import os

    from tests.fixtures.killer import run_eod

    path, estate, _ = lab
    hosts = estate.app(APP).hosts
    env = {
        name: os.environ[name]
        for name in ("OPENBELL_HOME", "OPENBELL_LEDGER_URL", "OPENBELL_REHEARSAL_AT")
        if name in os.environ
    }
    env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    env["OPENBELL_KILL_LOG"] = str(tmp_path / "runs.log")
    extra = {"app": APP, "version": version, "change": "CHG-KILL", "reason": "kill point"}
    label = point.format(*hosts)
    mark = effects_now()
    with AutoApprover(estate, REGION, f"{REGION}-lead"):
        killed = run_eod(
            env, REGION, None, path, operator=f"{REGION}-oncall", kill_at=label,
            runbook="release", extra=extra, timeout_s=300,
        )  # fmt: skip
        assert killed.killed, (label, killed, (tmp_path / "runs.log").read_text()[-3000:])
        again = run_eod(
            env, REGION, None, path, operator=f"{REGION}-oncall", runbook="release",
            extra=extra, timeout_s=300,
        )  # fmt: skip
    log = (tmp_path / "runs.log").read_text()[-3000:]
    assert again.exitcode == 0 and again.error is None, (again, log)
    assert again.passed == (end == version), (again, log)
    assert current_versions(estate) == dict.fromkeys(hosts, end), log
    moved = switches(mark)
    if end == version:
        assert moved == dict.fromkeys(hosts, 1), moved  # each host switched exactly once
    else:
        assert moved == {hosts[0]: 2}, moved  # the canary there and back, no other host
    with SshPool(estate) as pool:
        for h in hosts:
            assert pool.run(h, estate.app(APP).status).ok, f"{APP} is not running on {h}"


def test_a_host_lost_mid_switch_is_rolled_back_with_the_others_once_it_is_back(lab) -> None:  # type: ignore[no-untyped-def]
    """RELEASE.md T15: the host dies after its app was stopped, before its link moved."""
    path, estate, book = lab
    hosts = estate.app(APP).hosts
    lost = hosts[-1]
    mark = effects_now()
    book.add("dies_after_stop", lost)
    try:
        record = approved_release(estate, path, "3.0.1")
    finally:
        book.remove("dies_after_stop", lost)
    try:
        assert not record.passed
        assert not outcomes(record, "rollout")[f"{APP}@{lost}"].passed
        back = outcomes(record, "rollback")
        assert not back[f"{APP}@{lost}"].passed
        assert "QUARANTINE" in back[f"{APP}@{lost}"].detail
        for h in hosts[:-1]:
            assert back[f"{APP}@{h}"].status == Status.CHANGED, back[f"{APP}@{h}"].detail
    finally:
        book.remove("host_down", lost)
    with Ledger() as ledger:  # start of day's "do not open with this host"
        held = records.quarantined(ledger, REGION)
    assert list(held) == [lost] and held[lost].run_id == record.run_id
    # the host is back: the next run of the release finishes the rollback there
    again = approved_release(estate, path, "3.0.1")
    assert not again.passed  # the release did not happen
    assert "failed in run" in outcomes(again, "rollout")["rollout"].detail
    back = outcomes(again, "rollback")
    assert back[f"{APP}@{lost}"].passed, back[f"{APP}@{lost}"].detail
    assert current_versions(estate) == dict.fromkeys(hosts, OLD)
    moved = switches(mark)
    assert moved.get(lost, 0) == 0, moved  # its link never moved
    assert all(moved[h] == 2 for h in hosts[:-1]), moved  # there and back, once each
    with SshPool(estate) as pool:
        for h in hosts:
            assert pool.run(h, estate.app(APP).status).ok, f"{APP} is not running on {h}"
    with Ledger() as ledger:  # out of quarantine: the rollback finished there
        assert records.quarantined(ledger, REGION) == {}
        cleared = ledger.entries(kinds=["host_cleared"])
    assert [(e.payload["host"], e.payload["how"], e.run_id) for e in cleared] == [
        (lost, "rolled back", again.run_id)
    ]


def test_a_configuration_only_change_switches_the_config_link_only(lab) -> None:  # type: ignore[no-untyped-def]
    """RELEASE.md T24: ``--config``: the binary's releases and ``current`` are untouched;
    only ``config`` switches, canary first; the attestation checks the configuration the
    app reports and the bundle's checksums; a bad one is rolled back, the link only."""
    path, estate, _ = lab
    hosts = estate.app(APP).hosts
    mark = effects_now()
    record = approved_release(estate, path, None, config="cfg-2")
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
    assert current_versions(estate) == dict.fromkeys(hosts, OLD)  # the binary stays
    configs = release_state.current_versions(estate, APP, "configs")
    assert configs == dict.fromkeys(hosts, "cfg-2")
    assert switches(mark) == {}  # no mv onto current
    assert release_state.switches(ROOT, mark, "config") == dict.fromkeys(hosts, 1)
    attest = outcomes(record, "attest")
    assert all(f"{FIRST_CONFIG} -> cfg-2" in o.detail for o in attest.values()), attest
    with Ledger() as ledger:
        asked = ledger.entries(run_id=record.run_id, kinds=["approval_requested"])
        assert (
            asked[0]
            .payload["summary"]
            .startswith(f"CONFIGURATION-ONLY change (the binary stays): {APP} cfg-2")
        )
        assert records.manifest_version(ledger, REGION, f"{APP}.config") == "cfg-2"
        assert records.previous_version(ledger, REGION, f"{APP}.config") == FIRST_CONFIG
        assert records.manifest_version(ledger, REGION, APP) is None  # no binary release
    with SshPool(estate) as pool:
        assert pool.run(hosts[0], ["test", "-d", f"{ROOT}/configs/{FIRST_CONFIG}"]).ok  # kept
    # a configuration the app is unhealthy with: the canary's link goes back, nothing else
    mark = effects_now()
    bad = approved_release(estate, path, None, config="cfg-9-unhealthy")
    assert not bad.passed
    back = outcomes(bad, "rollback")
    assert back[f"{APP}@{hosts[0]}"].status == Status.CHANGED, back
    assert release_state.current_versions(estate, APP, "configs") == dict.fromkeys(hosts, "cfg-2")
    assert release_state.switches(ROOT, mark, "config") == {hosts[0]: 2}
    assert switches(mark) == {}
    assert current_versions(estate) == dict.fromkeys(hosts, OLD)
    # --config with --version, or --rollback, is refused naming what to give
    from types import SimpleNamespace

    from openbell.tasks.release.target import ReleaseError, resolve

    def asked(**kw: Any) -> Any:
        return SimpleNamespace(**{"app": APP, "version": None, "rollback": False, **kw})

    with pytest.raises(ReleaseError, match="not both"):
        resolve(estate, REGION, asked(version="3.0.1", config="cfg-2"))
    with Ledger() as ledger, pytest.raises(ReleaseError, match="--config cfg-1"):
        resolve(estate, REGION, asked(config="cfg-2", rollback=True), ledger)


def test_the_approval_expires_at_the_point_of_no_return(lab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """RELEASE.md T29: 40 minutes before the point of no return, a release's approval
    request lives 40 minutes, not the policy's 60: a late approval switches nothing."""
    from datetime import datetime, timedelta

    from openbell.settings import get_settings
    from openbell.tasks.release.steps import expected_minutes, policy_of
    from openbell.tasks.release.target import resolve
    from openbell.tasks.release.window import release_window

    path, estate, _ = lab
    policy = policy_of(estate)
    assert policy.ttl_minutes == 60
    t = resolve(estate, REGION, _Asked(app=APP, version="3.0.1"))
    minutes = expected_minutes(t, policy)
    at = datetime.fromisoformat(INSIDE_WINDOW)
    ponr = release_window(estate, REGION, at, policy, expected_minutes=minutes).ponr
    assert ponr is not None
    late = ponr - timedelta(minutes=40)
    monkeypatch.setenv("OPENBELL_REHEARSAL_AT", late.isoformat())
    get_settings.cache_clear()
    record = approved_release(estate, path, "3.0.1")
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
    with Ledger() as ledger:
        asked = ledger.entries(run_id=record.run_id, kinds=["approval_requested"])
    req = asked[0].payload["request"]
    lives = datetime.fromisoformat(req["expires_at"]) - datetime.fromisoformat(req["created_at"])
    assert timedelta(minutes=39) < lives <= timedelta(minutes=40), lives


class _Asked:
    def __init__(self, **kw: Any) -> None:
        self.version = self.config = None
        self.rollback = False
        self.__dict__.update(kw)


def estate_copy(path: Path, tmp_path: Path, name: str, change: Any) -> Path:
    """The test estate with ``change(data)`` applied, beside it (its relative paths hold)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    change(data)
    copy = path.with_name(f"{name}-{tmp_path.name}.yaml")
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


def decisions_of(run_id: str, step: str) -> list[tuple[str, str]]:
    with Ledger() as ledger:
        decided = ledger.entries(run_id=run_id, kinds=["approval_decided"])
    return [
        (e.payload["decision"]["approver"], e.payload["decision"]["decision"])
        for e in decided
        if e.payload["decision"]["step"] == step
    ]


def test_a_refused_second_decision_rolls_the_canary_back(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``continue_after_canary``, and the approver group says no after the soak: the
    other batches are never touched, and the canary goes back."""
    from openbell.runbooks.loader import load_estate

    path, _, _ = lab

    def ask_twice(data: dict[str, Any]) -> None:
        data["apps"][APP]["release"]["continue_after_canary"] = True

    copy = estate_copy(path, tmp_path, "refused-second", ask_twice)
    try:
        estate2 = load_estate(copy)
        hosts = estate2.app(APP).hosts
        mark = effects_now()
        with AutoApprover(estate2, REGION, f"{REGION}-lead", decisions={"rollout": "reject"}):
            record = release(copy, "3.0.1")
        assert not record.passed
        assert decisions_of(record.run_id, "rollout") == [(f"{REGION}-lead", "reject")]
        rollout = outcomes(record, "rollout")
        assert sorted(rollout) == sorted(f"{APP}@{h}" for h in hosts[1:])
        details = [rollout[f"{APP}@{h}"].detail for h in hosts[1:]]
        assert not any(o.passed for o in rollout.values())
        assert details[0].startswith("not changed: approval rejected: rejected by apac-lead")
        # a later batch is refused too, or not started once one host counts as failed
        assert all("approval rejected" in d or "not started" in d for d in details[1:]), details
        back = outcomes(record, "rollback")
        assert back[f"{APP}@{hosts[0]}"].status == Status.CHANGED
        assert current_versions(estate2) == dict.fromkeys(hosts, OLD)
        assert switches(mark) == {hosts[0]: 2}  # the canary there and back, no other host
    finally:
        copy.unlink(missing_ok=True)


def _decide_rollback(minutes: float = 10.0) -> Any:
    def change(data: dict[str, Any]) -> None:
        block = data.setdefault("runbooks", {}).setdefault("release", {})
        block.update({"rollback": "decision", "rollback_decision_minutes": minutes})

    return change


def test_rollback_decision_hold_then_a_rerun_rolls_back(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``rollback: decision``: the approver group holds (a proven reject), the canary stays
    on the new version and the run fails; the re-run resumes the rollback, asks again,
    and rolls back once approved."""
    from openbell.runbooks.loader import load_estate

    path, _, _ = lab
    copy = estate_copy(path, tmp_path, "rollback-decision", _decide_rollback())
    try:
        estate2 = load_estate(copy)
        hosts = estate2.app(APP).hosts
        canary_target = f"{APP}@{hosts[0]}"
        mark = effects_now()
        with AutoApprover(estate2, REGION, f"{REGION}-lead", decisions={"rollback": "reject"}):
            record = release(copy, "9.0.1-crashes")
        assert not record.passed
        assert not all(o.passed for o in outcomes(record, "soak").values())
        with Ledger() as ledger:
            asked = ledger.entries(run_id=record.run_id, kinds=["approval_requested"])
        rollback_asked = [a.payload for a in asked if a.payload["request"]["step"] == "rollback"]
        assert len(rollback_asked) == 1
        assert rollback_asked[0]["summary"].startswith(f"ROLL BACK {APP} 9.0.1-crashes on 1 host")
        assert rollback_asked[0]["changes"] == [f"{canary_target}: 9.0.1-crashes -> {OLD}"]
        assert decisions_of(record.run_id, "rollback") == [(f"{REGION}-lead", "reject")]
        held = outcomes(record, "rollback")
        assert list(held) == [canary_target]
        assert held[canary_target].status == Status.FAILED
        assert held[canary_target].detail.startswith("HELD on 9.0.1-crashes")
        assert current_versions(estate2)[hosts[0]] == "9.0.1-crashes"
        assert switches(mark) == {hosts[0]: 1}  # switched, not back
        # the re-run is the rollback, not the release: asked again, approved, rolled back
        with AutoApprover(estate2, REGION, f"{REGION}-lead"):
            again = release(copy, "9.0.1-crashes")
        assert not again.passed  # the release did not happen
        assert decisions_of(again.run_id, "rollback") == [(f"{REGION}-lead", "approve")]
        assert outcomes(again, "rollback")[canary_target].status == Status.CHANGED
        assert "rolled back by decision" in next(
            s.note for s in again.steps if s.name == "rollback"
        )
        assert current_versions(estate2) == dict.fromkeys(hosts, OLD)
        assert switches(mark) == {hosts[0]: 2}
    finally:
        copy.unlink(missing_ok=True)


def test_rollback_decision_unanswered_rolls_back(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No answer within ``rollback_decision_minutes``: the way back the approved plan
    covers is taken; holding needs a proven person."""
    from openbell.runbooks.loader import load_estate

    path, _, _ = lab
    copy = estate_copy(path, tmp_path, "rollback-unanswered", _decide_rollback(0.1))
    try:
        estate2 = load_estate(copy)
        hosts = estate2.app(APP).hosts
        with AutoApprover(estate2, REGION, f"{REGION}-lead", decisions={"rollback": "ignore"}):
            record = release(copy, "9.0.1-crashes")
        assert not record.passed
        assert decisions_of(record.run_id, "rollback") == []
        back = outcomes(record, "rollback")
        assert back[f"{APP}@{hosts[0]}"].status == Status.CHANGED
        note = next(s.note for s in record.steps if s.name == "rollback")
        assert "the decision was expired without a proven hold: rolled back" in note
        assert current_versions(estate2) == dict.fromkeys(hosts, OLD)
    finally:
        copy.unlink(missing_ok=True)


def test_a_second_decision_after_the_canary_is_shown_its_evidence(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``continue_after_canary``: the other batches wait for the approver group again."""
    import yaml

    from openbell.runbooks.loader import load_estate
    from openbell.tasks.ledger import Ledger

    path, _, _ = lab
    data = yaml.safe_load(path.read_text())
    data["apps"][APP]["release"]["continue_after_canary"] = True
    copy = path.with_name(f"second-decision-{tmp_path.name}.yaml")
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        estate2 = load_estate(copy)
        hosts = estate2.app(APP).hosts
        record = approved_release(estate2, copy, "3.0.1")
        assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
        with Ledger() as ledger:
            asked = [
                e.payload
                for e in ledger.entries(run_id=record.run_id, kinds=["approval_requested"])
            ]
            decided = ledger.entries(run_id=record.run_id, kinds=["approval_decided"])
        assert [a["request"]["step"] for a in asked] == ["canary", "rollout"]
        second = asked[1]
        assert "go on after the canary" in second["summary"]
        assert f"{APP}@{hosts[0]}: soaked" in second["summary"]  # the canary's evidence
        assert sorted(second["changes"]) == sorted(f"{APP}@{h}: {OLD} -> 3.0.1" for h in hosts[1:])
        who = [(e.payload["decision"]["step"], e.payload["decision"]["approver"]) for e in decided]
        assert who == [
            ("canary", f"{REGION}-lead"),
            ("rollout", f"{REGION}-lead"),
        ]
        soak_done = max(o.finished_at for o in outcomes(record, "soak").values())
        assert all(o.started_at >= soak_done for o in outcomes(record, "rollout").values())
        assert current_versions(estate2) == dict.fromkeys(hosts, "3.0.1")
    finally:
        copy.unlink(missing_ok=True)


def _put_back_app(estate: Estate, name: str, version: str) -> None:
    """``name`` on ``version`` on its hosts, running, with no other release and no lock."""
    app = estate.app(name)
    assert app.release is not None
    script = (
        'cd -- "$1" && rm -rf .openbell.lock current.next && '
        'for d in releases/*/; do d=${d%/}; [ "$d" = "releases/$2" ] || rm -rf -- "$d"; done; '
        'ln -sfn "releases/$2" current.next && mv -T -f current.next current'
    )
    with SshPool(estate) as pool:
        for h in app.hosts:
            assert pool.run(h, app.stop).ok
            res = pool.run(h, ["sh", "-c", script, "sh", app.release.root, version])
            assert res.ok, res.stderr
            assert pool.run(h, app.start).ok


def test_several_apps_go_in_dependency_order_and_come_back_in_reverse(lab) -> None:  # type: ignore[no-untyped-def]
    """``--app risk --app refdata``: refdata first (risk depends on it), each its own run;
    ``--rollback`` puts risk back first."""
    from typer.testing import CliRunner

    from openbell.deployments.cli import app as cli
    from openbell.tasks.ledger import Ledger

    path, estate, _ = lab
    refdata, risk = "apac-refdata-001", "apac-risk-001"
    assert refdata in estate.app(risk).depends_on
    old = {n: estate.app(n).expected_version for n in (refdata, risk)}
    new = {refdata: "7.2.1", risk: "3.14.2"}
    assert old == {refdata: "7.2.0", risk: "3.14.1"}
    base = ["run", "release", "--region", REGION, "--estate", str(path), *as_(f"{REGION}-oncall")]
    try:
        with AutoApprover(estate, REGION, f"{REGION}-lead"):
            forward = CliRunner().invoke(
                cli,
                [*base, "--app", risk, "--app", refdata, "--version", new[risk],
                 "--version", new[refdata], "--change", "CHG-9", "--reason", "two apps", "--json"],
            )  # fmt: skip
            assert forward.exit_code == 0, forward.output[-3000:]
            runs = json.loads(forward.stdout)["runs"]
            assert [r["parameters"]["app"] for r in runs] == [refdata, risk]
            assert all(r["status"] == "changed" for r in runs), [r["status"] for r in runs]
            # Started from the CLI with the requester's key: the record says so.
            assert {(r["requester_proof"]["person"], r["requester_proof"]["method"])
                    for r in runs} == {(f"{REGION}-oncall", "ssh-key")}  # fmt: skip
            back = CliRunner().invoke(
                cli,
                [*base, "--app", refdata, "--app", risk, "--rollback", "--change", "CHG-10",
                 "--reason", "back", "--json"],
            )  # fmt: skip
            assert back.exit_code == 0, back.output[-3000:]
            rolled = json.loads(back.stdout)["runs"]
            assert [r["parameters"]["app"] for r in rolled] == [risk, refdata]
        with Ledger() as ledger:
            started = [
                (e.payload["parameters"]["app"], e.payload["parameters"].get("rollback"))
                for e in ledger.entries(kinds=["run_started"])
                if e.payload["runbook"] == "release"
            ]
        assert started == [(refdata, False), (risk, False), (risk, True), (refdata, True)]
        with SshPool(estate) as pool:
            for name, version in old.items():
                a = estate.app(name)
                assert a.release is not None
                for h in a.hosts:
                    link = pool.run(h, ["readlink", f"{a.release.root}/current"])
                    assert link.stdout.strip() == f"releases/{version}", (name, h, link.stdout)
    finally:
        for name, version in old.items():
            _put_back_app(estate, name, version)
