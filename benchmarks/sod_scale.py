"""Start of day at scale: wall time, physical floor, the naive build, and a size sweep.

Builds a single-region lab (``emea``) of 200 hosts, 400 apps in 4 dependency tiers, 50
FIX sessions and 20 feeds, with the lab's ``latency`` fault making every answer (SSH
command, FIX message, feed and app HTTP) wait 50 ms, and prints:

1. the wall time of the real flow, ``run_runbook("sod", ...)`` on a local Prefect
   server: a warm-up run (every app is down, so it starts them all) and then
   steady-state runs (apps already up; the median of those that passed is the headline);
2. the physical floor: the sequential latency rounds on the critical path of the
   plan x 50 ms, plus the client CPU the probes need (measured per kind of operation,
   outside Prefect) x their number / cores;
3. the same checklist built naively, one Prefect task per probe, each opening its own
   SSH connection or HTTP client (``benchmarks/naive_sod.py``);
4. wall/floor and naive/wall;
5. the steady-state wall time at 50, 100, 200 and 400 hosts (2 apps per host, same 4
   tiers; FIX sessions and feeds fixed at 50 and 20).

It also prints where the CPU went (this process, the lab process with the commands it
ran, the lab's app processes, the Prefect server, and any other process on the machine),
because on a small machine the lab competes with the client for the same cores.

Everything lives under a fresh ``OPENBELL_HOME`` in /tmp with its own Prefect server on
a free loopback port; both are stopped at the end, and a watchdog ends the run if it
overstays its budget.

Usage::

    .venv/bin/python benchmarks/sod_scale.py            # full run (13 min on 2 cores)
    .venv/bin/python benchmarks/sod_scale.py --quick    # 20 hosts, no sweep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REGION = "emea"
TIERS = 4
APPS_PER_HOST = 2
CORES = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")

_NUMBER = re.compile(r"\d+(\.\d+)?")
_HOSTNAME = re.compile(r"\b[a-z]+-(app|gw)N\b")

if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Config:
    """What one benchmark run measures."""

    hosts: int
    fix_sessions: int
    feeds: int
    latency_ms: int
    steady_runs: int
    sweep: tuple[int, ...]
    naive: bool
    naive_threads: int
    calibration_hosts: int
    prefect_log_level: str
    budget_s: float
    keep: bool


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 hosts, 10 sessions, no sweep")
    p.add_argument("--hosts", type=int, help="hosts of the headline lab (default 200)")
    p.add_argument("--latency-ms", type=int, default=50)
    p.add_argument("--steady-runs", type=int, help="steady-state runs (median is reported)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive build")
    p.add_argument(
        "--naive-threads",
        type=int,
        default=64,
        help="task-runner threads of the naive build (default: the real flow's 64 probe threads)",
    )
    p.add_argument("--sweep", help="comma-separated host counts (default 50,100,200,400)")
    p.add_argument(
        "--prefect-log-level",
        default="WARNING",
        help="PREFECT_LOGGING_LEVEL of this process (INFO shows the cost of run logs)",
    )
    p.add_argument("--budget-s", type=float, help="abort (and clean up) after this long")
    p.add_argument("--keep", action="store_true", help="keep the scratch OPENBELL_HOME")
    a = p.parse_args(argv)
    hosts = a.hosts or (20 if a.quick else 200)
    sweep = a.sweep if a.sweep is not None else ("" if a.quick else "50,100,200,400")
    return Config(
        hosts=hosts,
        fix_sessions=10 if a.quick else 50,
        feeds=5 if a.quick else 20,
        latency_ms=a.latency_ms,
        steady_runs=a.steady_runs or (2 if a.quick else 1),
        sweep=tuple(int(x) for x in sweep.split(",") if x.strip()),
        naive=not a.no_naive,
        naive_threads=a.naive_threads,
        calibration_hosts=min(hosts, 40),
        prefect_log_level=a.prefect_log_level.upper(),
        budget_s=a.budget_s or (400.0 if a.quick else 1800.0),
        keep=a.keep,
    )


# ---- processes we start, and the CPU they use ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bootstrap_env(home: Path, api_url: str, log_level: str) -> None:
    """Point openbell and Prefect at the scratch home and server (before importing them)."""
    os.environ["OPENBELL_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect-client")
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_LOGGING_LEVEL"] = log_level
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for name in ("OPENBELL_SLACK_TOKEN", "OPENBELL_ESTATE", "OPENBELL_PREFECT_PORT"):
        os.environ.pop(name, None)


class PrefectServer:
    """``prefect server start`` on a free loopback port (``deployments.launcher``)."""

    def __init__(self, home: Path) -> None:
        self.home = home / "prefect-server"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from openbell.deployments import launcher

        self.proc = launcher.start_prefect_server(self.home, self.port)

    def wait_healthy(self, wait_s: float = 120.0) -> None:
        from openbell.deployments import launcher

        launcher.wait_healthy(self.url, wait_s=wait_s, proc=self.proc, log=self.home / "server.log")

    def stop(self) -> None:
        from openbell.deployments import launcher

        if self.proc is not None and self.proc.poll() is None:
            launcher.stop_group(self.proc, kill_wait_s=5.0)


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (with its reaped children when asked), 0 if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class CpuMeter:
    """CPU seconds by party: this process, the lab, its apps, the Prefect server."""

    def __init__(self, home: Path, server: PrefectServer) -> None:
        self.home = home
        self.server = server

    def sample(self) -> dict[str, float]:
        from openbell.lab.paths import LabPaths, read_pid

        paths = LabPaths.of(self.home)
        lab_pid = read_pid(paths.pid_file)
        app_pids = [read_pid(f) for f in paths.hosts_dir.glob("*/var/run/*.pid")]
        server = self.server.proc.pid if self.server.proc else 0
        return {
            "client": time.process_time(),
            "lab": _proc_cpu(lab_pid, children=True) if lab_pid else 0.0,
            "apps": sum(_proc_cpu(p) for p in app_pids if p),
            "prefect": _proc_cpu(server, True) + sum(_proc_cpu(p) for p in _descendants(server)),
            "machine": _machine_busy(),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds per party between two samples; ``other`` is everyone else's."""
        out = {k: max(after[k] - before[k], 0.0) for k in before if k != "machine"}
        busy = after["machine"] - before["machine"]
        out["other"] = max(busy - sum(out.values()), 0.0)
        return out


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, since boot)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# ---- the lab -------------------------------------------------------------------------------------
class Lab:
    """One generated single-region estate and its lab, with the latency fault set."""

    def __init__(
        self, home: Path, hosts: int, fix_sessions: int, feeds: int, latency_ms: int
    ) -> None:
        from openbell.lab.generate import generate_estate
        from openbell.runbooks.loader import load_estate

        self.home = home
        self.path = generate_estate(
            home / f"estate-{hosts}.yaml",
            hosts=hosts,
            apps_per_host=APPS_PER_HOST,
            tiers=TIERS,
            fix_sessions=fix_sessions,
            feeds=feeds,
            regions=(REGION,),
        )
        self.estate = load_estate(self.path)
        self.latency_ms = latency_ms

    def up(self) -> float:
        from openbell.lab import supervisor
        from openbell.lab.paths import LabPaths

        book = LabPaths.of(self.home).fault_book()
        book.clear()
        book.add("latency", "*", ms=self.latency_ms)
        started = time.perf_counter()
        supervisor.up(self.path, home=self.home, wait_s=180)
        return time.perf_counter() - started

    def down(self) -> None:
        from openbell.lab import supervisor

        supervisor.down(self.home, timeout_s=20)

    def trade_date(self) -> date:
        """The last completed session of the region's primary calendar (seeded by the lab)."""
        from openbell.tasks.connectors.calendar import previous_session

        return previous_session(self.estate.region(REGION).primary_calendar, date.today())


# ---- one run of a flow -------------------------------------------------------------------------
@dataclass
class Run:
    """What one flow run did, and what it cost."""

    label: str
    wall_s: float
    cpu: dict[str, float]
    status: str
    counts: dict[str, int]
    probes: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[str, float, float]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_outcomes(self) -> int:
        return sum(self.counts.values())


def probe_counts(record: Any) -> dict[str, int]:
    """Operations against the estate that a run's outcomes stand for, by kind."""
    from openbell.outcome import Status

    n = dict.fromkeys(("ssh_connect", "ssh_command", "http_get", "fix_probe", "sql_check"), 0)
    hosts: set[str] = set()
    for step in record.steps:
        for o in step.outcomes:
            if step.name in ("disk", "clock", "fix_store", "logs"):
                n["ssh_command"] += 1
                hosts.add(o.target.split(":", 1)[0])
            elif step.name == "apps" and o.status != Status.SKIPPED:
                n["ssh_command"] += 2 if o.status == Status.CHANGED else 1  # status (+ start)
                n["http_get"] += 1
                hosts.add(o.target.split("@", 1)[1])
            elif step.name == "fix":
                n["fix_probe"] += 1
            elif step.name == "feeds":
                n["http_get"] += 1
            elif step.name in ("refdata", "positions", "limits", "controls", "batch"):
                n["sql_check"] += 1
    n["ssh_connect"] = len(hosts)  # one pooled connection per host and run
    return n


class Runner:
    """Runs the real and the naive flow and meters them."""

    def __init__(self, meter: CpuMeter, flow_log: Path) -> None:
        self.meter = meter
        self.flow_log = flow_log.open("a")
        self._loop: asyncio.Runner | None = None

    def real(self, lab: Lab, label: str) -> Run:
        from openbell.deployments.runner import run_runbook

        day = lab.trade_date()
        return self._metered(label, lambda: run_runbook("sod", REGION, day, estate=lab.path))

    def naive(self, lab: Lab, label: str, threads: int) -> Run:
        from prefect.task_runners import ThreadPoolTaskRunner

        from benchmarks.naive_sod import naive_start_of_day
        from openbell.flows.runbook import RunParams

        runner: Any = ThreadPoolTaskRunner(threads)  # Prefect's TaskRunner generic is invariant
        flow = naive_start_of_day.with_options(task_runner=runner)
        params = RunParams(region=REGION, trade_date=lab.trade_date(), estate=str(lab.path))

        def go() -> Any:
            if self._loop is None:  # one loop for every naive run, as run_runbook keeps one
                self._loop = asyncio.Runner()
            coro: Any = flow(params, return_state=True)
            state = self._loop.run(coro)
            return state.result(raise_on_failure=True)

        return self._metered(label, go)

    def _metered(self, label: str, call: Callable[[], Any]) -> Run:
        from openbell.outcome import utcnow

        before = self.meter.sample()
        started, t0 = time.perf_counter(), utcnow()
        with contextlib.redirect_stderr(self.flow_log):  # the console notifier's panels
            record = call()
        wall = time.perf_counter() - started
        cpu = CpuMeter.delta(before, self.meter.sample())
        run = Run(label, wall, cpu, record.status.value, record.counts(), probe_counts(record))
        run.timeline = timeline(record, t0, wall)
        run.problems = problems(record)
        return run

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
        self.flow_log.close()


def problems(record: Any, width: int = 110) -> list[tuple[int, str]]:
    """(count, "step: status: detail") of the outcomes that did not pass, most frequent first.

    Digits and host names are masked so that the same failure on many hosts is one line.
    """
    seen: dict[str, int] = {}
    for step in record.steps:
        for o in step.outcomes:
            if not o.passed:
                detail = _HOSTNAME.sub("<host>", _NUMBER.sub("N", o.detail))
                key = f"{step.name}: {o.status.value}: {detail}"[:width]
                seen[key] = seen.get(key, 0) + 1
    return sorted(((n, k) for k, n in seen.items()), reverse=True)


def timeline(record: Any, called: Any, wall: float) -> list[tuple[str, float, float]]:
    """(phase, start, duration) in seconds from the call: setup, each step, sign-off."""

    def at(moment: Any) -> float:
        return (moment - called).total_seconds()

    out = [("setup (estate, flow start, calendar gate)", 0.0, at(record.started_at))]
    for s in record.steps:
        out.append((s.name, at(s.started_at), (s.finished_at - s.started_at).total_seconds()))
    end = at(record.finished_at) if record.finished_at else wall
    out.append(("sign-off (report, Slack summary, flow end)", end, wall - end))
    return out


# ---- the floor ----------------------------------------------------------------------------------
def action_rounds(step: str, action: str) -> int:
    """Latency rounds one planned action waits for, in steady state (apps already up)."""
    if action.startswith("if down:"):
        return 0  # steady state: nothing is down, nothing is started
    if action.startswith(("ssh ", "GET ")):
        return 1  # one answer: the command's exit status, or the HTTP response
    if step == "fix":
        return 3  # Logon, TestRequest, Logout: each waits for the venue's answer
    return 0  # SQL on the region's own database, a notification: no lab latency


def critical_path(lab: Lab) -> tuple[int, list[tuple[str, int]]]:
    """(rounds, chain) of the longest chain of sequential latency rounds in the plan.

    Within a step, a target's actions run one after another and targets run in
    parallel, so a step costs the most rounds any one target needs (the apps step goes
    tier after tier: the sum over its tiers); a step starts when the steps it comes
    ``after`` are done.
    """
    from openbell import catalog
    from openbell.flows.plan import build_plan

    plan = build_plan(catalog.get("sod"), lab.estate, REGION, lab.trade_date())
    tier_of = {a: i for i, t in enumerate(lab.estate.app_tiers(REGION)) for a in t}
    cost: dict[str, int] = {}
    for step in plan.steps:
        per_target: dict[tuple[int, str], int] = {}
        for a in step.actions:
            tier = tier_of.get(a.target.split("@", 1)[0], 0) if step.name == "apps" else 0
            key = (tier, a.target)
            per_target[key] = per_target.get(key, 0) + action_rounds(step.name, a.action)
        by_tier: dict[int, int] = {}
        for (tier, _), rounds in per_target.items():
            by_tier[tier] = max(by_tier.get(tier, 0), rounds)
        cost[step.name] = sum(by_tier.values())
    best: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    for step in plan.steps:  # the plan lists every step after the steps it depends on
        prev = max((best[a] for a in step.after), key=lambda b: b[0], default=(0, []))
        best[step.name] = (prev[0] + cost[step.name], [*prev[1], (step.name, cost[step.name])])
    rounds, chain = max(best.values(), key=lambda b: b[0])
    return rounds, [(name, r) for name, r in chain if r]


@dataclass
class Calibration:
    """Client CPU seconds per operation, measured outside Prefect against the lab.

    ``known_hosts_s`` is what parsing the estate's whole known_hosts costs (``SshPool``
    parses it once and again only when the file changes); it is kept out of
    ``ssh_connect`` and out of the floor, because nothing physical requires it.
    """

    per_op: dict[str, float]
    samples: dict[str, int]
    known_hosts_s: float = 0.0


def calibrate(lab: Lab, n_hosts: int) -> Calibration:
    """Measure the client CPU of each kind of probe with the real connectors, no Prefect.

    SSH: fresh pools connect to ``n_hosts`` hosts with their first command (connect +
    command), then run each host's other SOD commands on the open connections (command
    only); the connect cost is the first per-host figure minus a command. HTTP: the
    health GETs of those hosts' apps and every feed, each on a new connection as in a
    run. FIX: full probes (connect, Logon, TestRequest, Logout). SQL: every check of the
    region's database. Concurrency is similar to a run (16 threads, gathered coroutines),
    and ``time.process_time`` counts every thread of this process.
    """
    from benchmarks.naive_sod import SQL_STEPS
    from openbell.runbooks.schema import SqlCheck
    from openbell.tasks.apps import health_url
    from openbell.tasks.connectors import fix, sql
    from openbell.tasks.connectors.calendar import previous_session
    from openbell.tasks.connectors.http import HttpClient
    from openbell.tasks.connectors.ssh import SshPool
    from openbell.tasks.hosts import disk_argv, fix_store_argv, logs_argv, rotation_cutoff

    estate = lab.estate
    day = lab.trade_date()
    hosts = sorted(estate.hosts_in(REGION))[:n_hosts]
    cutoff = rotation_cutoff(estate.region(REGION).timezone, day)
    later: list[tuple[str, list[str]]] = []
    for h in hosts:
        spec = estate.host(h)
        later.append((h, spec.clock_command))
        if spec.fix_store_dir:
            later.append((h, fix_store_argv(spec.fix_store_dir)))
        later.append((h, logs_argv(spec.log_dir or "var/log", cutoff)))
    apps = [(a, h) for a, app in estate.apps_in(REGION).items() for h in app.hosts if h in hosts]
    later += [(h, estate.app(a).status) for a, h in apps]

    per_op: dict[str, float] = {}
    samples: dict[str, int] = {}
    # One pool per host, each trusting a one-line known_hosts: the connect cost is then
    # the handshake and authentication alone, however SshPool handles known_hosts.
    import paramiko

    kh_dir = lab.home / "calibration-known-hosts"
    kh_dir.mkdir(exist_ok=True)
    everyone = paramiko.HostKeys(str(estate.known_hosts))
    pools: dict[str, SshPool] = {}
    for h in hosts:
        spec = estate.host(h)
        name = f"[{spec.address}]:{spec.port}" if spec.port != 22 else spec.address
        one = paramiko.HostKeys()
        for kind, key in (everyone.lookup(name) or {}).items():
            one.add(name, kind, key)
        one.save(str(kh_dir / h))
        pools[h] = SshPool(estate, known_hosts=kh_dir / h)
    with ThreadPoolExecutor(16) as threads:
        c0 = time.process_time()
        first = list(threads.map(lambda h: pools[h].run(h, disk_argv(".")), hosts))
        c1 = time.process_time()
        rest = list(threads.map(lambda hc: pools[hc[0]].run(hc[0], hc[1]), later))
        c2 = time.process_time()
    for pool in pools.values():
        pool.close()
    bad = [r for r in first + rest if not r.ok]
    if bad:
        raise RuntimeError(f"calibration: {len(bad)} SSH commands failed, e.g. {bad[0]}")
    c3 = time.process_time()
    for h in hosts:  # parsing the estate's whole known_hosts, as a connect may do
        spec = estate.host(h)
        paramiko.HostKeys(str(estate.known_hosts)).lookup(f"[{spec.address}]:{spec.port}")
    known_hosts_s = (time.process_time() - c3) / len(hosts)
    per_op["ssh_command"] = (c2 - c1) / len(later)
    per_op["ssh_connect"] = max((c1 - c0) / len(hosts) - per_op["ssh_command"], 0.0)
    samples["ssh_connect"], samples["ssh_command"] = len(hosts), len(later) + len(hosts)

    health = [health_url(estate.app(a), estate.host(h).address) for a, h in apps]
    urls = [u for u in health if u] + [f.status_url for f in estate.feeds_in(REGION).values()]

    async def gets() -> None:
        for _ in range(2):
            async with HttpClient() as http:  # a client per round, like a tier's task
                await asyncio.gather(*(http.get(u, target=u, timeout=10) for u in urls))

    c0 = time.process_time()
    asyncio.run(gets())
    per_op["http_get"] = (time.process_time() - c0) / (2 * len(urls))
    samples["http_get"] = 2 * len(urls)

    sessions = sorted(estate.fix_sessions_in(REGION).items())[:20]

    async def probes() -> None:
        await asyncio.gather(*(fix.probe_session(n, s) for n, s in sessions))

    c0 = time.process_time()
    asyncio.run(probes())
    per_op["fix_probe"] = (time.process_time() - c0) / max(len(sessions), 1)
    samples["fix_probe"] = len(sessions)

    cal = estate.region(REGION).primary_calendar
    prev = previous_session(cal, day)
    params = {"trade_date": day.isoformat(), "prev_trade_date": prev.isoformat()}
    checks: list[tuple[sql.SqlRunner, SqlCheck]] = []
    runners = []
    for name, db in estate.databases_in(REGION).items():
        runners.append(sql.SqlRunner(name, db.url or "", timeout_s=db.timeout_s))
        checks += [(runners[-1], c) for c in db.checks if c.step in SQL_STEPS]
    c0 = time.process_time()
    for runner, check in checks:
        sql.run_check(runner, check, params)
    per_op["sql_check"] = (time.process_time() - c0) / max(len(checks), 1)
    samples["sql_check"] = len(checks)
    for runner in runners:
        runner.close()
    return Calibration(per_op, samples, known_hosts_s)


# ---- the benchmark -----------------------------------------------------------------------------
def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) + f" (total {sum(cpu.values()):.1f})"


class Benchmark:
    """Sets everything up, measures, prints, and tears everything down."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.home = Path(tempfile.mkdtemp(prefix="openbell-bench-"))
        self.server = PrefectServer(self.home)
        bootstrap_env(self.home, self.server.url, cfg.prefect_log_level)
        self.lab: Lab | None = None
        self.runner: Runner | None = None
        self.warm: Run | None = None
        self.app_mb: float | None = None
        self._closed = threading.Lock()
        self._labs = threading.Lock()  # held while a lab goes up or down
        self._closing = False
        self.t0 = time.perf_counter()

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def note(self, text: str) -> None:
        """Progress, with the elapsed time, to stderr (the figures go to stdout)."""
        # sys.__stderr__: runs redirect sys.stderr to a log (the console notifier's panels).
        elapsed = time.perf_counter() - self.t0
        print(f"[{elapsed:6.1f}s] {text}", file=sys.__stderr__, flush=True)

    def close(self) -> None:
        """Stop the lab and the Prefect server; safe to call twice, from any thread."""
        if not self._closed.acquire(blocking=False):
            return
        with self._labs:  # a lab going up finishes first; after this none can start
            self._closing = True
            with contextlib.suppress(Exception):
                from openbell.lab import supervisor

                supervisor.down(self.home, timeout_s=20)
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.close()
        self.server.stop()
        if self.cfg.keep:
            print(f"sod_scale: kept {self.home}", file=sys.__stderr__)
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    @property
    def stopping(self) -> bool:
        return self._closed.locked()

    def abort(self, why: str, status: int) -> None:
        """Clean up and leave at once, whatever the main thread is doing."""
        print(f"sod_scale: {why}; stopping the lab and the Prefect server", file=sys.__stderr__)
        self.close()
        os._exit(status)

    def watchdog(self) -> threading.Timer:
        """End the run if it overstays its budget, and on Ctrl-C or SIGTERM.

        The signal handlers are ours because asyncio's (Ctrl-C cancels only the flow run
        in progress) and Prefect's would let the benchmark go on to its next run.
        """

        def on_signal(signum: int, _: Any) -> None:
            why = f"{signal.Signals(signum).name} received"
            threading.Thread(target=self.abort, args=(why, 128 + signum)).start()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        budget = self.cfg.budget_s
        timer = threading.Timer(budget, self.abort, (f"aborted after {budget:g} s budget", 3))
        timer.daemon = True
        timer.start()
        return timer

    def main(self) -> int:
        cfg = self.cfg
        self.note(f"home {self.home}; starting Prefect server on {self.server.url}")
        self.server.start()
        self.server.wait_healthy()
        self.runner = Runner(CpuMeter(self.home, self.server), self.home / "flows.stderr.log")

        self.say(
            f"sod_scale: {cfg.hosts} hosts, {cfg.hosts * APPS_PER_HOST} apps in {TIERS} tiers, "
            f"{cfg.fix_sessions} FIX sessions, {cfg.feeds} feeds, one region ({REGION}); "
            f"every lab answer delayed {cfg.latency_ms} ms; {CORES} cores; "
            f"PREFECT_LOGGING_LEVEL={cfg.prefect_log_level}"
        )
        self.say(
            "cpu s = CPU seconds used during a run by: client = this process (the flow), "
            "lab = the lab process and the commands it ran, apps = the lab's app processes, "
            "prefect = the Prefect server, other = every other process on the machine"
        )
        lab = self._lab(cfg.hosts)
        warm = self.warm = self.runner.real(lab, "warm-up")
        self._show_run(warm)
        self.app_mb = app_pss_mb(self.home)
        cal = calibrate(lab, cfg.calibration_hosts)
        self.note("calibrated client CPU per operation")
        steady = [self.runner.real(lab, f"steady {i + 1}") for i in range(cfg.steady_runs)]
        for run in steady:
            self._show_run(run)
        passing = [r for r in steady if r.status in ("ok", "changed")]
        if len(passing) < len(steady):
            self.say(f"{len(steady) - len(passing)} steady-state run(s) had failures (above)")
        pool = passing or steady
        head = sorted(pool, key=lambda r: r.wall_s)[len(pool) // 2]  # the median run
        self._show_timeline(head)
        floor_s = self._show_floor(lab, cal, head)

        naive: Run | None = None
        if cfg.naive:
            naive = self.runner.naive(lab, "naive (task per probe)", cfg.naive_threads)
            self._show_run(naive)

        self.say()
        self.say("== ratios")
        self.say(
            f"wall/floor    = {head.wall_s:.2f} / {floor_s:.2f} = "
            f"{head.wall_s / floor_s:.2f}  (target <= 1.5)"
        )
        if naive:
            self.say(
                f"naive/wall    = {naive.wall_s:.2f} / {head.wall_s:.2f} = "
                f"{naive.wall_s / head.wall_s:.2f}  (target >= 5)"
            )

        sweep = self._sweep(head)
        if sweep:
            self.say()
            self.say(
                f"== sweep: steady-state SOD wall by size (2 apps/host, {TIERS} tiers; "
                f"FIX sessions {cfg.fix_sessions} and feeds {cfg.feeds} fixed)"
            )
            for hosts, warm_up, steady_run in sweep:
                if steady_run is None or warm_up is None:
                    self.say(f"hosts={hosts:4d}  skipped (see above)")
                    continue
                self.say(
                    f"hosts={hosts:4d} apps={hosts * APPS_PER_HOST:4d}  "
                    f"wall {steady_run.wall_s:6.2f} s  (warm-up {warm_up.wall_s:6.2f} s)  "
                    f"{steady_run.status:7s} outcomes {steady_run.n_outcomes:5d}  "
                    f"cpu s: {fmt_cpu(steady_run.cpu)}"
                )

        naive_s = naive.wall_s if naive else float("nan")
        self.say()
        for shown in (head, naive):
            if shown is not None and shown.status not in ("ok", "changed"):
                self.say(
                    f"NOTE: '{shown.label}' failed {shown.counts.get('failed', 0)} checks "
                    f"({shown.counts.get('unknown', 0)} unknown, "
                    f"{shown.counts.get('skipped', 0)} "
                    "skipped): failed checks skip work, so its wall time is not comparable"
                )
        self.say(f"benchmark took {time.perf_counter() - self.t0:.0f} s")
        self.say(
            f"sod_scale: hosts={cfg.hosts} wall_s={head.wall_s:.2f} floor_s={floor_s:.2f} "
            f"naive_s={naive_s:.2f} floor_ratio={head.wall_s / floor_s:.2f} "
            f"naive_speedup={naive_s / head.wall_s:.2f}"
        )
        return 0

    def _lab(self, hosts: int) -> Lab:
        """Replace the running lab (if any) with one of ``hosts`` hosts."""
        self._drop_lab()
        cfg = self.cfg
        with self._labs:
            if self._closing:
                raise RuntimeError("the benchmark is stopping")
            self.lab = Lab(self.home, hosts, cfg.fix_sessions, cfg.feeds, cfg.latency_ms)
            took = self.lab.up()
        self.note(f"lab up: {hosts} hosts in {took:.1f} s")
        return self.lab

    def _drop_lab(self) -> None:
        with self._labs:
            if self.lab is not None:
                self.lab.down()
                self.lab = None

    def _show_run(self, run: Run) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))
        self.note(f"{run.label}: {run.wall_s:.2f} s")
        self.say(
            f"{run.label:24s} wall {run.wall_s:7.2f} s  status {run.status:7s} "
            f"outcomes {run.n_outcomes} ({counts})"
        )
        self.say(f"{'':24s} cpu s: {fmt_cpu(run.cpu)}")
        for n, text in run.problems[:5]:
            self.say(f"{'':24s} {n:4d} x {text}")

    def _show_timeline(self, run: Run) -> None:
        self.say()
        self.say(f"== where the wall time of '{run.label}' goes (s from the call)")
        for name, start, took in run.timeline:
            self.say(f"  {name:44s} at {start:6.2f}  took {took:6.2f}")

    def _show_floor(self, lab: Lab, cal: Calibration, run: Run) -> float:
        cfg = self.cfg
        rounds, chain = critical_path(lab)
        latency_s = rounds * cfg.latency_ms / 1000
        cpu_floor = sum(run.probes[k] * cal.per_op[k] for k in run.probes)
        floor_s = latency_s + cpu_floor / CORES
        ops = sum(run.probes.values())
        self.say()
        self.say("== physical floor (steady state)")
        path = " -> ".join(f"{name}({r})" for name, r in chain)
        self.say(
            f"critical path: {path} = {rounds} rounds x {cfg.latency_ms} ms = {latency_s:.2f} s"
        )
        self.say(
            "  (rounds per target, from the plan: an SSH command or an HTTP GET waits for one "
            "answer; a FIX probe for three, Logon, TestRequest and Logout; SQL and the "
            "notification none. An app tier is 'status' then 'GET /health' = 2; appctl's own "
            "health call inside 'status' overlaps the SSH answer delay. Steps run in "
            "parallel unless the plan orders them, so the longest chain counts.)"
        )
        self.say("client CPU per operation (measured outside Prefect against the lab):")
        for k, per in cal.per_op.items():
            self.say(
                f"  {k:12s} {per * 1000:7.2f} ms x {run.probes[k]:5d} = "
                f"{per * run.probes[k]:6.2f} s   (sample of {cal.samples[k]})"
            )
        self.say(f"  {'total':12s} {cpu_floor:6.2f} s CPU for {ops} operations")
        self.say(
            f"  (not in the floor: parsing the estate's known_hosts takes "
            f"{cal.known_hosts_s * 1000:.2f} ms; SshPool does it once per run, not per "
            f"connect, which would be {cal.known_hosts_s * run.probes['ssh_connect']:.2f} s)"
        )
        self.say(
            f"floor = rounds x latency + client CPU / cores = {latency_s:.2f} + "
            f"{cpu_floor:.2f} / {CORES} = {floor_s:.2f} s"
        )
        as_run = run.cpu["client"]
        self.say(
            f"as run: the flow's process used {as_run:.2f} s CPU = "
            f"{as_run / max(ops, 1) * 1000:.2f} ms per operation "
            f"({as_run / max(cpu_floor, 1e-9):.1f}x the probes' own CPU); "
            f"floor with that CPU: {latency_s + as_run / CORES:.2f} s"
        )
        others = run.cpu["lab"] + run.cpu["apps"] + run.cpu["prefect"]
        per_cmd = run.cpu["lab"] / max(run.probes["ssh_command"], 1)
        self.say(
            f"lab CPU per SSH command it served: {per_cmd * 1000:.1f} ms "
            f"(each runs /bin/sh; appctl status and a healthy chronyc answer in the shell, "
            f"other appctl calls start a Python interpreter); "
            f"lab apps: {run.cpu['apps']:.1f} s CPU for {run.probes['http_get']} health answers"
        )
        self.say(
            f"the lab, its apps and the Prefect server used {others:.2f} s CPU on the same "
            f"{CORES} cores; the floor with their CPU counted too: "
            f"{latency_s + (cpu_floor + others) / CORES:.2f} s "
            f"(unrelated processes used {run.cpu['other']:.2f} s during the run)"
        )
        return floor_s

    def _sweep(self, head: Run) -> list[tuple[int, Run | None, Run | None]]:
        """(hosts, warm-up, steady state) per size; the headline lab's size is reused."""
        out: list[tuple[int, Run | None, Run | None]] = []
        assert self.runner is not None
        app_mb = self.app_mb or 40.0
        for hosts in self.cfg.sweep:
            if hosts == self.cfg.hosts:
                out.append((hosts, self.warm, head))
                continue
            self._drop_lab()
            need_mb = int(hosts * APPS_PER_HOST * app_mb * 1.5) + 2000
            if _available_mb() < need_mb:
                self.say(
                    f"sweep: skipping {hosts} hosts: {_available_mb()} MB available, "
                    f"{hosts * APPS_PER_HOST} lab apps of ~{app_mb:.0f} MB need ~{need_mb} MB"
                )
                out.append((hosts, None, None))
                continue
            lab = self._lab(hosts)
            warm = self.runner.real(lab, f"warm-up {hosts} hosts")
            steady = self.runner.real(lab, f"steady {hosts} hosts")
            for run in (warm, steady):
                self._show_run(run)
            out.append((hosts, warm, steady))
        return out


def app_pss_mb(home: Path) -> float | None:
    """Mean proportional set size of the lab's app processes, in MB (None if none run)."""
    from openbell.lab.paths import LabPaths, read_pid

    sizes = []
    for f in LabPaths.of(home).hosts_dir.glob("*/var/run/*.pid"):
        pid = read_pid(f)
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (OSError, TypeError):
            continue
        sizes += [int(ln.split()[1]) / 1024 for ln in text.splitlines() if ln.startswith("Pss:")]
    return sum(sizes) / len(sizes) if sizes else None


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    bench = Benchmark(cfg)
    timer = bench.watchdog()
    try:
        return bench.main()
    except Exception:
        if bench.stopping:  # the lab went away under an abort; the abort says why
            return 130
        raise
    finally:
        timer.cancel()
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
