"""Start of day built the naive way, one Prefect task per probe: the benchmark's baseline.

This is what Prefect code usually looks like before anyone measures it: every target of
every check is its own task run, submitted with ``.submit()`` to the flow's
``ThreadPoolTaskRunner`` (64 threads, as many as the real flow probes with), and every task is
self-contained: it opens its own SSH connection (a fresh ``SshPool`` used for one
host) or its own HTTP client, and closes it when it returns.

Everything else is the real flow's, so the difference in wall time is the cost of the
structure alone: the same calendar gate and sign-off tasks (the engine's ``open_run``,
``finish_run``), the same checks and judgements, app tiers one after another (a tier
is submitted, then waited for) while the host, FIX, feed, SQL and alert-path checks run
alongside. Each task gets only the slice of the estate it needs, so Prefect does not
walk the whole estate model for every task's inputs.
"""

from __future__ import annotations

from typing import Any, cast

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from openbell import catalog, secrets
from openbell.flows import engine
from openbell.flows.runbook import RunParams
from openbell.outcome import Outcome, Status, utcnow
from openbell.run import RunRecord, StepResult
from openbell.runbooks.schema import App, Database, Estate, Feed, FixSession, SqlCheck
from openbell.tasks.alerts import check_alert_path
from openbell.tasks.apps import health_url
from openbell.tasks.connectors import fix, sql
from openbell.tasks.connectors.ssh import SshPool
from openbell.tasks.context import StepRun, outcome_from_error
from openbell.tasks.database import check_database, check_params
from openbell.tasks.feeds import judge_feed
from openbell.tasks.hosts import (
    disk_argv,
    fix_store_argv,
    logs_argv,
    parse_chronyc,
    parse_df,
    rotation_cutoff,
)

SOD = catalog.get("sod")
TITLES = {s.name: s.title for s in SOD.steps}
SQL_STEPS = [s.name for s in SOD.steps if s.run is check_database]


def one_host(estate: Estate, host: str) -> Estate:
    """The estate cut down to one host: all a self-contained SSH task is given."""
    return estate.model_copy(
        update={"hosts": {host: estate.host(host)}, "apps": {}, "fix_sessions": {}, "feeds": {}}
    )


def _outcome(step: str, target: str, ok: bool, detail: str, **evidence: Any) -> Outcome:
    status = Status.OK if ok else Status.FAILED
    return Outcome(step=step, target=target, status=status, detail=detail, evidence=evidence)


@task(name="naive_check_disk", cache_policy=NO_CACHE)
def naive_check_disk(estate: Estate, host: str, path: str, limit: float) -> Outcome:
    """Disk use of one path of one host, over the task's own SSH connection."""
    with SshPool(estate) as ssh:
        res = ssh.run(host, disk_argv(path))
    if not res.ok:
        return _outcome("disk", f"{host}:{path}", False, f"df exited {res.exit_status}")
    pct = parse_df(res.stdout)
    return _outcome("disk", f"{host}:{path}", pct < limit, f"{pct}% used", used_pct=pct)


@task(name="naive_check_clock", cache_policy=NO_CACHE)
def naive_check_clock(estate: Estate, host: str, limit_us: int) -> Outcome:
    """Clock offset of one host, over the task's own SSH connection."""
    with SshPool(estate) as ssh:
        res = ssh.run(host, estate.host(host).clock_command)
    if not res.ok:
        return _outcome("clock", host, False, f"chronyc exited {res.exit_status}")
    offset_us, leap = parse_chronyc(res.stdout)
    ok = abs(offset_us) <= limit_us and leap.lower() == "normal"
    return _outcome("clock", host, ok, f"offset {offset_us:+.1f} µs, leap {leap}")


@task(name="naive_check_fix_store", cache_policy=NO_CACHE)
def naive_check_fix_store(estate: Estate, host: str, directory: str) -> Outcome:
    """The FIX store of one host is writable, over the task's own SSH connection."""
    with SshPool(estate) as ssh:
        ok = ssh.run(host, fix_store_argv(directory)).ok
    return _outcome("fix_store", host, ok, f"{directory} {'writable' if ok else 'not writable'}")


@task(name="naive_check_logs_rotated", cache_policy=NO_CACHE)
def naive_check_logs_rotated(estate: Estate, host: str, log_dir: str, cutoff: int) -> Outcome:
    """No stale live log on one host, over the task's own SSH connection."""
    with SshPool(estate) as ssh:
        res = ssh.run(host, logs_argv(log_dir, cutoff))
    stale = [ln for ln in res.stdout.splitlines() if ln.strip()]
    ok = res.ok and not stale
    return _outcome("logs", host, ok, "rotated" if ok else f"{len(stale)} log(s) not rotated")


@task(name="naive_ensure_app_running", cache_policy=NO_CACHE)
def naive_ensure_app_running(estate: Estate, name: str, app: App, host: str) -> Outcome:
    """One app on one host: status, start if down, then its health endpoint."""
    target = f"{name}@{host}"
    with SshPool(estate) as ssh:
        changed = not ssh.run(host, app.status).ok
        if changed and not ssh.run(host, app.start, timeout=app.start_timeout_s).ok:
            return _outcome("apps", target, False, "was down; start failed")
    url = health_url(app, estate.host(host).address)
    version = None
    if url:
        with httpx.Client(timeout=5.0) as http:
            answer = http.get(url)
        if answer.status_code != 200:
            return _outcome("apps", target, False, f"GET {url} answered {answer.status_code}")
        version = answer.json().get("version")
        if app.expected_version and version != app.expected_version:
            return _outcome("apps", target, False, f"version {version}")
    status = Status.CHANGED if changed else Status.OK
    detail = f"{'started' if changed else 'already running'}; version {version}"
    return Outcome(step="apps", target=target, status=status, detail=detail)


@task(name="naive_check_fix_session", cache_policy=NO_CACHE)
async def naive_check_fix_session(name: str, session: FixSession) -> Outcome:
    """Logon, TestRequest, Logout on one FIX session."""
    r = await fix.probe_session(name, session)
    return _outcome("fix", name, True, f"logon {r.logon_rtt_ms:.1f} ms")


@task(name="naive_check_feed", cache_policy=NO_CACHE)
def naive_check_feed(name: str, feed: Feed, max_age_s: float) -> Outcome:
    """One feed's status document, with the task's own HTTP client."""
    with httpx.Client(timeout=feed.timeout_s) as http:
        body = http.get(feed.status_url).json()
    status, detail = judge_feed(name, body, max_age_s, utcnow())
    return Outcome(step="feeds", target=name, status=status, detail=detail)


@task(name="naive_check_sql", cache_policy=NO_CACHE)
def naive_check_sql(db_name: str, db: Database, check: SqlCheck, params: dict[str, Any]) -> Outcome:
    """One SQL check on one database, with the task's own connection."""
    url = db.url if db.url is not None else secrets.resolve(db.url_secret or "")
    runner = sql.SqlRunner(db_name, url, timeout_s=db.timeout_s)
    try:
        result = sql.run_check(runner, check, params)
    finally:
        runner.close()
    detail = f"{result.value!r} (expected {result.expected})"
    return _outcome(check.step, f"{db_name}:{check.name}", result.passed, detail)


Submitted = list[tuple[str, PrefectFuture[Any]]]


def _collect(step: str, submitted: Submitted, started: Any, extra: list[Outcome]) -> StepResult:
    """Wait for a step's task runs; a task that raised becomes a failed Outcome."""
    outcomes = list(extra)
    for target, future in submitted:
        try:
            outcomes.append(future.result())
        except Exception as exc:
            outcomes.append(outcome_from_error(step, target, exc, started))
    return StepResult(
        name=step,
        title=TITLES.get(step, step),
        outcomes=outcomes,
        started_at=started,
        finished_at=utcnow(),
    )


def _submit_side_checks(
    estate: Estate, region: str, params: dict[str, Any], cutoff: int
) -> dict[str, Submitted]:
    """Every check that does not wait for the app tiers, one task run per target."""
    th = estate.thresholds(region)
    hosts = sorted(estate.hosts_in(region).items())
    out: dict[str, Submitted] = {
        "disk": [
            (f"{n}:{p}", naive_check_disk.submit(one_host(estate, n), n, p, th.disk_max_pct))
            for n, h in hosts
            for p in h.disk_paths
        ],
        "clock": [
            (n, naive_check_clock.submit(one_host(estate, n), n, th.clock_limit_us))
            for n, _ in hosts
        ],
        "fix_store": [
            (n, naive_check_fix_store.submit(one_host(estate, n), n, h.fix_store_dir))
            for n, h in hosts
            if h.fix_store_dir
        ],
        "logs": [
            (n, naive_check_logs_rotated.submit(one_host(estate, n), n, h.log_dir, cutoff))
            for n, h in hosts
            if h.log_dir
        ],
        "fix": [
            (n, naive_check_fix_session.submit(n, s))
            for n, s in sorted(estate.fix_sessions_in(region).items())
        ],
        "feeds": [
            (n, naive_check_feed.submit(n, f, f.max_staleness_s or th.feed_max_staleness_s))
            for n, f in sorted(estate.feeds_in(region).items())
        ],
    }
    for step in SQL_STEPS:
        out[step] = [
            (f"{n}:{c.name}", naive_check_sql.submit(n, db, c, params))
            for n, db in sorted(estate.databases_in(region).items())
            for c in db.checks
            if c.step == step
        ]
    return out


#: Threads for the task runs: the real flow's probe pool size (``RunContext.max_workers``).
#: Prefect's default is unbounded; then every task run of the checklist starts at once and,
#: measured here at 200 hosts, most SSH connects miss their 3 s deadline.
NAIVE_THREADS = 64
#: Typed loosely: Prefect's TaskRunner generic is invariant, so its own ThreadPoolTaskRunner
#: (of PrefectConcurrentFuture) does not match what the flow decorator asks for.
_RUNNER: Any = ThreadPoolTaskRunner(max_workers=NAIVE_THREADS)


@flow(
    name="start-of-day-naive",
    flow_run_name=engine.run_namer("sod-naive"),
    log_prints=False,
    task_runner=_RUNNER,
)
async def naive_start_of_day(params: RunParams) -> RunRecord:
    """The start-of-day checklist with one task run per probe (benchmark baseline)."""
    ctx, record = await engine._open_task()(SOD, params)
    if record.skipped_reason or params.dry_run:
        return cast(RunRecord, await engine._finish_task()(ctx, record, []))
    estate, region = ctx.estate, ctx.region
    started = utcnow()
    cutoff = rotation_cutoff(estate.region(region).timezone, ctx.trade_date)
    side = _submit_side_checks(estate, region, check_params(ctx), cutoff)
    alert_path = SOD.step("alert_path")
    alert_call = StepRun(name=alert_path.name, title=alert_path.title)
    alert = task(name="check_alert_path", cache_policy=NO_CACHE)(check_alert_path).submit(
        ctx, alert_call
    )

    steps: list[StepResult] = []
    tiers: list[StepResult] = []
    not_up: set[str] = set()
    for apps in estate.app_tiers(region):
        tier_started = utcnow()
        skipped: list[Outcome] = []
        submitted: Submitted = []
        for name in apps:
            app = estate.app(name)
            blocked = sorted(set(app.depends_on) & not_up)
            for host in app.hosts:
                if blocked:
                    detail = f"not started: dependency {', '.join(blocked)} is not up"
                    skipped.append(
                        Outcome(
                            step="apps",
                            target=f"{name}@{host}",
                            status=Status.SKIPPED,
                            detail=detail,
                        )
                    )
                else:
                    future = naive_ensure_app_running.submit(
                        one_host(estate, host), name, app, host
                    )
                    submitted.append((f"{name}@{host}", future))
        result = _collect("apps", submitted, tier_started, skipped)
        not_up |= {o.target.split("@")[0] for o in result.outcomes if not o.status.passed}
        not_up |= {o.target.split("@")[0] for o in result.outcomes if o.status == Status.SKIPPED}
        tiers.append(result)
    steps.append(
        StepResult(
            name="apps",
            title=TITLES["apps"],
            outcomes=[o for t in tiers for o in t.outcomes],
            started_at=started,
            finished_at=utcnow(),
        )
    )

    steps += [_collect(step, submitted, started, []) for step, submitted in side.items()]
    steps.append(
        StepResult(
            name=alert_path.name,
            title=alert_path.title,
            outcomes=alert.result(),
            started_at=started,
            finished_at=utcnow(),
        )
    )
    return cast(RunRecord, await engine._finish_task()(ctx, record, steps))
