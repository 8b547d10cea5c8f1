"""The steps of a release, each with the plan it prints (declared in ``flows/release.py``).

In order: ``window`` (the trading calendar), ``artifact`` (checksum and signature),
``checks`` (pre-release checks of the app's kind), ``preflight`` (every host, read-only),
``stage`` (every host, before any switches), ``canary`` (after four eyes), ``soak``,
``rollout`` (the rest in batches), ``attest`` (every host of the region), ``finalize``
(the manifest, pruning, the host locks); and ``rollback``, which the engine runs when a
step after the first switch fails.

Every host step reads the host first and acts on the difference, so a re-run, or a
re-run after a kill, never switches a host twice: a host already on the new version is
only checked; one on the old is switched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any, cast

from openbell import chaos
from openbell.errors import HostUnreachableError, HttpError, OpenbellError
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction, StepPlan
from openbell.runbooks.schema import Estate, ReleasePolicy
from openbell.settings import get_settings
from openbell.tasks.apps import health_url
from openbell.tasks.connectors.artifacts import Artifact, ArtifactRefused, fetch_artifact
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, in_thread
from openbell.tasks.release import layout, records
from openbell.tasks.release.checks import checks_for
from openbell.tasks.release.target import ReleaseError, Target, now, resolve

#: the host must have this many times the artifact's size free to stage it.
DISK_FACTOR = 3
#: seconds to wait for a restarted app to answer healthy at the new version.
VERIFY_WAIT_S = 15.0


# ---- shared -------------------------------------------------------------------------------
def target_of(ctx: RunContext) -> Target:
    found = ctx.scratch.get("target")
    if found is None:
        found = resolve(ctx.estate, ctx.region, ctx.params, ctx.ledger)
        ctx.scratch["target"] = found
    return cast(Target, found)


def policy_of(estate: Estate) -> ReleasePolicy:
    policy = estate.policy("release")
    return policy if isinstance(policy, ReleasePolicy) else ReleasePolicy()


def expected_minutes(t: Target, policy: ReleasePolicy) -> float:
    return len(t.batches()) * policy.minutes_per_batch


async def artifact_of(ctx: RunContext) -> Artifact:
    found = ctx.scratch.get("artifact")
    if found is None:
        t = target_of(ctx)
        assert ctx.estate.artifacts is not None
        cache = get_settings().home / "artifacts"
        found = await in_thread(
            ctx, fetch_artifact, ctx.estate.artifacts, t.artifact, t.version, cache
        )
        ctx.scratch["artifact"] = found
    return cast(Artifact, found)


def _emergency(ctx: RunContext) -> bool:
    return bool(getattr(ctx.params, "emergency", False))


async def _ssh(ctx: RunContext, host: str, argv: list[str], timeout: float | None = None) -> Any:
    return await in_thread(ctx, ctx.ssh.run, host, argv, timeout=timeout)


async def _state(ctx: RunContext, t: Target, host: str) -> dict[str, Any]:
    res = await _ssh(ctx, host, layout.read_state(t.release.root, t.store))
    if not res.ok:
        raise OpenbellError(
            f"{host}: reading {t.release.root} exited {res.exit_status}: {res.tail(3)}"
        )
    return layout.parse_state(res.stdout)


async def _health(ctx: RunContext, http: Any, t: Target, host: str) -> tuple[bool, str | None, str]:
    """(healthy, version reported, detail) from the app's health endpoint on one host."""
    url = health_url(t.app, ctx.estate.host(host).address)
    if url is None:
        res = await _ssh(ctx, host, t.app.status)
        return res.ok, None, "running" if res.ok else f"status exited {res.exit_status}"
    try:
        answer = await http.get(url, target=t.target(host), timeout=3.0, retries=0)
    except HttpError as exc:
        return False, None, f"GET {url}: {exc.answer}"
    body = answer.json if isinstance(answer.json, dict) else {}
    version = str(body.get(t.probe_key, "")) or None
    return True, version, f"healthy, {t.probe_key} {version}"


async def _wait_healthy(
    ctx: RunContext, http: Any, t: Target, host: str, version: str, wait_s: float = VERIFY_WAIT_S
) -> tuple[bool, str]:
    deadline = time.monotonic() + wait_s
    detail = ""
    while True:
        healthy, got, detail = await _health(ctx, http, t, host)
        if healthy and got == version:
            return True, detail
        if healthy:
            detail = f"running version {got}, expected {version}"
        if time.monotonic() >= deadline:
            return False, detail
        await asyncio.sleep(0.3)


def _fail(step: str, target: str, detail: str, started: datetime, **evidence: Any) -> Outcome:
    return Outcome(
        step=step,
        target=target,
        status=Status.FAILED,
        detail=detail,
        started_at=started,
        evidence=evidence,
    )


def _plan_target(p: PlanContext) -> Target | str:
    """The release the plan is for, or why it cannot say (no --app yet)."""
    try:
        return resolve(p.estate, p.region, p.params, None)
    except ReleaseError as exc:
        if getattr(p.params, "rollback", False) and getattr(p.params, "app", None):
            return "the version before the last release (read from the ledger when it runs)"
        return str(exc)
    except OpenbellError as exc:
        return str(exc)


# ---- window -------------------------------------------------------------------------------
async def check_window(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Refuse while a venue of the region trades, inside a freeze, or when it cannot fit."""
    from openbell.tasks.release.window import release_window

    started = utcnow()
    t = target_of(ctx)
    policy = policy_of(ctx.estate)
    verdict = release_window(
        ctx.estate,
        ctx.region,
        now(ctx.estate),
        policy,
        expected_minutes=expected_minutes(t, policy),
    )
    ctx.scratch["window"] = verdict
    tz = ctx.estate.region(ctx.region).timezone
    step.note = "; ".join(verdict.lines(tz))
    evidence = {"window": verdict.facts()}
    name = f"{ctx.region} window"
    if verdict.open and verdict.fits:
        return [
            Outcome(
                step=step.name,
                target=name,
                status=Status.OK,
                detail=verdict.reason,
                started_at=started,
                evidence=evidence,
            )
        ]
    if _emergency(ctx):
        detail = (
            f"EMERGENCY release outside the window ({verdict.reason}): two approvers are "
            "required and the run is flagged for review"
        )
        return [
            Outcome(
                step=step.name,
                target=name,
                status=Status.OK,
                detail=detail,
                started_at=started,
                evidence={**evidence, "emergency": True},
            )
        ]
    why = verdict.reason if not verdict.open else f"does not fit: {verdict.reason}"
    return [_fail(step.name, name, f"refused: {why}", started, **evidence)]


def plan_window(p: PlanContext) -> StepPlan:
    from openbell.tasks.release.window import release_window

    policy = p.policy if isinstance(p.policy, ReleasePolicy) else ReleasePolicy()
    t = _plan_target(p)
    minutes = expected_minutes(t, policy) if isinstance(t, Target) else policy.minutes_per_batch
    at = p.at or now(p.estate)
    verdict = release_window(p.estate, p.region, at, policy, expected_minutes=minutes)
    tz = p.estate.region(p.region).timezone
    action = PlannedAction(target=f"{p.region} window", action="; ".join(verdict.lines(tz)))
    state = "OPEN" if verdict.open and verdict.fits else "CLOSED"
    return StepPlan(
        actions=[action], note=f"window {state} at {at:%Y-%m-%d %H:%M}Z: {verdict.reason}"
    )


# ---- artifact and checks ------------------------------------------------------------------
async def verify_artifact(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Fetch the version and check its sha256 and signature; nothing is touched before."""
    started = utcnow()
    t = target_of(ctx)
    name = t.base
    try:
        art = await artifact_of(ctx)
    except ArtifactRefused as exc:
        return [_fail(step.name, name, f"refused: {exc}", started)]
    signed = f", signature verified with key {art.signed_by}" if art.signed_by else ", unsigned"
    return [
        Outcome(
            step=step.name,
            target=name,
            status=Status.OK,
            started_at=started,
            detail=f"{art.file}: sha256 {art.sha256} as the repository says{signed}",
            evidence=art.evidence(),
        )
    ]


def plan_artifact(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    url = p.estate.artifacts.url if p.estate.artifacts else "?"
    signed = (
        "and its ed25519 signature "
        if p.estate.artifacts and p.estate.artifacts.require_signature
        else ""
    )
    return StepPlan(
        actions=[
            PlannedAction(
                target=t.base,
                action=f"GET {url}/{t.artifact}/{t.version}/index.json and the file; check its "
                f"size, sha256 {signed}before any host is touched",
            )
        ]
    )


async def run_checks(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """The pre-release checks declared for the app's kind (none: says so)."""
    started = utcnow()
    t = target_of(ctx)
    declared = checks_for(t.app.kind)
    if not declared:
        return [
            Outcome(
                step=step.name,
                target=t.base,
                status=Status.OK,
                started_at=started,
                detail=f"no pre-release checks are declared for kind {t.app.kind}",
            )
        ]
    art = await artifact_of(ctx)
    return [await check.run(ctx, t, art) for check in declared]


def plan_checks(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    declared = checks_for(t.app.kind)
    if not declared:
        return StepPlan(actions=[], note=f"no pre-release checks for kind {t.app.kind}")
    return StepPlan(actions=[PlannedAction(target=t.base, action=c.description) for c in declared])


# ---- preflight ----------------------------------------------------------------------------
async def preflight(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every host: the layout sound, the way back intact, room to stage, the app healthy
    at the version the manifest says, and no other release holding it. Read-only (the
    ledger keeps each host's way back)."""
    t = target_of(ctx)
    art = await artifact_of(ctx)
    manifest = await in_thread(ctx, records.manifest_version, ctx.ledger, ctx.region, t.artifact)
    expected = manifest or (t.app.expected_version if t.change == "binary" else None)
    owner = t.base

    async with ctx.http() as http:

        async def one(target: str, host: str) -> Outcome:
            started = utcnow()
            root = t.release.root
            st = await _state(ctx, t, host)
            if st.get("missing"):
                return _fail(step.name, target, f"{root} does not exist on {host}", started)
            if st.get("current_is_dir"):
                return _fail(
                    step.name,
                    target,
                    f"{root}/{t.link} is a directory, not a link: "
                    "fix the layout by hand first (a switch would replace it)",
                    started,
                )
            current = layout.version_of_link(str(st.get("current") or ""), t.store)
            if current is None:
                return _fail(
                    step.name,
                    target,
                    f"{root}/{t.link} links nowhere openbell knows ({st.get('current')!r})",
                    started,
                )
            if t.version in st["bad"]:
                return _fail(
                    step.name,
                    target,
                    f"{t.version} is marked {layout.BAD_MARK} on {host} "
                    "(rolled back before): release a new version",
                    started,
                )
            lock = st.get("lock")
            if lock and lock != owner:
                return _fail(step.name, target, f"another release holds {host}: {lock}", started)
            before = await in_thread(
                ctx,
                records.record_before,
                ctx.ledger,
                ctx.run_id,
                region=ctx.region,
                key=ctx.key_version,
                host=host,
                before=current,
            )
            evidence: dict[str, Any] = {"current": current, "before": before, "expected": expected}
            if before != t.version:
                res = await _ssh(
                    ctx, host, layout.verify_tree(layout.release_dir(root, before, t.store))
                )
                if not res.ok:
                    return _fail(
                        step.name,
                        target,
                        f"the way back ({before}) fails its checksums: "
                        f"{res.tail(2, 'stdout') or res.tail(2)}",
                        started,
                        **evidence,
                    )
            if t.version not in st["releases"]:
                df = await _ssh(ctx, host, layout.disk_free(root))
                free = layout.parse_df_available_kb(df.stdout) if df.ok else None
                need = DISK_FACTOR * art.size // 1024 + 1
                evidence["free_kb"] = free
                if free is None or free < need:
                    return _fail(
                        step.name,
                        target,
                        f"not enough room in {root}: {free} KiB free, "
                        f"{need} KiB needed ({DISK_FACTOR}x the artifact)",
                        started,
                        **evidence,
                    )
            want = t.version if current == t.version else expected
            healthy, got, detail = await _health(ctx, http, t, host)
            switching = st.get("switching")
            if not healthy and lock == owner and switching:
                # A run of this release stopped the app to switch it and died before
                # starting it again: the switch (canary, rollout or rollback) finishes it.
                evidence["interrupted_switch"] = switching
                return Outcome(
                    step=step.name,
                    target=target,
                    status=Status.OK,
                    started_at=started,
                    detail=(
                        f"on {current}, way back {before} intact; down ({detail}): a run of "
                        f"this release was switching it to {switching} when it stopped, "
                        "the switch starts it again"
                    ),
                    evidence=evidence,
                )
            if not healthy:
                return _fail(
                    step.name,
                    target,
                    f"not healthy before the release: {detail}",
                    started,
                    **evidence,
                )
            if want and got and got != want:
                return _fail(
                    step.name,
                    target,
                    f"runs {got}, but the manifest says {want}",
                    started,
                    **evidence,
                )
            return Outcome(
                step=step.name,
                target=target,
                status=Status.OK,
                started_at=started,
                detail=f"on {current}, way back {before} intact, {detail}",
                evidence=evidence,
            )

        return await step.fan_out(ctx, [(t.target(h), h) for h in t.hosts], one)


def plan_preflight(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    actions = []
    for h in t.hosts:
        actions += [
            PlannedAction(
                target=t.target(h), action=p.ssh(h, layout.read_state(t.release.root, t.store))
            ),
            PlannedAction(
                target=t.target(h),
                action=p.ssh(h, layout.verify_tree(f"{t.release.root}/{t.link}")),
            ),
            PlannedAction(target=t.target(h), action=p.ssh(h, layout.disk_free(t.release.root))),
        ]
    return StepPlan(actions=actions, note="read-only; the ledger keeps each host's way back")


# ---- stage --------------------------------------------------------------------------------
async def stage(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every host, before any switch: upload, verify on the host, unpack, rename into place."""
    t = target_of(ctx)
    art = await artifact_of(ctx)
    root = t.release.root
    final = layout.release_dir(root, t.version, t.store)

    async def one(target: str, host: str) -> Outcome:
        started = utcnow()
        lock = await _ssh(ctx, host, layout.take_lock(root, t.base))
        if not lock.ok:
            return _fail(step.name, target, f"could not take {host}: {lock.tail(2)}", started)
        st = await _state(ctx, t, host)
        if t.version in st["releases"]:
            res = await _ssh(ctx, host, layout.verify_tree(final))
            if res.ok:
                return Outcome(
                    step=step.name,
                    target=target,
                    status=Status.OK,
                    started_at=started,
                    detail=f"{t.version} already staged and intact",
                )
            await _ssh(ctx, host, layout.remove(final))
        await _ssh(ctx, host, layout.remove_stale_staging(root, t.store))
        upload = f"{root}/{t.store}/.staging-{t.version}-{ctx.run_id[:8]}.tar.gz"
        measured = await in_thread(ctx, ctx.ssh.put, host, art.path, upload)
        if measured != art.sha256:
            await _ssh(ctx, host, layout.remove(upload))
            return _fail(
                step.name, target, f"sha256 on {host} is {measured}, expected {art.sha256}", started
            )
        staging = layout.staging_dir(root, t.version, ctx.run_id, t.store)
        for argv in (layout.unpack(upload, staging), layout.verify_tree(staging)):
            res = await _ssh(ctx, host, argv)
            if not res.ok:
                await _ssh(ctx, host, layout.remove(staging))
                return _fail(
                    step.name,
                    target,
                    f"{argv[0]} {' '.join(argv[1:2])} exited "
                    f"{res.exit_status}: {res.tail(2, 'stdout') or res.tail(2)}",
                    started,
                )
        res = await _ssh(ctx, host, layout.rename_into_place(staging, final))
        await _ssh(ctx, host, layout.remove(upload))
        if not res.ok:
            return _fail(
                step.name,
                target,
                f"rename into place exited {res.exit_status}: {res.tail(2)}",
                started,
            )
        return Outcome(
            step=step.name,
            target=target,
            status=Status.CHANGED,
            started_at=started,
            detail=f"staged {t.version}: sha256 {art.sha256} verified on the host",
            evidence={"sha256_on_host": measured},
        )

    return await step.fan_out(ctx, [(t.target(h), h) for h in t.hosts], one)


def plan_stage(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    root = t.release.root
    staging = f"{root}/{t.store}/.staging-{t.version}-RUN"
    actions = []
    for h in t.hosts:
        actions += [
            PlannedAction(target=t.target(h), action=p.ssh(h, layout.take_lock(root, t.base))),
            PlannedAction(
                target=t.target(h),
                action=f"sftp put the artifact to {staging}.tar.gz; sha256sum on the host",
            ),
            PlannedAction(
                target=t.target(h), action=p.ssh(h, layout.unpack(f"{staging}.tar.gz", staging))
            ),
            PlannedAction(target=t.target(h), action=p.ssh(h, layout.verify_tree(staging))),
            PlannedAction(
                target=t.target(h),
                action=p.ssh(
                    h,
                    layout.rename_into_place(staging, layout.release_dir(root, t.version, t.store)),
                ),
            ),
        ]
    return StepPlan(actions=actions, note="every host staged and verified before any host switches")


# ---- switching ----------------------------------------------------------------------------
async def switch_host(
    ctx: RunContext, http: Any, t: Target, step: str, target: str, host: str, version: str
) -> Outcome:
    """Put ``host`` on ``version``: stop, repoint ``current`` atomically, start, verify.

    Reads first: a host already on ``version`` is only (re)started if down and checked,
    so a re-run after a kill never switches it twice.
    """
    started = utcnow()
    root = t.release.root
    st = await _state(ctx, t, host)
    current = layout.version_of_link(str(st.get("current") or ""), t.store)
    evidence: dict[str, Any] = {"from": current, "to": version}
    switched = False
    if current != version:
        mark = await _ssh(ctx, host, layout.mark_switching(root, t.base, version))
        if not mark.ok:
            return _fail(step, target, f"not switched: {mark.tail(2)}", started, **evidence)
        stop = await _ssh(ctx, host, t.app.stop)
        if not stop.ok:
            return _fail(
                step, target, f"stop exited {stop.exit_status}: {stop.tail(2)}", started, **evidence
            )
        chaos.point(f"{step}:{host}:stopped")
        for argv in (layout.make_link(root, version, t.store), layout.swap_link(root, t.store)):
            res = await _ssh(ctx, host, argv)
            if not res.ok:
                return _fail(
                    step,
                    target,
                    f"{argv[0]} exited {res.exit_status}: {res.tail(2)}",
                    started,
                    **evidence,
                )
        chaos.point(f"{step}:{host}:linked")
        switched = True
        evidence["switched_at"] = utcnow().isoformat()
    link = await _ssh(ctx, host, layout.read_link(root, t.store))
    if link.stdout.strip() != layout.link_target(version, t.store):
        return _fail(
            step,
            target,
            f"{t.link} links {link.stdout.strip()!r}, not {layout.link_target(version, t.store)!r}",
            started,
            **evidence,
        )
    status = await _ssh(ctx, host, t.app.status)
    if not status.ok:
        res = await _ssh(ctx, host, t.app.start, timeout=t.app.start_timeout_s)
        if not res.ok:
            return _fail(
                step,
                target,
                f"on {version}, start exited {res.exit_status}: {res.tail(2)}",
                started,
                **evidence,
            )
    ok, detail = await _wait_healthy(ctx, http, t, host, version)
    if not ok:
        return _fail(step, target, f"on {version} but {detail}", started, **evidence)
    what = f"switched {current} -> {version}" if switched else f"already on {version}"
    return Outcome(
        step=step,
        target=target,
        status=Status.CHANGED if switched else Status.OK,
        started_at=started,
        detail=f"{what}; {detail}",
        evidence=evidence,
    )


async def hosts_to_switch(ctx: RunContext, step: StepRun) -> Changes | None:
    """The hosts not yet on the version: what the release's approval is for."""
    t = target_of(ctx)
    art = await artifact_of(ctx)
    todo, lines = [], []
    for h in t.hosts:
        st = await _state(ctx, t, h)
        current = layout.version_of_link(str(st.get("current") or ""), t.store)
        if current != t.version:
            todo.append(t.target(h))
            lines.append(f"{t.target(h)}: {current} -> {t.version}")
    if not todo:
        return None
    emergency = _emergency(ctx)
    policy = policy_of(ctx.estate)
    ttl = policy.ttl_minutes
    left = _minutes_to_ponr(ctx)
    if left is not None:
        # An approval that came after the point of no return would switch a host with no
        # time left to come back: the request expires there (the canary refuses after it).
        ttl = max(min(ttl, left), 0.1)
    batches = " then ".join(str(len(b)) for b in t.batches())
    kind = "ROLLBACK to" if t.rollback else "release"
    if t.change == "config":
        kind = "CONFIGURATION-ONLY change (the binary stays):"
    summary = (
        f"{kind} {t.name} {t.version} (sha256 {art.sha256[:12]}) on {len(todo)} host(s) of "
        f"{ctx.region}, batches {batches}; change {getattr(ctx.params, 'change', None) or '-'}: "
        f"{getattr(ctx.params, 'reason', None) or '-'}"
        + ("; EMERGENCY: outside the window" if emergency else "")
    )
    return Changes(
        targets=todo,
        lines=lines,
        summary=summary,
        approver_group=t.release.approver_group,
        required_approvers=policy.emergency_approvers if emergency else 1,
        ttl_minutes=ttl,
        emergency=emergency,
        artifact_sha256=art.sha256,
        bound={
            "app": t.name,
            "version": t.version,
            "change": t.change,
            "hosts": list(t.hosts),
            "batches": [list(b) for b in t.batches()],
            "key": ctx.key_version,
        },
    )


async def rest_to_switch(ctx: RunContext, step: StepRun) -> Changes | None:
    """The second decision after the canary, where the app's ``continue_after_canary``
    asks for one: the hosts of the other batches not yet on the version, shown with the
    canary's soak; bound like the first decision (artifact, version, hosts, batches)."""
    t = target_of(ctx)
    if not t.release.continue_after_canary:
        return None
    first = await hosts_to_switch(ctx, step)
    if first is None:
        return None
    canary = {t.target(h) for h in t.batches()[0]}
    pairs = zip(first.targets, first.lines, strict=True)
    rest = [(x, line) for x, line in pairs if x not in canary]
    if not rest:
        return None
    evidence = "; ".join(ctx.scratch.get("canary_evidence", [])) or "no soak evidence"
    return dataclasses.replace(
        first,
        targets=[x for x, _ in rest],
        lines=[line for _, line in rest],
        summary=f"go on after the canary ({evidence}) with {first.summary}",
    )


def _approved(step: StepRun, ctx: RunContext) -> frozenset[str]:
    if step.approved:
        ctx.scratch["approved"] = step.approved
    return frozenset(ctx.scratch.get("approved", frozenset()))


async def _switch_batch(
    ctx: RunContext, step: StepRun, t: Target, batch: list[str], approved: frozenset[str]
) -> list[Outcome]:
    async with ctx.http() as http:

        async def one(target: str, host: str) -> Outcome:
            st = await _state(ctx, t, host)
            on = layout.version_of_link(str(st.get("current") or ""), t.store) == t.version
            if not on and target not in approved:
                return _fail(
                    step.name, target, "not switched: no approval in this run covers it", utcnow()
                )
            return await switch_host(ctx, http, t, step.name, target, host, t.version)

        return await step.fan_out(ctx, [(t.target(h), h) for h in batch], one)


def _minutes_to_ponr(ctx: RunContext) -> float | None:
    """Minutes left before the window's point of no return (None: no window, or an
    emergency release, which has none)."""
    window = ctx.scratch.get("window")
    if window is None or not window.ponr or _emergency(ctx):
        return None
    return float((window.ponr - now(ctx.estate)).total_seconds() / 60)


async def canary(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """The first batch, once the release is approved; never past the point of no return
    (an approval that came late switches nothing)."""
    t = target_of(ctx)
    left = _minutes_to_ponr(ctx)
    if left is not None and left <= 0:
        window = ctx.scratch["window"]
        return [
            _fail(
                step.name,
                t.target(h),
                f"not switched: past the point of no return ({window.ponr:%H:%M}Z), nothing "
                "changed; release in the next window",
                utcnow(),
            )
            for h in t.batches()[0]
        ]
    return await _switch_batch(ctx, step, t, t.batches()[0], _approved(step, ctx))


def plan_canary(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    return StepPlan(
        actions=_plan_switch(p, t, t.batches()[0]),
        note=f"waits for approval from {t.release.approver_group} (not the requester), bound to "
        "the artifact's sha256, the version, the hosts and the batches",
    )


def _plan_switch(p: PlanContext, t: Target, hosts: list[str]) -> list[PlannedAction]:
    root = t.release.root
    actions = []
    for h in hosts:
        for argv in (
            layout.mark_switching(root, t.base, t.version),
            t.app.stop,
            layout.make_link(root, t.version, t.store),
            layout.swap_link(root, t.store),
            layout.read_link(root, t.store),
            t.app.start,
        ):
            actions.append(PlannedAction(target=t.target(h), action=p.ssh(h, argv)))
        url = health_url(t.app, p.estate.host(h).address)
        if url:
            actions.append(
                PlannedAction(
                    target=t.target(h), action=f"GET {url}: 200, {t.probe_key} {t.version}"
                )
            )
    return actions


async def soak(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Watch the canary: health, version, the process staying up, no error lines in its log."""
    t = target_of(ctx)
    hosts = t.batches()[0]
    rel = t.release
    async with ctx.http() as http:

        async def one(target: str, host: str) -> Outcome:
            started = utcnow()
            base = 0
            if rel.log_file:
                res = await _ssh(ctx, host, layout.count_lines(rel.log_file))
                base = (
                    int(res.stdout.strip() or 0) if res.ok and res.stdout.strip().isdigit() else 0
                )
            samples = 0
            deadline = time.monotonic() + rel.soak_s
            while True:
                samples += 1
                healthy, got, detail = await _health(ctx, http, t, host)
                if not healthy or got != t.version:
                    why = detail if not healthy else f"reports version {got}, expected {t.version}"
                    return _fail(step.name, target, f"soak sample {samples}: {why}", started)
                status = await _ssh(ctx, host, t.app.status)
                if not status.ok:
                    return _fail(
                        step.name,
                        target,
                        f"soak sample {samples}: the app is not running "
                        f"(status exited {status.exit_status})",
                        started,
                    )
                if rel.log_file:
                    res = await _ssh(
                        ctx, host, layout.count_errors(rel.log_file, rel.error_pattern, base)
                    )
                    errors = int(res.stdout.strip() or 0) if res.stdout.strip().isdigit() else 0
                    if errors:
                        return _fail(
                            step.name,
                            target,
                            f"soak sample {samples}: {errors} "
                            f"{rel.error_pattern!r} line(s) in {rel.log_file}",
                            started,
                        )
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(rel.soak_interval_s)
            return Outcome(
                step=step.name,
                target=target,
                status=Status.OK,
                started_at=started,
                detail=f"soaked {rel.soak_s:g} s: {samples} samples healthy at {t.version}"
                + (", no error lines" if rel.log_file else ""),
                evidence={"samples": samples},
            )

        results = await step.fan_out(ctx, [(t.target(h), h) for h in hosts], one)
    # what the second decision after the canary is shown (``continue_after_canary``)
    ctx.scratch["canary_evidence"] = [f"{o.target}: {o.detail}" for o in results]
    return results


def plan_soak(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    rel = t.release
    checks = f"health, {t.probe_key}, the process" + (
        f", {rel.error_pattern!r} lines in {rel.log_file}" if rel.log_file else ""
    )
    return StepPlan(
        actions=[
            PlannedAction(
                target=t.target(h),
                action=f"every {rel.soak_interval_s:g} s for {rel.soak_s:g} s: {checks}",
            )
            for h in t.batches()[0]
        ]
    )


async def rollout(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """The other batches in turn; none starts past the point of no return, nor after more
    failed hosts than the estate allows."""
    t = target_of(ctx)
    approved = _approved(step, ctx)
    out: list[Outcome] = []
    failed = 0
    window = ctx.scratch.get("window")
    for n, batch in enumerate(t.batches()[1:], start=2):
        stop_why = None
        if failed > t.release.max_failed_hosts:
            stop_why = f"{failed} host(s) failed (at most {t.release.max_failed_hosts} allowed)"
        elif (
            window is not None
            and window.ponr
            and not _emergency(ctx)
            and now(ctx.estate) > window.ponr
        ):
            stop_why = f"past the point of no return ({window.ponr:%H:%M}Z)"
        if stop_why:
            out += [
                _fail(step.name, t.target(h), f"batch {n} not started: {stop_why}", utcnow())
                for h in batch
            ]
            continue
        results = await _switch_batch(ctx, step, t, batch, approved)
        for o in results:
            o.evidence["batch"] = n
        failed += sum(1 for o in results if not o.passed)
        out += results
    if not out:
        step.note = "the canary was every host"
    return out


def plan_rollout(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    actions = []
    for n, batch in enumerate(t.batches()[1:], start=2):
        actions.append(PlannedAction(target=f"batch {n}", action=", ".join(batch)))
        actions += _plan_switch(p, t, batch)
    decision = (
        "; after the soak, a second decision of "
        f"{t.release.approver_group}, shown the canary's evidence"
        if t.release.continue_after_canary
        else ""
    )
    return StepPlan(
        actions=actions,
        note=f"at most {t.release.max_failed_hosts} failed host(s); no batch starts past "
        f"the point of no return{decision}",
    )


# ---- attest and finalize ------------------------------------------------------------------
async def attest(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every host of the region, not only those switched: the link, the files against their
    checksums, the version actually running."""
    t = target_of(ctx)
    root = t.release.root
    async with ctx.http() as http:

        async def one(target: str, host: str) -> Outcome:
            started = utcnow()
            link = await _ssh(ctx, host, layout.read_link(root, t.store))
            if link.stdout.strip() != layout.link_target(t.version, t.store):
                return _fail(
                    step.name,
                    target,
                    f"current links {link.stdout.strip()!r}, not the release",
                    started,
                )
            tree = await _ssh(ctx, host, layout.verify_tree(f"{root}/{t.link}"))
            if not tree.ok:
                return _fail(
                    step.name,
                    target,
                    f"files do not match SHA256SUMS: {tree.tail(2, 'stdout') or tree.tail(2)}",
                    started,
                )
            healthy, got, detail = await _health(ctx, http, t, host)
            if not healthy or got != t.version:
                return _fail(step.name, target, f"link and files right, but {detail}", started)
            before = await in_thread(
                ctx, records.recorded_before, ctx.ledger, ctx.region, ctx.key_version, host
            )
            return Outcome(
                step=step.name,
                target=target,
                status=Status.OK,
                started_at=started,
                detail=f"{before} -> {t.version}: link, files and running version attested",
                evidence={"before": before, "after": t.version},
            )

        return await fan_out_all(ctx, step, t, one)


async def fan_out_all(ctx: RunContext, step: StepRun, t: Target, one: Any) -> list[Outcome]:
    return await step.fan_out(ctx, [(t.target(h), h) for h in t.hosts], one)


def plan_attest(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    root = t.release.root
    actions = []
    for h in t.hosts:
        actions += [
            PlannedAction(target=t.target(h), action=p.ssh(h, layout.read_link(root, t.store))),
            PlannedAction(
                target=t.target(h), action=p.ssh(h, layout.verify_tree(f"{root}/{t.link}"))
            ),
        ]
    return StepPlan(
        actions=actions, note="every host of the region; one that does not attest fails the release"
    )


async def finalize(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Record the manifest, prune old releases (never current, never the way back), give
    the hosts back."""
    t = target_of(ctx)
    art = await artifact_of(ctx)
    started = utcnow()
    current = await in_thread(ctx, records.manifest_version, ctx.ledger, ctx.region, t.artifact)
    out: list[Outcome] = []
    if current != t.version:
        if current or t.change == "binary":
            previous = current or t.app.expected_version
        else:  # a configuration's first release: the one the hosts had before
            previous = await in_thread(
                ctx, records.recorded_before, ctx.ledger, ctx.region, ctx.key_version, t.hosts[0]
            )
        await in_thread(
            ctx,
            records.record_manifest,
            ctx.ledger,
            ctx.run_id,
            region=ctx.region,
            app=t.artifact,
            version=t.version,
            previous=previous,
            sha256=art.sha256,
            rollback=t.rollback,
        )
        out.append(
            Outcome(
                step=step.name,
                target=f"{ctx.region} manifest",
                status=Status.CHANGED,
                started_at=started,
                detail=f"{t.artifact}: {previous} -> {t.version}",
            )
        )
    order = await in_thread(ctx, records.history, ctx.ledger, ctx.region, t.artifact)
    root = t.release.root

    async def one(target: str, host: str) -> Outcome:
        begun = utcnow()
        st = await _state(ctx, t, host)
        before = await in_thread(
            ctx, records.recorded_before, ctx.ledger, ctx.region, ctx.key_version, host
        )
        gone = layout.to_prune(
            st["releases"],
            keep=t.release.keep,
            current=t.version,
            protect=[before] if before else [],
            order=order,
        )
        for v in gone:
            await _ssh(ctx, host, layout.remove(layout.release_dir(root, v, t.store)))
        await _ssh(ctx, host, layout.release_lock(root, t.base))
        detail = (
            f"pruned {', '.join(gone)}" if gone else f"nothing to prune (keep {t.release.keep})"
        )
        return Outcome(
            step=step.name,
            target=target,
            status=Status.CHANGED if gone else Status.OK,
            started_at=begun,
            detail=detail + "; host given back",
        )

    return out + await fan_out_all(ctx, step, t, one)


def plan_finalize(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    return StepPlan(
        actions=[
            PlannedAction(
                target=f"{p.region} manifest",
                action=f"record {t.artifact} {t.version} as the region's {t.probe_key}",
            )
        ]
        + [
            PlannedAction(
                target=t.target(h), action=p.ssh(h, layout.release_lock(t.release.root, t.base))
            )
            for h in t.hosts
        ],
        note=f"keep {t.release.keep} releases per host, never current nor the way back",
    )


# ---- rollback -----------------------------------------------------------------------------
async def hosts_to_roll_back(ctx: RunContext, step: StepRun) -> Changes | None:
    """Where the estate says ``rollback: decision``: the hosts this release switched, and
    what failed, for the approver group to choose between rolling back (approve) and
    holding (reject). None under ``rollback: automatic``, or when no host was switched."""
    policy = policy_of(ctx.estate)
    if policy.rollback != "decision":
        return None
    t = target_of(ctx)
    cause = str(ctx.scratch.get("recovery_cause", ""))
    todo, lines = [], []
    for h in t.hosts:
        before = await in_thread(
            ctx, records.recorded_before, ctx.ledger, ctx.region, ctx.key_version, h
        )
        if before is None or before == t.version:
            continue
        try:
            st = await _state(ctx, t, h)
            current = layout.version_of_link(str(st.get("current") or ""), t.store)
        except (HostUnreachableError, OpenbellError) as exc:
            current = f"unknown ({exc})"
        if current == before:
            continue
        todo.append(t.target(h))
        lines.append(f"{t.target(h)}: {current} -> {before}")
    if not todo:
        return None
    art = await artifact_of(ctx)
    minutes = policy.rollback_decision_minutes
    summary = (
        f"ROLL BACK {t.name} {t.version} on {len(todo)} host(s) of {ctx.region}? after: "
        f"{cause[:400] or 'a failed verification'}. Approve to roll back; reject to hold "
        f"them on {t.version}; no answer within {minutes:g} min rolls back"
    )
    return Changes(
        targets=todo,
        lines=lines,
        summary=summary,
        approver_group=t.release.approver_group,
        required_approvers=1,
        ttl_minutes=minutes,
        artifact_sha256=art.sha256,
        bound={
            "app": t.name,
            "version": t.version,
            "rollback_of": ctx.key_version,
            "hosts": todo,
            "cause": cause[:400],
        },
    )


def _held(ctx: RunContext, step: StepRun, t: Target) -> list[Outcome] | None:
    """The approver group chose to hold: every host it covered stays where it is (failed,
    so the run does not pass and a re-run asks again); None when it did not. Only a
    proven person's rejection holds: an expired request, or a resume through Prefect that
    carried no decision, rolls back."""
    if step.approval != "rejected" or not step.rejected_by:
        return None
    why = next(iter(step.refused.values()), "approval rejected")
    step.note = f"held by decision of {', '.join(step.rejected_by)}, not rolled back: {why}"
    return [
        _fail(
            step.name,
            target,
            f"HELD on {t.version}, not rolled back ({why}); the region is not on one version "
            "until a re-run of this release rolls back or a new release goes in",
            utcnow(),
        )
        for target in sorted(step.refused)
    ]


async def rollback(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Put back every host this release switched, and only those, to the release recorded
    for it before (reverse order), then mark the release bad on every host.

    Under ``rollback: decision`` the engine first asks the approver group: approved, or
    unanswered in time, it rolls back; rejected, the hosts are held where they are."""
    t = target_of(ctx)
    held = _held(ctx, step, t)
    if held is not None:
        return held
    root = t.release.root
    cause = str(ctx.scratch.get("recovery_cause", ""))
    out: list[Outcome] = []
    mark = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ},{ctx.run_id},{cause[:300]}"

    async def quarantine(host: str, target: str, why: str, started: datetime) -> Outcome:
        await in_thread(
            ctx,
            records.record_quarantine,
            ctx.ledger,
            ctx.run_id,
            region=ctx.region,
            app=t.name,
            host=host,
            key=ctx.key_version,
            reason=why,
        )
        return _fail(step.name, target, f"QUARANTINE: {why}", started)

    async with ctx.http() as http:
        for host in reversed(t.hosts):
            target = t.target(host)
            started = utcnow()
            try:
                before = await in_thread(
                    ctx, records.recorded_before, ctx.ledger, ctx.region, ctx.key_version, host
                )
                if before is None or before == t.version:
                    out.append(
                        Outcome(
                            step=step.name,
                            target=target,
                            status=Status.OK,
                            started_at=started,
                            detail="not touched by this release: left as it is",
                        )
                    )
                    continue
                st = await _state(ctx, t, host)
                current = layout.version_of_link(str(st.get("current") or ""), t.store)
                if current != before:
                    tree = await _ssh(
                        ctx, host, layout.verify_tree(layout.release_dir(root, before, t.store))
                    )
                    if not tree.ok:
                        why = (
                            f"the way back {before} fails its checksums; the host stays "
                            "out until fixed by hand"
                        )
                        out.append(await quarantine(host, target, why, started))
                        continue
                outcome = await switch_host(ctx, http, t, step.name, target, host, before)
                if t.version in st["releases"]:
                    await _ssh(ctx, host, layout.mark_bad(root, t.version, mark, t.store))
                await _ssh(ctx, host, layout.release_lock(root, t.base))
                if outcome.passed:
                    await in_thread(ctx, _clear_if_quarantined, ctx, t, host)
                out.append(
                    outcome.model_copy(update={"detail": f"rolled back: {outcome.detail}"})
                    if outcome.status == Status.CHANGED
                    else outcome
                )
            except HostUnreachableError as exc:
                why = (
                    f"{host} does not answer, its state is unknown ({exc}); keep it out of "
                    "service: a run of this release finishes the rollback there once it answers"
                )
                out.append(await quarantine(host, target, why, started))
            except Exception as exc:  # one host's failure must not stop the others' rollback
                out.append(
                    _fail(
                        step.name, target, f"rollback failed: {type(exc).__name__}: {exc}", started
                    )
                )
    notes = [f"why: {cause}"] if cause else []
    if step.approval is not None and step.approval != "approved":
        notes.append(
            f"the decision was {step.approval} without a proven hold: rolled back, as "
            "rollback: decision says when no one chooses to hold"
        )
    elif step.approval == "approved":
        notes.append("rolled back by decision of the approver group")
    step.note = "; ".join(notes)
    return out


def _clear_if_quarantined(ctx: RunContext, t: Target, host: str) -> None:
    """A host this release had quarantined, now rolled back: out of quarantine."""
    held = records.quarantined(ctx.ledger, ctx.region, [host]).get(host)
    if held is not None and held.payload.get("key") == ctx.key_version:
        records.record_cleared(
            ctx.ledger,
            ctx.run_id,
            region=ctx.region,
            app=t.name,
            host=host,
            how="rolled back",
            by=ctx.operator,
            reason=f"run {ctx.run_id[:8]} finished the rollback of {t.base} there",
        )


def plan_rollback(p: PlanContext) -> StepPlan:
    t = _plan_target(p)
    if not isinstance(t, Target):
        return StepPlan(actions=[], note=t)
    policy = p.policy if isinstance(p.policy, ReleasePolicy) else ReleasePolicy()
    return StepPlan(
        actions=[
            PlannedAction(
                target=t.target(h),
                action=f"if switched by this release: back to the release the ledger "
                f"recorded for {h} before, then mark {t.version} {layout.BAD_MARK}",
            )
            for h in reversed(t.hosts)
        ],
        note="the hosts this release switched, in reverse order"
        + (
            f"; first asks {t.release.approver_group} to roll back or hold (no answer in "
            f"{policy.rollback_decision_minutes:g} min rolls back)"
            if policy.rollback == "decision"
            else ""
        ),
    )
