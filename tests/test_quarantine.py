"""Hosts a release left quarantined: start of day fails on them until they are cleared.

The ledger side (recorded by a rollback that could not finish; cleared by a re-run that
finishes it) is exercised against the lab in test_release.py. Here: start of day's
``quarantine`` step on what the ledger says, and ``openbell quarantine list|clear``,
where clearing is a decision (a proven person entitled to approve releases in the region,
with a reason) and each refusal is recorded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.outcome import Status
from openbell.tasks.context import StepRun
from openbell.tasks.ledger import Ledger
from openbell.tasks.quarantine import check_quarantine
from openbell.tasks.release import records
from tests.fixtures.people import as_

LAB = str(Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml")
HOST, OTHER = "apac-app1", "apac-app2"


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OPENBELL_LEDGER_URL", url)
    with Ledger(url) as ledger:
        for host in (HOST, OTHER):
            records.record_quarantine(
                ledger,
                "run-1234567890",
                region="apac",
                app="apac-oms",
                host=host,
                key="apac-oms@5.0.4#m0/a0",
                reason=f"{host} does not answer, its state is unknown",
            )
    return url


def sod_step(url: str, region: str = "apac") -> list:  # type: ignore[type-arg]
    with Ledger(url) as ledger, ThreadPoolExecutor(2) as pool:
        ctx = SimpleNamespace(ledger=ledger, region=region, pool=pool)
        return asyncio.run(check_quarantine(ctx, StepRun("quarantine", "No host quarantined")))  # type: ignore[arg-type]


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["quarantine", *args])
    return result.exit_code, result.output


def refusals(url: str) -> list[str]:
    with Ledger(url) as ledger:
        return [e.payload["reason"] for e in ledger.entries(kinds=["refusal"])]


def test_start_of_day_fails_on_each_quarantined_host_and_passes_once_cleared(
    ledger_url: str,
) -> None:
    found = sod_step(ledger_url)
    assert [(o.target, o.status) for o in found] == [
        (HOST, Status.FAILED),
        (OTHER, Status.FAILED),
    ]
    assert found[0].detail.startswith(f"DO NOT OPEN with {HOST}: apac-oms quarantined by")
    assert "openbell quarantine clear apac-app1 --region apac" in found[0].detail
    # another region's start of day is not held up by apac's hosts
    assert [o.status for o in sod_step(ledger_url, "emea")] == [Status.OK]
    with Ledger(ledger_url) as ledger:
        for host in (HOST, OTHER):
            records.record_cleared(
                ledger,
                None,
                region="apac",
                app="apac-oms",
                host=host,
                how="rolled back",
                by="alice",
                reason="test",
            )
    again = sod_step(ledger_url)
    assert [(o.target, o.status) for o in again] == [("apac quarantine", Status.OK)]
    # quarantined again later: the last entry per host decides
    with Ledger(ledger_url) as ledger:
        records.record_quarantine(
            ledger, "run-2", region="apac", app="apac-oms", host=OTHER, key="k", reason="again"
        )
    assert [o.target for o in sod_step(ledger_url)] == [OTHER]


def test_list_names_the_hosts_and_exits_1(ledger_url: str) -> None:
    code, text = cli("list", "--region", "apac", "--estate", LAB)
    assert code == 1
    assert f"{HOST}: apac-oms quarantined by apac-oms@5.0.4#m0/a0" in text
    code, text = cli("list", "--region", "emea", "--estate", LAB)
    assert (code, text.strip()) == (0, "no host of emea is quarantined")
    code, text = cli("list", "--region", "mars", "--estate", LAB)
    assert code != 0 and "apac" in text and "emea" in text


def test_clear_needs_a_proven_entitled_person_and_a_reason(ledger_url: str) -> None:
    base = ("clear", HOST, "--region", "apac", "--estate", LAB)
    # a typed name proves nothing
    code, text = cli(*base, "--reason", "disk replaced", "--as", "alice")
    assert code == 1 and "refused" in text
    # erin signs, but may not approve releases in apac
    code, text = cli(*base, "--reason", "disk replaced", *as_("erin"))
    assert code == 1 and "refused" in text
    # a blank reason
    code, text = cli(*base, "--reason", "  ", *as_("alice"))
    assert code == 1 and "--reason" in text
    assert len(refusals(ledger_url)) == 3
    code, _ = cli("list", "--region", "apac", "--estate", LAB)
    assert code == 1  # still quarantined after every refusal
    # a host that is not quarantined: the ones that are
    code, text = cli("clear", "apac-app9", "--region", "apac", "--estate", LAB,
                     "--reason", "x", *as_("alice"))  # fmt: skip
    assert code == 1 and f"quarantined hosts there: {HOST}, {OTHER}" in text
    # alice (apac-approvers), with her key
    code, text = cli(*base, "--reason", "disk replaced, app restarted on 5.0.3", *as_("alice"))
    assert code == 0, text
    assert f"cleared {HOST} in apac as alice" in text
    with Ledger(ledger_url) as ledger:
        cleared = ledger.entries(kinds=["host_cleared"])
        assert [(e.payload["host"], e.payload["by"], e.payload["how"]) for e in cleared] == [
            (HOST, "alice", "cleared by hand")
        ]
        assert list(records.quarantined(ledger, "apac")) == [OTHER]
