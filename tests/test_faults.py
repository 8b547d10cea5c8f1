"""End of day killed with SIGKILL mid-flight, then re-run: every side effect exactly once.

The bounded version of ``benchmarks/faults.py``: a traced undisturbed run on one day
gives the kill points; then, each on a fresh trading day of the lab, runs are killed at
a step boundary, after the OMS cancel sweep was sent, after the FIX logout was sent,
between publishing an archive and removing its files, and after a side effect was
applied but before it was recorded as done. Each kill is followed by one more random
kill and an undisturbed run.
"""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest

from openbell.lab.effects import EffectsLog
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.runbooks.schema import Estate
from openbell.tasks.ledger import Ledger
from tests.fixtures.killer import closed_days, duplicates, kill_chain, trace_points
from tests.test_end_of_day import eod_day

pytestmark = pytest.mark.integration

REGION = "amer"
OPERATOR = "amer-oncall"


def fresh_days(estate: Estate, count: int) -> list[date]:
    """Closed sessions the lab trades that no other test runs end of day on: the newest
    but one (``tests/test_ssh_faults.py`` takes the oldest)."""
    closed = closed_days(estate, REGION, exclude=(eod_day(),))[:-1]
    if len(closed) < count + 6:
        pytest.skip(f"the lab trades only {len(closed)} closed sessions of {REGION} now")
    return closed[-count:]


def test_killed_anywhere_then_rerun_applies_each_side_effect_once(
    prefect_server: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: FaultBook,
    tmp_path: Path,
) -> None:
    path, estate = lab_estate
    home = LabPaths.of().home
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {
        "OPENBELL_HOME": str(home),
        "OPENBELL_LEDGER_URL": ledger_url,
        "PREFECT_API_URL": prefect_server,
    }
    days = fresh_days(estate, 7)
    from openbell.lab import supervisor

    (db,) = estate.oms_in(REGION)

    def leave_an_order_open(day: date) -> None:
        """So that the cancel sweep has something to do (one such break at a time)."""
        lab_faults.add("order_left_open", db, trade_date=day.isoformat())
        assert supervisor.wait_faults_applied(timeout_s=30)

    leave_an_order_open(days[0])
    labels = trace_points(env, REGION, days[0], path, operator=OPERATOR, tmp=tmp_path)

    def first(fragment: str) -> str:
        found = [lb for lb in labels if fragment in lb]
        assert found, f"no kill point with {fragment!r} in {labels}"
        return found[0]

    chosen = [
        first("recon:end"),  # a step boundary
        first(":swept#"),  # the OMS sweep sent, nothing recorded
        first(":logged_out#"),  # the FIX logout sent, nothing recorded
        next(lb for lb in labels if lb.startswith("archive:") and ":mv#" in lb),  # published,
        # its files not removed yet
        next(lb for lb in labels if lb.startswith("archive:") and ":acted#" in lb),
    ]
    # Between keeping a FIX store's messages and its numbers (sessions not reset that day).
    chosen += [lb for lb in labels if lb.startswith("fix_eod:") and lb.endswith(":mv#1")][:1]
    rng = random.Random(7)
    hosts = set(estate.hosts_in(REGION)) | set(estate.fix_sessions_in(REGION))
    names = hosts | set(estate.oms_in(REGION))
    for label, day in zip(chosen, days[1:], strict=False):
        leave_an_order_open(day)
        chain = kill_chain(
            env,
            REGION,
            day,
            path,
            operator=OPERATOR,
            first=label,
            extra_kills=1,
            rng=rng,
            max_point=len(labels),
        )
        assert chain.kills and chain.kills[0] == label, chain
        done = chain.finished
        assert done is not None and done.passed, chain
        dup, _staging = duplicates(EffectsLog.of(home / "lab").read(), names, day)
        assert dup == [], f"killed at {chain.kills}: {dup}"
        with Ledger(ledger_url) as ledger:
            runs = [e.run_id for e in ledger.find_runs(region=REGION, trade_date=day)]
            interrupted = {e.run_id for e in ledger.entries(kinds=["run_interrupted"])}
            keys = [
                e.payload["key"]
                for e in ledger.entries(kinds=["completion"])
                if e.payload["key"]["trade_date"] == day.isoformat()
            ]
        assert len(runs) == len(chain.runs)
        assert interrupted >= set(runs[:-1]), (chain, runs)  # every killed run was recorded
        targets = [(k["step"], k["target"]) for k in keys]
        assert len(targets) == len(set(targets)), "a target completed twice"
        assert {s for s, _ in targets} == {"day_orders", "fix_eod", "archive"}


def test_the_judge_counts_only_commands_that_completed(tmp_path: Path) -> None:
    """A host command killed with its run (exit None) or failed did not apply; two that
    completed are a duplicate, whatever else is in the log."""
    log = EffectsLog(tmp_path / "effects.jsonl")
    day = date(2026, 11, 10)
    mv = "xetr-gw001|mv -n -- var/fix/store/s/messages.log var/fix/store/s/messages.log-20261110"
    cp = "xetr-gw001|cp -p -- var/fix/store/s/seqnums var/fix/store/s/seqnums-20261110"
    log.record("move", "xetr-gw001", key=mv, exit=None)  # killed before it renamed
    log.record("move", "xetr-gw001", key=mv, exit=0)  # the re-run's
    log.record("copy", "xetr-gw001", key=cp, exit=0)
    log.record("copy", "xetr-gw001", key=cp, exit=1)  # failed: changed nothing
    log.record("fix_logout", "s", key="s|2026-11-10")
    assert duplicates(log.read(), {"xetr-gw001", "s"}, day) == ([], 0)
    log.record("copy", "xetr-gw001", key=cp, exit=0)
    log.record("fix_logout", "s", key="s|2026-11-10")
    dup, _ = duplicates(log.read(), {"xetr-gw001", "s"}, day)
    assert dup == [f"copy {cp} x2 (exits 0, 1, 0)", "fix_logout s|2026-11-10 x2 (exits -, -)"]
