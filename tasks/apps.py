"""Applications: started in dependency order, only if down, then verified.

``ensure_apps_running`` goes tier by tier (tier 0 has no dependency in the region).
For each (app, host) it reads the state (the app's status command), starts the app
only when it is down, then verifies: running, health endpoint 200, expected version.
An app whose dependency did not come up is skipped with that reason, never started.

Starting an app is a change: ``apps_to_start`` lists the apps that are down, which is
what a second person approves where the estate asks for it; an app refused by that
approval is reported failed and not started.
"""

from __future__ import annotations

from typing import Any

from openbell.errors import HttpError
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction, StepPlan
from openbell.runbooks.schema import App
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, fan_out, in_thread


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
    expected, source = await expected_version(ctx, name, app)
    evidence: dict[str, object] = {"health_status": answer.status, "version": version}
    if expected and version != expected:
        return False, f"running version {version}, expected {expected} ({source})", evidence
    return True, f"healthy, version {version}" if version else "healthy", evidence


async def expected_version(ctx: RunContext, name: str, app: App) -> tuple[str | None, str]:
    """The version ``app`` should run here: the region's release manifest in the ledger
    (its last verified release), else the estate's ``expected_version``; and which."""
    cache = ctx.scratch.setdefault("manifest", {})
    if name not in cache:
        found = None
        if ctx.ledger is not None:
            from openbell.tasks.release.records import manifest_version

            found = await in_thread(ctx, manifest_version, ctx.ledger, ctx.region, name)
        cache[name] = found
    if cache[name]:
        return cache[name], "the release manifest"
    return app.expected_version, "the estate"


async def _ensure_one(
    ctx: RunContext, step: StepRun, http: Any, name: str, app: App, host: str
) -> Outcome:
    started = utcnow()
    target = f"{name}@{host}"
    status = await in_thread(ctx, ctx.ssh.run, host, app.status)
    changed = False
    refused = step.refusal(target)
    covered = step.approval != "approved" or target in step.approved
    if not status.ok and refused is None and not covered:
        refused = (
            "it was up when the approval was asked for, so the approval does not "
            "cover it; run again to ask for it"
        )
    if not status.ok and refused:
        return Outcome(
            step=step.name,
            target=target,
            status=Status.FAILED,
            started_at=started,
            detail=f"down; not started: {refused}",
            evidence={"status_exit": status.exit_status},
        )
    if not status.ok:
        res = await in_thread(ctx, ctx.ssh.run, host, app.start, timeout=app.start_timeout_s)
        if not res.ok:
            tail = (res.stderr.strip() or res.stdout.strip())[-300:]
            return Outcome(
                step=step.name,
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
            step=step.name,
            target=target,
            status=Status.FAILED,
            started_at=started,
            detail=prefix + detail,
            evidence=evidence,
        )
    return Outcome(
        step=step.name,
        target=target,
        started_at=started,
        evidence=evidence,
        status=Status.CHANGED if changed else Status.OK,
        detail=("started; " if changed else "already running; ") + detail,
    )


def plan_apps(p: PlanContext) -> StepPlan:
    """Per app and host, tier by tier: status, start if down, health and version."""
    actions: list[PlannedAction] = []
    tiers = p.estate.app_tiers(p.region)
    for tier in tiers:
        for name in tier:
            app = p.estate.app(name)
            for host in app.hosts:
                target = f"{name}@{host}"
                actions += [
                    PlannedAction(target=target, action=p.ssh(host, app.status)),
                    PlannedAction(target=target, action="if down: " + p.ssh(host, app.start)),
                ]
                url = health_url(app, p.estate.host(host).address)
                if url:
                    want = (
                        f", expect version {app.expected_version}" if app.expected_version else ""
                    )
                    actions.append(PlannedAction(target=target, action=f"GET {url} -> 200{want}"))
    order = "; ".join(f"tier {i}: {', '.join(t)}" for i, t in enumerate(tiers))
    return StepPlan(actions=actions, note=f"in dependency order: {order}" if tiers else "")


async def ensure_apps_running(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Make every app of the region run and verify it, tier after tier.

    An app whose dependency (an earlier tier) is not up is skipped, not started. Where
    the step needed approval, an app that is down is started only if the approval
    covered it; refused, it is reported failed with the verdict.
    """
    outcomes: list[Outcome] = []
    not_up: set[str] = set()
    async with ctx.http() as http:
        for apps in ctx.estate.app_tiers(ctx.region):
            tier = await _tier(ctx, step, http, apps, not_up)
            not_up |= {
                o.target.split("@", 1)[0]
                for o in tier
                if o.status not in (Status.OK, Status.CHANGED)
            }
            outcomes += tier
    return outcomes


async def _tier(
    ctx: RunContext, step: StepRun, http: Any, apps: list[str], failed: set[str]
) -> list[Outcome]:
    skipped: list[Outcome] = []
    targets: list[tuple[str, tuple[str, App, str]]] = []
    for name in apps:
        app = ctx.estate.app(name)
        blocked = sorted(set(app.depends_on) & failed)
        for host in app.hosts:
            if blocked:
                skipped.append(
                    Outcome(
                        step=step.name,
                        target=f"{name}@{host}",
                        status=Status.SKIPPED,
                        detail=f"not started: {_deps_not_up(blocked)}",
                    )
                )
            else:
                targets.append((f"{name}@{host}", (name, app, host)))

    async def probe(target: str, item: tuple[str, App, str]) -> Outcome:
        return await _ensure_one(ctx, step, http, *item)

    # Refusals are judged in _ensure_one (an app found running needs no approval).
    return skipped + await fan_out(step.name, targets, probe)


async def apps_to_start(ctx: RunContext, step: StepRun) -> Changes:
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
            step=step.name,
            target=target,
            status=Status.OK if res.ok else Status.CHANGED,
            detail="running" if res.ok else f"down (status exited {res.exit_status})",
        )

    found = await fan_out(step.name, targets, probe)
    down = [o.target for o in found if o.status == Status.CHANGED]
    return Changes(
        targets=down,
        lines=[f"start {t}" for t in down],
        summary=f"start {len(down)} app(s) that are down in {ctx.region.upper()}",
    )


def _deps_not_up(names: list[str]) -> str:
    if len(names) == 1:
        return f"dependency {names[0]} is not up"
    return f"dependencies {', '.join(names)} are not up"
