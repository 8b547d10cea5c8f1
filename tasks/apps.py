"""Applications: started in dependency order, only if down, then verified.

``ensure_apps_running`` handles one dependency tier; the flow calls it tier by tier.
For each (app, host) it reads the state (the app's status command), starts the app
only when it is down, then verifies: running, health endpoint 200, expected version.
An app whose dependency did not come up is skipped with that reason, never started.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell.errors import HttpError
from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from openbell.runbooks.schema import App
from openbell.tasks.context import RunContext, fan_out, in_thread
from openbell.tasks.steps import timed_step


def health_url(app: App, address: str) -> str | None:
    """The app's health URL for one host (``{host}`` is the host's address)."""
    return app.health_url.replace("{host}", address) if app.health_url else None


async def _verify(
    ctx: RunContext, http: Any, name: str, app: App, host: str
) -> tuple[bool, str, dict[str, object]]:
    """(healthy, detail, evidence) from the health endpoint, or the status command."""
    url = health_url(app, ctx.estate.host(host).address)
    if url is None:
        res = await in_thread(ctx, ctx.ssh.run, host, app.status)
        return res.ok, ("running" if res.ok else f"status exited {res.exit_status}"), {}
    try:
        answer = await http.get(url, target=f"{name}@{host}", timeout=5.0, retries=2)
    except HttpError as exc:  # non-2xx, refused, timed out
        return False, f"health check failed: GET {url}: {exc.answer}", {"health_url": url}
    body = answer.json if isinstance(answer.json, dict) else {}
    version = str(body.get("version", "")) or None
    evidence: dict[str, object] = {"health_status": answer.status, "version": version}
    if app.expected_version and version != app.expected_version:
        return False, f"running version {version}, expected {app.expected_version}", evidence
    return True, f"healthy, version {version}" if version else "healthy", evidence


async def _ensure_one(
    ctx: RunContext, http: Any, name: str, app: App, host: str, refused: str | None
) -> Outcome:
    started = utcnow()
    target = f"{name}@{host}"
    status = await in_thread(ctx, ctx.ssh.run, host, app.status)
    changed = False
    if not status.ok and refused:
        return Outcome(
            step="apps",
            target=target,
            status=Status.FAILED,
            started_at=started,
            detail=f"down; {refused}",
            evidence={"status_exit": status.exit_status},
        )
    if not status.ok:
        res = await in_thread(ctx, ctx.ssh.run, host, app.start, timeout=app.start_timeout_s)
        if not res.ok:
            tail = (res.stderr.strip() or res.stdout.strip())[-300:]
            return Outcome(
                step="apps",
                target=target,
                status=Status.FAILED,
                started_at=started,
                detail=f"was down; start exited {res.exit_status}: {tail}",
                evidence={"start_exit": res.exit_status},
            )
        changed = True
    healthy, detail, evidence = await _verify(ctx, http, name, app, host)
    if not healthy:
        prefix = "started but " if changed else ""
        return Outcome(
            step="apps",
            target=target,
            status=Status.FAILED,
            started_at=started,
            detail=prefix + detail,
            evidence=evidence,
        )
    return Outcome(
        step="apps",
        target=target,
        started_at=started,
        evidence=evidence,
        status=Status.CHANGED if changed else Status.OK,
        detail=("started; " if changed else "already running; ") + detail,
    )


@task(
    name="ensure_apps_running",
    cache_policy=NO_CACHE,
    task_run_name="ensure_apps_running[tier {tier}]",
)
async def ensure_apps_running(
    ctx: RunContext,
    tier: int,
    apps: list[str],
    failed: set[str],
    refused: dict[str, str] | None = None,
) -> StepResult:
    """Make every app of one dependency tier run and verify it.

    Args:
        ctx: the run.
        tier: tier number (0 starts first), for names only.
        apps: the apps of this tier.
        failed: apps of earlier tiers that did not come up; their dependents are skipped.
        refused: ``app@host`` targets that must not be started, with the reason (their
            start was not approved); found down, they fail with it.
    """
    refused = refused or {}
    skipped: list[Outcome] = []
    targets: list[tuple[str, tuple[str, App, str]]] = []
    for name in apps:
        app = ctx.estate.app(name)
        blocked = sorted(set(app.depends_on) & failed)
        for host in app.hosts:
            if blocked:
                skipped.append(
                    Outcome(
                        step="apps",
                        target=f"{name}@{host}",
                        status=Status.SKIPPED,
                        detail=f"not started: {_deps_not_up(blocked)}",
                    )
                )
            else:
                targets.append((f"{name}@{host}", (name, app, host)))

    async def work() -> list[Outcome]:
        async with ctx.http() as http:

            async def probe(target: str, item: tuple[str, App, str]) -> Outcome:
                return await _ensure_one(ctx, http, *item, refused.get(target))

            return skipped + await fan_out("apps", targets, probe)

    return await timed_step(
        ctx, f"apps_tier{tier}", f"Apps running, tier {tier}: {', '.join(apps)}", work()
    )


@task(name="apps_down", cache_policy=NO_CACHE)
async def apps_down(ctx: RunContext) -> list[str]:
    """The ``app@host`` targets of the region whose status command says not running.

    Read before asking for approval to start them; a target whose status cannot be read
    is left to ``ensure_apps_running``, which reports why.
    """
    targets = [
        (f"{name}@{host}", (app, host))
        for name, app in sorted(ctx.estate.apps_in(ctx.region).items())
        for host in app.hosts
    ]

    async def probe(target: str, item: tuple[App, str]) -> Outcome:
        app, host = item
        res = await in_thread(ctx, ctx.ssh.run, host, app.status)
        return Outcome(
            step="apps_down",
            target=target,
            status=Status.OK if res.ok else Status.CHANGED,
            detail="running" if res.ok else f"down (status exited {res.exit_status})",
        )

    found = await fan_out("apps_down", targets, probe)
    return [o.target for o in found if o.status == Status.CHANGED]


def _deps_not_up(names: list[str]) -> str:
    if len(names) == 1:
        return f"dependency {names[0]} is not up"
    return f"dependencies {', '.join(names)} are not up"


def apps_not_up(result: StepResult) -> set[str]:
    """App names with any target not ok/changed in a tier's result."""
    return {
        o.target.split("@", 1)[0]
        for o in result.outcomes
        if o.status not in (Status.OK, Status.CHANGED)
    }
