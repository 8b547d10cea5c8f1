"""``openbell doctor``: is every region going to run on time, and did it?

Checks, each ``ok``, ``warn`` or ``fail`` with one line saying what to do:

- calendar: each region's primary calendar has sessions inside the horizon (else no run
  will be scheduled), and no change of daylight saving falls in the next 14 days (if one
  does: which runs move in UTC, and by how much; their local times stay);
- Prefect: the server answers; each region's work pool exists and a worker polls it;
  every deployment exists and matches the estate;
- horizon: the runs of the coming days exist (a gap means the keeper is not running:
  ``openbell deploy`` fills it);
- today and the last days: every due run started on time; a run that is late or was never
  created fails the doctor, with the ``openbell catchup`` command that runs it.

The doctor only reads: it changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from openbell import catalog
from openbell.deployments.catchup import DEFAULT_GRACE, run_statuses, workers_online
from openbell.deployments.deploy import (
    DEFAULT_HORIZON_DAYS,
    DeployError,
    deployment_differences,
    deployment_specs,
    prefect_client,
    read_openbell_deployments,
)
from openbell.deployments.schedules import (
    dst_changes,
    runs_between,
    scheduled_runbooks,
    sessions_between,
)
from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors.calendar import get_calendar

Level = Literal["ok", "warn", "fail"]
#: How far ahead a change of daylight saving is announced.
DST_NOTICE = timedelta(days=14)


@dataclass(frozen=True)
class Check:
    """One finding.

    Attributes:
        area: ``calendar``, ``dst``, ``prefect``, ``work pool``, ``deployment``,
            ``horizon`` or ``runs``.
        subject: what it is about (a region, a pool, a run name).
        level: ``ok``, ``warn`` or ``fail``.
        detail: what was found, and what to do.
    """

    area: str
    subject: str
    level: Level
    detail: str

    def to_json(self) -> dict[str, str]:
        return {
            "area": self.area,
            "subject": self.subject,
            "level": self.level,
            "detail": self.detail,
        }


def database_checks(estate: Estate) -> list[Check]:
    """Whether each database's checks run as a role that can only read.

    Every check runs read-only whatever the role, but a superuser or a role that may
    write is one mistake (or one lexer gap) from harm: a warning, with what it can do.
    """
    from openbell import secrets
    from openbell.tasks.connectors import sql

    out: list[Check] = []
    for name, db in estate.databases.items():
        if not db.checks and db.oms is None:
            continue
        try:
            url = db.url if db.url is not None else secrets.resolve(db.url_secret or "")
            runner = sql.SqlRunner(name, url, timeout_s=db.timeout_s)
            try:
                found = runner.privileges()
            finally:
                runner.close()
        except OpenbellError as exc:
            out.append(Check("database", name, "warn", f"could not check its role: {exc}"))
            continue
        if found:
            out.append(Check("database", name, "warn", "; ".join(found)))
        else:
            out.append(Check("database", name, "ok", "its checks' role can only read"))
    return out


def calendar_checks(
    estate: Estate, now: datetime, horizon_days: int = DEFAULT_HORIZON_DAYS
) -> list[Check]:
    """Sessions inside the horizon and daylight-saving changes ahead, per region."""
    checks: list[Check] = []
    # Every schedule of the estate, registered flow or not: the times are the estate's.
    scheduled = list(scheduled_runbooks(estate))
    for name, region in sorted(estate.regions.items()):
        code = region.primary_calendar
        tz = ZoneInfo(str(get_calendar(code, now.date()).tz))
        today = now.astimezone(tz).date()
        last = today + timedelta(days=horizon_days)
        sessions = sessions_between(code, today, last)
        if sessions:
            checks.append(
                Check(
                    "calendar",
                    name,
                    "ok",
                    f"{len(sessions)} {code} sessions from {today} to {last}, next {sessions[0]}",
                )
            )
        else:
            checks.append(
                Check(
                    "calendar",
                    name,
                    "warn",
                    f"no {code} sessions from {today} to {last}: nothing will be scheduled "
                    "(check the calendar, or that exchange_calendars is up to date)",
                )
            )
        zones = dict.fromkeys([str(tz), region.timezone])
        for zone in zones:
            for change in dst_changes(zone, now, now + DST_NOTICE):
                checks.append(_dst_check(estate, name, change, scheduled))
    return checks


async def prefect_checks(
    estate: Estate,
    api_url: str,
    now: datetime,
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    lookback_days: int = 3,
    grace: timedelta = DEFAULT_GRACE,
) -> list[Check]:
    """Work pools, workers, deployments, the horizon's runs and the runs already due."""
    checks: list[Check] = []
    try:
        async with prefect_client(api_url) as client:
            problem = await client.api_healthcheck()  # returns the error, does not raise
            if problem is not None:
                raise problem
            checks.append(Check("prefect", api_url, "ok", "the server answers"))
            checks += await _pool_checks(client, estate)
            checks += await _deployment_checks(client, estate, horizon_days)
            checks += await _horizon_checks(client, estate, now, horizon_days, grace)
            checks += await _due_checks(client, estate, now, lookback_days, grace)
    except DeployError as exc:
        checks.append(Check("prefect", api_url, "fail", str(exc)))
    except Exception as exc:  # the server is away: one line, not a traceback
        checks.append(
            Check(
                "prefect",
                api_url,
                "fail",
                f"the server does not answer ({type(exc).__name__}); start it, or set "
                "PREFECT_API_URL",
            )
        )
    return checks


async def _pool_checks(client: Any, estate: Estate) -> list[Check]:
    from prefect.exceptions import ObjectNotFound

    checks: list[Check] = []
    for name, region in sorted(estate.regions.items()):
        pool = region.work_pool
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            checks.append(Check("work pool", pool, "fail", "does not exist: run `openbell deploy`"))
            continue
        online = await workers_online(client, pool)
        if online:
            checks.append(Check("work pool", pool, "ok", f"worker online: {', '.join(online)}"))
        else:
            checks.append(
                Check(
                    "work pool",
                    pool,
                    "warn",
                    f"no worker online: runs of {name} wait until one starts "
                    f"(`openbell worker --region {name}`)",
                )
            )
    return checks


async def _deployment_checks(client: Any, estate: Estate, horizon_days: int) -> list[Check]:
    current = await read_openbell_deployments(client)
    checks: list[Check] = []
    for spec in deployment_specs(estate, horizon_days=horizon_days):
        have = current.get(spec.name)
        if have is None:
            checks.append(Check("deployment", spec.name, "fail", "missing: run `openbell deploy`"))
            continue
        diff = deployment_differences(spec, have)
        if diff:
            checks.append(
                Check(
                    "deployment",
                    spec.name,
                    "warn",
                    f"differs from the estate ({', '.join(diff)}): run `openbell deploy`",
                )
            )
    if all(c.level == "ok" for c in checks):
        checks.append(Check("deployment", "all", "ok", f"{len(current)} deployments up to date"))
    return checks


async def _horizon_checks(
    client: Any, estate: Estate, now: datetime, horizon_days: int, grace: timedelta
) -> list[Check]:
    # The keeper tops up hourly, so the horizon's last day may legitimately be short.
    end = now + timedelta(days=max(horizon_days - 1, 1))
    statuses = await run_statuses(client, estate, now, end, now=now, grace=grace)
    checks: list[Check] = []
    by_region: dict[str, list[str]] = defaultdict(list)
    soon: dict[str, list[str]] = defaultdict(list)
    for s in statuses:
        if s.verdict == "not created":
            by_region[s.planned.region].append(s.planned.name)
            if s.planned.run_utc < now + timedelta(days=1):
                soon[s.planned.region].append(s.planned.name)
    for region in sorted(estate.regions):
        missing = by_region.get(region, [])
        total = sum(1 for s in statuses if s.planned.region == region)
        if not missing:
            checks.append(
                Check("horizon", region, "ok", f"{total} runs scheduled to {end:%Y-%m-%d}")
            )
            continue
        level: Level = "fail" if soon.get(region) else "warn"
        checks.append(
            Check(
                "horizon",
                region,
                level,
                f"{len(missing)} of {total} runs to {end:%Y-%m-%d} not created (first "
                f"{missing[0]}): is keeper-{region} running? `openbell deploy` creates them now",
            )
        )
    return checks


async def _due_checks(
    client: Any, estate: Estate, now: datetime, lookback_days: int, grace: timedelta
) -> list[Check]:
    start = now - timedelta(days=lookback_days)
    statuses = await run_statuses(client, estate, start, now, now=now, grace=grace)
    deployments = await read_openbell_deployments(client)
    # A run due before its deployment existed was never openbell's to run.
    statuses = [
        s
        for s in statuses
        if (
            dep := deployments.get(catalog.get(s.planned.runbook).deployment_name(s.planned.region))
        )
        and (dep.created is None or dep.created <= s.planned.run_utc)
    ]
    checks: list[Check] = []
    fine = 0
    for s in statuses:
        p = s.planned
        if s.missed:
            checks.append(
                Check(
                    "runs",
                    p.name,
                    "fail",
                    f"{s.detail}: run it with `openbell catchup {p.runbook} --region {p.region} "
                    f"--date {p.trade_date}`",
                )
            )
        elif s.verdict in ("failed", "cancelled"):
            checks.append(Check("runs", p.name, "warn", f"ran on time but ended {s.detail}"))
        elif s.started_late_by is not None:
            checks.append(Check("runs", p.name, "warn", s.detail))
        else:
            fine += 1
    checks.append(
        Check(
            "runs",
            f"since {start:%Y-%m-%d %H:%M} UTC",
            "ok" if fine == len(statuses) else "warn",
            f"{fine} of {len(statuses)} due runs started on time",
        )
    )
    return checks


def _dst_check(estate: Estate, region: str, change: Any, runbooks: list[str]) -> Check:
    """A DST change ahead, with how the region's runs move in UTC."""
    moves: list[str] = []
    for rb in runbooks:
        before = runs_between(
            estate,
            change.at_utc - timedelta(days=7),
            change.at_utc,
            regions=[region],
            runbooks=[rb],
        )
        after = runs_between(
            estate,
            change.at_utc,
            change.at_utc + timedelta(days=7),
            regions=[region],
            runbooks=[rb],
        )
        if before and after and before[-1].run_utc.time() != after[0].run_utc.time():
            moves.append(
                f"{rb} {before[-1].run_utc:%H:%M} -> {after[0].run_utc:%H:%M} UTC "
                f"(still {after[0].run_local:%H:%M} local)"
            )
    moved = "; ".join(moves) if moves else "no scheduled run moves in UTC"
    return Check(
        "dst",
        region,
        "warn",
        f"{change.timezone} goes from {change.before} to {change.after} on "
        f"{change.local_day}: {moved}",
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
