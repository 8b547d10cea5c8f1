"""End of day under faults: SIGKILL at hundreds of kill points, SSH faults, a locked ledger.

1. **Kills.** A lab of several regions (two hosts each, its own OMS, order-entry and
   drop-copy FIX sessions). Per region, an undisturbed end of day on one trading day is
   traced to learn its kill points in order (step boundaries, each target's side effect
   started / applied / recorded, every remote command of an archive, the OMS sweep sent,
   the FIX logout sent). Then, each on a fresh trading day (a day order left open so the
   sweep has work), a *chain*: the first run dies at the next kill point of that list
   (the regions take turns along it, so every position is tried),
   up to two more runs die at random points of their own, and a last run goes
   undisturbed. Counted: kill points tried (runs killed), duplicate visible side effects
   in the lab's effects log (target 0), chains whose last run did not pass, killed runs
   the next run did not record as interrupted, targets completed twice, and the
   recovery time from the last kill to the completed re-run.
2. **SSH faults.** A loopback proxy in front of one host: black-holed at connect,
   stalled after the server's banner and key exchange (at authentication), 2 s of
   latency per packet, a reset, and the server's answer swallowed after the command ran
   (exit status lost). For each, the time the SSH connector took to give up, beyond the
   deadline it was given (connect 3 s, command 10 s): ``max_overrun_s``.
3. **A locked ledger.** Another writer holds the ledger's SQLite write lock for 10 s
   while end of day runs: the run waits and goes on; nothing is lost (the chain
   verifies, every step is there).

Everything lives under a fresh ``OPENBELL_HOME`` in /tmp with its own lab and Prefect
server on free loopback ports, removed at the end.

Usage::

    .venv/bin/python benchmarks/faults.py             # >= 200 kill points (about 25 min)
    .venv/bin/python benchmarks/faults.py --quick     # 2 regions, ~20 kill points

The last line is machine-readable::

    faults: kill_points=... duplicate_effects=... max_overrun_s=... recovery_s_p50=...
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

REGIONS = ["amer", "emea", "apac", "hkg", "xetr", "tsx"]


def say(text: str) -> None:
    print(text, flush=True)


class Lab:
    """A lab and a Prefect server under a fresh OPENBELL_HOME."""

    def __init__(self, regions: list[str]) -> None:
        from tests.fixtures.services import free_port

        self.home = Path(tempfile.mkdtemp(prefix="openbell-faults-"))
        os.environ["OPENBELL_HOME"] = str(self.home)
        os.environ["OPENBELL_PREFECT_PORT"] = str(free_port())
        os.environ.pop("PREFECT_API_URL", None)
        from openbell.settings import get_settings

        get_settings.cache_clear()
        from openbell.lab.generate import generate_estate

        self.estate_path = generate_estate(
            self.home / "estate" / "estate.yaml",
            hosts=2 * len(regions),
            apps_per_host=1,
            tiers=1,
            fix_sessions=2 * len(regions),
            feeds=1,
            regions=regions,
        )
        from openbell.lab import supervisor
        from openbell.runbooks.loader import load_estate

        supervisor.up(self.estate_path, wait_s=120)
        self.estate = load_estate(self.estate_path)
        from openbell.deployments.prefect_server import ensure_server

        self.api = ensure_server(get_settings(), wait_s=180)
        self.ledger_url = f"sqlite:///{self.home / 'ledger.db'}"
        self.env = {
            "OPENBELL_HOME": str(self.home),
            "OPENBELL_LEDGER_URL": self.ledger_url,
            "PREFECT_API_URL": self.api,
            "OPENBELL_KILL_LOG": str(self.home / "runs.log"),
        }

    def close(self) -> None:
        from openbell.deployments.prefect_server import stop_server
        from openbell.lab import supervisor

        try:
            supervisor.down(self.home, timeout_s=20)
        finally:
            stop_server()
            shutil.rmtree(self.home, ignore_errors=True)

    def leave_an_order_open(self, region: str, day: date) -> None:
        from openbell.lab import supervisor
        from openbell.lab.paths import LabPaths

        (db,) = self.estate.oms_in(region)
        LabPaths.of(self.home).fault_book().add("order_left_open", db, trade_date=day.isoformat())
        supervisor.wait_faults_applied(self.home, timeout_s=60)


def kills(lab: Lab, regions: list[str], target: int, seed: int) -> dict[str, Any]:
    from openbell.lab.effects import EffectsLog
    from openbell.tasks.ledger import Ledger
    from tests.fixtures.killer import closed_days, duplicates, kill_chain, trace_points

    rng = random.Random(seed)
    out: dict[str, Any] = {
        "kill_points": 0,
        "chains": 0,
        "duplicates": [],
        "staging_retries": 0,
        "not_passed": 0,
        "not_recorded_interrupted": 0,
        "completed_twice": 0,
        "recovery_s": [],
        "labels": 0,
    }
    effects = EffectsLog(lab.home / "lab" / "effects.jsonl")
    plans: dict[str, tuple[list[str], list[date]]] = {}
    for region in regions:
        days = closed_days(lab.estate, region)[:-1]  # not the newest: it may still settle
        op = f"{region}-oncall"
        lab.leave_an_order_open(region, days[0])
        labels = trace_points(lab.env, region, days[0], lab.estate_path, operator=op, tmp=lab.home)
        plans[region] = (labels, days[1:])
        out["labels"] += len(labels)
        say(f"  {region}: {len(labels)} kill points in an undisturbed run; {len(days) - 1} days")
    turn = 0
    while out["kill_points"] < target and any(days for _, days in plans.values()):
        for i, region in enumerate(regions):
            labels, days = plans[region]
            if not days or out["kill_points"] >= target:
                continue
            day = days.pop(0)
            # Regions take turns along the traced points, so that together they try each
            # position (step boundaries, each target's start / applied / recorded, each
            # remote command of an archive) before any is tried twice.
            first = labels[(turn * len(regions) + i) % len(labels)]
            lab.leave_an_order_open(region, day)
            chain = kill_chain(
                lab.env,
                region,
                day,
                lab.estate_path,
                operator=f"{region}-oncall",
                first=first,
                extra_kills=rng.randint(0, 2),
                rng=rng,
                max_point=len(labels),
            )
            out["chains"] += 1
            out["kill_points"] += len(chain.kills)
            done = chain.finished
            if done is None or not done.passed:
                out["not_passed"] += 1
                say(f"    {region} {day}: last run did not pass: {chain.runs[-1]}")
            names = (
                set(lab.estate.hosts_in(region))
                | set(lab.estate.fix_sessions_in(region))
                | set(lab.estate.oms_in(region))
            )
            dup, staging = duplicates(effects.read(), names, day)
            out["duplicates"] += dup
            out["staging_retries"] += staging
            with Ledger(lab.ledger_url) as ledger:
                runs = [e.run_id for e in ledger.find_runs(region=region, trade_date=day)]
                marked = {e.run_id for e in ledger.entries(kinds=["run_interrupted"])}
                keys = [
                    (e.payload["key"]["step"], e.payload["key"]["target"])
                    for e in ledger.entries(kinds=["completion"])
                    if e.payload["key"]["trade_date"] == day.isoformat()
                    and e.payload["key"]["region"] == region
                ]
            out["not_recorded_interrupted"] += len(set(runs[:-1]) - marked)
            out["completed_twice"] += len(keys) - len(set(keys))
            if chain.kills and done is not None:
                out["recovery_s"].append(chain.recovery_s)
            say(
                f"    {region} {day}: killed at {', '.join(chain.kills) or '-'}; "
                f"{len(chain.runs)} runs; dup {len(dup)}; recovered in {chain.recovery_s:.1f} s"
            )
        turn += 1
    return out


def ssh_overruns(lab: Lab) -> dict[str, float]:
    """Seconds past its deadline each SSH fault kept the connector, per fault."""
    import yaml

    from openbell.lab.effects import EffectsLog
    from openbell.runbooks.loader import load_estate
    from openbell.tasks.connectors.ssh import SshPool
    from tests.fixtures.tcpproxy import FaultProxy

    region = "amer"
    host = sorted(h for h in lab.estate.hosts_in(region) if "-app" in h)[0]
    spec = lab.estate.host(host)
    work = lab.home / "proxied"
    work.mkdir(exist_ok=True)
    results: dict[str, float] = {}
    cases: list[tuple[str, dict[str, Any], float, list[str]]] = [
        ("blackhole", {}, spec.connect_timeout_s, ["true"]),
        ("stall_after", {"after_bytes": 64}, spec.connect_timeout_s, ["true"]),
        ("latency", {"latency_s": 2.0}, spec.connect_timeout_s, ["true"]),
        ("reset_after", {"after_bytes": 64}, spec.connect_timeout_s, ["true"]),
        ("cut_when", {}, spec.command_timeout_s, ["mv", "-f", "--", "a.tmp", "a.txt"]),
    ]
    effects = EffectsLog(lab.home / "lab" / "effects.jsonl")
    for mode, settings, deadline, argv in cases:
        proxy = FaultProxy(spec.port).start()
        try:
            proxy.mode = mode
            for k, v in settings.items():
                setattr(proxy, k, v)
            if mode == "cut_when":
                seen = len(effects.read(kind="move", target=host))
                proxy.cut = lambda seen=seen: len(effects.read(kind="move", target=host)) > seen
            doc = yaml.safe_load(lab.estate_path.read_text())
            doc["hosts"][host]["port"] = proxy.port
            known = Path(lab.estate.known_hosts).read_text()
            line = next(
                ln for ln in known.splitlines() if ln.startswith(f"[127.0.0.1]:{spec.port} ")
            )
            (work / "known_hosts").write_text(
                known + line.replace(f":{spec.port} ", f":{proxy.port} ", 1) + "\n"
            )
            doc["known_hosts"] = str(work / "known_hosts")
            (work / "estate.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            shutil.copy(lab.estate_path.parent / "entitlements.yaml", work / "entitlements.yaml")
            estate = load_estate(work / "estate.yaml")
            with SshPool(estate) as pool:
                if mode == "cut_when":  # the file to move, through a clean connection first
                    proxy.mode = "pass"
                    pool.run(host, ["touch", "a.tmp"])
                    pool.close()
                    proxy.mode = "cut_when"
                started = time.monotonic()
                error = ""
                try:
                    pool.run(host, argv)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                took = time.monotonic() - started
            results[mode] = round(max(0.0, took - deadline), 2)
            say(
                f"  ssh {mode}: gave up after {took:.2f} s (deadline {deadline:g} s): {error[:120]}"
            )
        finally:
            proxy.close()
    return results


def locked_ledger(lab: Lab, hold_s: float = 10.0) -> dict[str, Any]:
    """End of day while another writer holds the ledger's write lock for ``hold_s``."""
    from openbell.tasks.ledger import Ledger
    from tests.fixtures.killer import closed_days, run_eod

    region = "amer"
    day = closed_days(lab.estate, region)[-1]
    db = lab.home / "ledger.db"
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(hold_s)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    result = run_eod(lab.env, region, day, lab.estate_path, operator=f"{region}-oncall")
    holder.join()
    with Ledger(lab.ledger_url) as ledger:
        verified = ledger.verify().ok
        steps = [e.payload["name"] for e in ledger.entries(run_id=result.run_id, kinds=["step"])]
    say(
        f"  ledger locked {hold_s:g} s: run {'passed' if result.passed else 'did not pass'} "
        f"in {result.wall_s:.1f} s; chain {'verifies' if verified else 'BROKEN'}; "
        f"{len(steps)} steps recorded"
    )
    return {"passed": result.passed, "wall_s": result.wall_s, "verified": verified, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2 regions, about 20 kill points")
    parser.add_argument("--kill-points", type=int, default=None, help="at least this many")
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args(argv)
    regions = REGIONS[:2] if args.quick else REGIONS
    target = args.kill_points or (20 if args.quick else 200)
    t0 = time.monotonic()
    say(f"faults: {len(regions)} regions, target {target} kill points, {os.cpu_count()} cores")
    lab = Lab(regions)
    try:
        say(f"lab and Prefect server up in {time.monotonic() - t0:.0f} s ({lab.home})")
        say("1. kills")
        k = kills(lab, regions, target, args.seed)
        say("2. SSH faults")
        overruns = ssh_overruns(lab)
        say("3. locked ledger")
        locked = locked_ledger(lab)
    finally:
        lab.close()
    rec = k["recovery_s"]
    p50 = statistics.median(rec) if rec else float("nan")
    p95 = sorted(rec)[int(0.95 * (len(rec) - 1))] if rec else float("nan")
    say("")
    say(
        f"kill points tried: {k['kill_points']} in {k['chains']} chains "
        f"({k['labels']} distinct points traced)"
    )
    say(f"duplicate visible side effects: {len(k['duplicates'])} {k['duplicates'][:5]}")
    say(f"staging retries (tar into an unpublished .part): {k['staging_retries']}")
    say(f"chains whose last run did not pass: {k['not_passed']}")
    say(f"killed runs not recorded as interrupted: {k['not_recorded_interrupted']}")
    say(f"targets completed twice: {k['completed_twice']}")
    say(f"recovery from the last kill to a completed run: p50 {p50:.1f} s, p95 {p95:.1f} s")
    say(f"SSH overrun beyond the deadline, per fault: {overruns}")
    say(f"ledger locked 10 s: passed={locked['passed']} verified={locked['verified']}")
    say(f"total {time.monotonic() - t0:.0f} s")
    print(
        f"faults: kill_points={k['kill_points']} duplicate_effects={len(k['duplicates'])} "
        f"max_overrun_s={max(overruns.values()):.2f} recovery_s_p50={p50:.1f}"
    )
    ok = not k["duplicates"] and not k["not_passed"] and locked["passed"] and locked["verified"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
