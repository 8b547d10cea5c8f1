"""SSH faults in front of one lab host, during end of day: the step reports the host and
the cause, the run never hangs, and an ambiguous outcome is reconciled by reading state.

A loopback proxy (``tests/fixtures/tcpproxy.py``) stands between openbell and the
host's SSH server: it black-holes the connection, stalls it after the server's banner
and key exchange, adds 2 s to every packet, resets it, or swallows what the server sends
once the command has run (so its exit status never arrives).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from openbell.deployments.runner import run_runbook
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings
from tests.fixtures.killer import closed_days
from tests.fixtures.tcpproxy import FaultProxy
from tests.test_end_of_day import eod_day

pytestmark = pytest.mark.integration

REGION = "amer"


@pytest.fixture
def behind_proxy(
    prefect_server: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: FaultBook,
    fault_proxy: Callable[[int], FaultProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Estate, str, FaultProxy]:
    """A copy of the lab estate whose first amer app host is reached through a proxy."""
    monkeypatch.setenv("OPENBELL_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    get_settings.cache_clear()
    src, estate = lab_estate
    host = sorted(h for h in estate.hosts_in(REGION) if "-app" in h)[0]
    port = estate.host(host).port
    proxy = fault_proxy(port)
    doc = yaml.safe_load(src.read_text())
    doc["hosts"][host]["port"] = proxy.port
    known = Path(estate.known_hosts).read_text()
    line = next(ln for ln in known.splitlines() if ln.startswith(f"[127.0.0.1]:{port} "))
    (tmp_path / "known_hosts").write_text(
        known + line.replace(f":{port} ", f":{proxy.port} ", 1) + "\n"
    )
    doc["known_hosts"] = str(tmp_path / "known_hosts")
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(src.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    return path, load_estate(path), host, proxy


def run(path: Path, day: date) -> RunRecord:
    return run_runbook("eod", REGION, day, estate=path, operator="amer-oncall")


def outcome(record: RunRecord, step: str, target: str) -> Outcome:
    found = [o for s in record.steps if s.name == step for o in s.outcomes if o.target == target]
    assert found, f"no {step} outcome for {target}"
    return found[0]


def day_for(estate: Estate, which: int) -> date:
    """The oldest closed sessions, one per test (``tests/test_faults.py`` takes the newest)."""
    return closed_days(estate, REGION, exclude=(eod_day(),))[which]


@pytest.mark.parametrize(
    ("mode", "settings", "which", "words"),
    [
        ("blackhole", {}, 0, ["no ssh banner came within 3 s"]),
        ("stall_after", {"after_bytes": 64}, 1, ["within 3 s"]),
        ("latency", {"latency_s": 2.0}, 2, ["within 3 s"]),
        ("reset_after", {"after_bytes": 64}, 3, []),
    ],
    ids=["blackhole-at-connect", "stall-at-auth", "latency-2s", "reset"],
)
def test_a_host_that_does_not_answer_fails_its_steps_and_the_rest_goes_on(
    behind_proxy: tuple[Path, Estate, str, FaultProxy],
    mode: str,
    settings: dict[str, Any],
    which: int,
    words: list[str],
) -> None:
    path, estate, host, proxy = behind_proxy
    proxy.mode = mode
    for k, v in settings.items():
        setattr(proxy, k, v)
    record = run(path, day_for(estate, which))
    archived = outcome(record, "archive", host)
    assert archived.status in (Status.FAILED, Status.UNKNOWN)
    assert host in archived.target and archived.detail
    for word in words:
        assert word in archived.detail.lower(), archived.detail
    others = [
        o for s in record.steps if s.name == "archive" for o in s.outcomes if o.target != host
    ]
    assert others and all(o.passed for o in others), others
    # the FIX end of day and the reconciliation do not depend on that host
    assert all(o.passed for s in record.steps if s.name in ("fix_eod", "recon") for o in s.outcomes)


def test_the_exit_status_lost_after_the_command_ran_is_reconciled_from_state(
    behind_proxy: tuple[Path, Estate, str, FaultProxy],
) -> None:
    path, estate, host, proxy = behind_proxy
    day = day_for(estate, 4)
    effects = EffectsLog(LabPaths.of().effects_file)
    tag = day.isoformat()

    def published() -> bool:  # the archive's `mv` has run on the host
        return any(tag in e.key for e in effects.read(kind="move", target=host))

    proxy.mode, proxy.cut = "cut_when", published
    record = run(path, day)
    archived = outcome(record, "archive", host)
    assert archived.status == Status.CHANGED, archived.detail
    assert re.search(
        r"was unknown \(.*no exit status.*\); reconciled by reading state", archived.detail
    )
    assert "reconciled_from" in archived.evidence
    moves = [e for e in effects.read(kind="move", target=host) if tag in e.key]
    assert len(moves) == 1, moves  # published once: the state said so, nothing re-run blindly
    assert record.passed, [(s.name, s.summary()) for s in record.steps if not s.passed]
