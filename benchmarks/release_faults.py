"""Releases under SIGKILL: every host ends on one version, none is switched twice.

A lab with one region whose app ``<region>-router`` runs on several hosts (their own
loopback addresses) and the lab's artifact repository. An undisturbed release is traced
to learn its kill points in order (each step's start and end, each host's side effect
started / applied / recorded, the app stopped and the link swapped on each host). Then,
per chain, a release of the next good version (alternating, so every chain is a real
change) dies at the next kill point of that list, and is re-run undisturbed; a second
person approves every request (``tests/fixtures/approver.py``). Judged per chain:

- ``mixed_versions``: chains that ended with the hosts on different versions;
- ``double_switches``: hosts whose ``current`` was moved more than once by the release
  (from the lab's effects log; a rollback adds its own switch back, counted apart);
- ``not_passed``: chains whose last run did not pass.

Usage::

    .venv/bin/python benchmarks/release_faults.py              # >= 100 kill points
    .venv/bin/python benchmarks/release_faults.py --kills 6    # a bounded run

The last line is machine-readable::

    release_faults: kill_points=... mixed_versions=0 double_switches=0 not_passed=0 ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

REGION = "emea"
APP = f"{REGION}-router"
ROOT = f"apps/{APP}"
INSIDE_WINDOW = "2026-12-05T12:00:00+00:00"  # a Saturday: emea's window is open


def say(text: str) -> None:
    print(text, flush=True)


def setup(hosts: int) -> tuple[Path, Path, dict[str, str], Any]:
    from tests.fixtures.services import free_port

    home = Path(tempfile.mkdtemp(prefix="openbell-release-faults-"))
    os.environ.update(
        {
            "OPENBELL_HOME": str(home),
            "OPENBELL_PREFECT_PORT": str(free_port()),
            "OPENBELL_REHEARSAL_AT": INSIDE_WINDOW,
            "OPENBELL_LEDGER_URL": f"sqlite:///{home / 'ledger.db'}",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    from openbell.settings import get_settings

    get_settings.cache_clear()
    from openbell.lab import supervisor
    from openbell.lab.generate import generate_estate
    from openbell.runbooks.loader import load_estate

    path = generate_estate(
        home / "estate" / "estate.yaml",
        hosts=1,
        apps_per_host=1,
        tiers=1,
        fix_sessions=0,
        feeds=0,
        regions=(REGION,),
        release_hosts=hosts,
        soak_s=1.0,
    )
    supervisor.up(path, wait_s=120)
    estate = load_estate(path)
    from openbell.deployments.prefect_server import ensure_server
    from openbell.tasks.connectors.ssh import SshPool

    api = ensure_server(get_settings(), wait_s=180)
    os.environ["PREFECT_API_URL"] = api
    with SshPool(estate) as pool:
        for h in estate.app(APP).hosts:
            assert pool.run(h, estate.app(APP).start).ok
    env = {
        "OPENBELL_HOME": str(home),
        "OPENBELL_LEDGER_URL": os.environ["OPENBELL_LEDGER_URL"],
        "OPENBELL_REHEARSAL_AT": INSIDE_WINDOW,
        "PREFECT_API_URL": api,
        "OPENBELL_KILL_LOG": str(home / "runs.log"),
    }
    return home, path, env, estate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="kill points to try")
    parser.add_argument("--hosts", type=int, default=4)
    args = parser.parse_args(argv)
    home, path, env, estate = setup(args.hosts)
    from openbell.lab.artifacts import versions_of
    from tests.fixtures.approver import AutoApprover
    from tests.fixtures.killer import run_eod
    from tests.fixtures.release import current_versions, effects_now, switches

    good = [
        v
        for v, b in versions_of(estate.app(APP)).items()
        if b["health"] == "ok"
        and not b["crash_after_s"]
        and not b["log_errors"]
        and not b.get("signed_by_other")
    ]
    out: dict[str, Any] = {
        "kill_points": 0,
        "chains": 0,
        "mixed_versions": 0,
        "double_switches": 0,
        "not_passed": 0,
        "recovery_s": [],
    }
    started = time.monotonic()
    try:
        with AutoApprover(estate, REGION, f"{REGION}-lead"):

            def run(version: str, kill_at: str | None = None, trace: Path | None = None) -> Any:
                return run_eod(
                    env,
                    REGION,
                    None,
                    path,
                    operator=f"{REGION}-oncall",  # type: ignore[arg-type]
                    kill_at=kill_at,
                    trace=trace,
                    runbook="release",
                    extra={
                        "app": APP,
                        "version": version,
                        "change": "CHG-BENCH",
                        "reason": "kill points",
                    },
                    timeout_s=300,
                )

            trace = home / "trace.txt"
            first = run(good[1], trace=trace)
            assert first.passed, first
            labels = trace.read_text().split()
            say(f"  an undisturbed release: {len(labels)} kill points, {first.wall_s:.1f} s")
            current = good[1]
            i = 0
            # A kill point an earlier chain's outcome made unreachable does not count; the
            # chains are bounded so a release that cannot pass ends the benchmark.
            while out["kill_points"] < args.kills and out["chains"] < 2 * args.kills:
                target = good[2] if current == good[1] else good[1]
                label = labels[i % len(labels)]
                i += 1
                mark = effects_now()
                killed = run(target, kill_at=label)
                t_kill = time.monotonic()
                if killed.killed:
                    out["kill_points"] += 1
                finished = run(target)
                out["recovery_s"].append(time.monotonic() - t_kill)
                out["chains"] += 1
                now = current_versions(estate, APP)
                if len(set(now.values())) != 1:
                    out["mixed_versions"] += 1
                if not finished.passed:
                    out["not_passed"] += 1
                moved = switches(ROOT, mark)
                out["double_switches"] += sum(1 for n in moved.values() if n > 1)
                if finished.passed and set(now.values()) == {target}:
                    current = target
                say(
                    f"    kill at {label}: killed={killed.killed} then passed={finished.passed}; "
                    f"hosts {sorted(set(now.values()))}; switches {moved}"
                )
    finally:
        from openbell.deployments.prefect_server import stop_server
        from openbell.lab import supervisor

        try:
            supervisor.down(home, timeout_s=20)
        finally:
            stop_server()
            shutil.rmtree(home, ignore_errors=True)
    rec = out["recovery_s"] or [0.0]
    say(
        f"release_faults: kill_points={out['kill_points']} chains={out['chains']} "
        f"mixed_versions={out['mixed_versions']} double_switches={out['double_switches']} "
        f"not_passed={out['not_passed']} recovery_s_p50={statistics.median(rec):.1f} "
        f"wall_s={time.monotonic() - started:.0f}"
    )
    bad = out["mixed_versions"] + out["double_switches"] + out["not_passed"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
